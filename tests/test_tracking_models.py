"""The MLflow run as its users see it: the final networks as loadable (and registrable)
models, the data set as the run's input, system metrics and the run's description."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from conftest import ONE_WORKER, smoke_args
from graftune.commands import run
from graftune.commands.search_report import register_best
from graftune.config import Config, ConfigError, DataConfig, from_flat, validate, with_overrides
from graftune.data import load_dataset
from graftune.models import create_model
from graftune.tracking.checkpoint import load_checkpoint
from graftune.tracking.dataset_input import dataset_inputs, split_digest
from graftune.tracking.description import search_description
from graftune.tracking.tracker import Tracker

pytestmark = pytest.mark.usefixtures("ray_local")
REGISTERED = "tiny-graft"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_local):
    """One finished run of 2 networks with models, the best one registered (a run costs
    tens of seconds here: every test reads this one)."""
    tmp_path = tmp_path_factory.mktemp("run")
    argv = smoke_args(tmp_path, "--num-models", "2", "--log-models", "--register-model", REGISTERED)
    argv += ONE_WORKER
    assert run.main(argv) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    return tmp_path, client, client.get_run(found.info.run_id)


def reference_logits(tmp_path, mlflow_run, k: int, images: np.ndarray) -> torch.Tensor:
    """Network k as the checkpoint holds it, on images normalised by hand."""
    config = from_flat(mlflow_run.data.params)
    data = load_dataset(config.data)
    network = create_model("tiny_cnn", num_classes=data.num_classes)
    checkpoint = load_checkpoint(mlflow_run.data.tags["graftune.tracking.checkpoint"])
    network.load_state_dict(checkpoint["states"][k]["model"])
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return network.eval()((torch.from_numpy(images).float() / 255 - mean) / std)


def test_every_network_loads_back_and_predicts_like_the_checkpoint(finished):
    tmp_path, client, mlflow_run = finished
    import mlflow.pytorch

    run_id = mlflow_run.info.run_id
    images = load_dataset(from_flat(mlflow_run.data.params).data).test_images[:5]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        for k in range(2):
            model = mlflow.pytorch.load_model(f"runs:/{run_id}/net{k}")
            with torch.no_grad():
                logits = model(torch.from_numpy(images))  # uint8, as the data set holds them
            expected = reference_logits(tmp_path, mlflow_run, k, images)
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    finally:
        mlflow.set_tracking_uri(None)
    for key in ["net0/test_acc", "population/mean_test_acc"]:  # linked to models, not repeated
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2]
    models = client.search_logged_models([mlflow_run.info.experiment_id])
    assert sorted(m.name for m in models) == ["net0", "net1", "soup"]  # --soup end, the default
    (soup,) = [m for m in models if m.name == "soup"]
    soup_metrics = {m.key: m.value for m in soup.metrics}
    assert (
        soup_metrics["population/soup_test_acc"]
        == (mlflow_run.data.metrics["population/soup_test_acc"])
    )
    models = [m for m in models if m.name != "soup"]
    best = mlflow_run.data.tags["graftune.best_model"]
    accuracies = [mlflow_run.data.metrics[f"net{k}/test_acc"] for k in range(2)]
    assert best == f"net{int(np.argmax(accuracies))}"
    for model in models:
        assert model.status == LoggedModelStatus.READY
        assert model.source_run_id == run_id
        assert model.tags["graftune.best"] == str(model.name == best).lower()
        assert model.params["model/model"] == "tiny_cnn"
        metrics = {m.key: m.value for m in model.metrics}
        assert (
            metrics[f"{model.name}/test_acc"] == mlflow_run.data.metrics[f"{model.name}/test_acc"]
        )


@pytest.mark.slow  # a second Python process
def test_registered_best_network_loads_by_name_in_a_fresh_process(finished):
    tmp_path, client, mlflow_run = finished
    (version,) = client.search_model_versions(f"name = '{REGISTERED}'")
    best = mlflow_run.data.tags["graftune.best_model"]
    assert int(version.version) == 1 and version.run_id == mlflow_run.info.run_id
    assert version.tags == {
        "graftune.model_id": mlflow_run.data.tags["graftune.best_model_id"],
        "graftune.network": best,
    }
    assert mlflow_run.data.tags["graftune.registered_model"] == f"{REGISTERED}/1"
    images = load_dataset(from_flat(mlflow_run.data.params).data).test_images[:5]
    np.save(tmp_path / "images.npy", images)
    script = f"""
import sys, mlflow, numpy as np, torch
mlflow.set_tracking_uri("sqlite:///{tmp_path / "mlflow.db"}")
model = mlflow.pytorch.load_model("models:/{REGISTERED}/1")
logits = model(torch.from_numpy(np.load("{tmp_path / "images.npy"}")))
torch.save(logits.detach(), "{tmp_path / "logits.pt"}")
print("graftune imported:", "graftune" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "graftune imported: False" in done.stdout  # an exported graph: no graftune code
    expected = reference_logits(tmp_path, mlflow_run, int(best[3:]), images)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=1e-4, atol=1e-4)


def test_run_inputs_are_the_data_set_splits(finished):
    _, _, mlflow_run = finished
    data = load_dataset(from_flat(mlflow_run.data.params).data)
    inputs = {i.tags[0].value: i.dataset for i in mlflow_run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    train, test = inputs["training"], inputs["evaluation"]
    assert train.name == test.name == "synthetic"
    assert train.digest == split_digest(data.train_images, data.train_labels, data.classes)
    assert json.loads(train.profile)["images"] == 256
    assert json.loads(test.profile)["images"] == 64
    assert "graftune synthetic" in json.loads(train.source)["uri"]


def test_digest_changes_with_the_images_and_not_otherwise():
    def digests(**settings):
        cfg = DataConfig(dataset="synthetic", synthetic_size=256, **settings)
        return [i.dataset.digest for i in dataset_inputs(cfg, load_dataset(cfg))]

    train_100, test_all = digests(subset=100)
    assert digests(subset=100) == [train_100, test_all]  # the same images: the same digest
    train_120, test_again = digests(subset=120)
    assert train_120 != train_100 and test_again == test_all
    assert digests(subset=100, test_subset=32)[1] != test_all


def test_system_metrics_are_sampled_for_the_run(finished):
    _, _, mlflow_run = finished
    metrics = mlflow_run.data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_description_states_the_result_and_the_changed_settings(finished):
    _, _, mlflow_run = finished
    text = mlflow_run.data.tags["mlflow.note.content"]
    mean = mlflow_run.data.metrics["population/mean_test_acc"]
    assert f"| **mean** | **{mean:.2%}** |" in text
    assert "finished after round 2" in text and "2 x tiny_cnn" in text
    assert f"| {mlflow_run.data.tags['graftune.best_model']} (best) |" in text
    assert "--epochs 2" in text and f"registered as {REGISTERED} version 1" in text


def test_search_registers_and_describes_its_best_trial(finished):
    tmp_path, client, mlflow_run = finished
    parent = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", run_name="search")
    summary = {"trial_run_id": mlflow_run.info.run_id}
    registered = register_best(parent, summary, {"tracking/register_model": "searched"})
    parent.finish()
    assert registered == "searched version 1"
    (version,) = client.search_model_versions("name = 'searched'")
    assert version.tags["graftune.model_id"] == mlflow_run.data.tags["graftune.best_model_id"]
    state = {"name": "space", "trials": 3, "searcher": "Optuna TPE", "metric": "mean_test_acc"}
    metrics = {"round": 2, "num_rounds": 2, "mean_test_acc": 0.5, "best_test_acc": 0.6}
    summary.update(
        trial_id="abc_00001",
        config={"A": 0.25, "num_models": 3},
        registered=registered,
        metrics={**metrics, "ensemble_test_acc": 0.7},
    )
    text = search_description(state, summary)
    assert "Best trial: `abc_00001`" in text and "mean 50.00%" in text
    assert "`--A 0.25 --num-models 3`" in text and "searched version 1" in text


def test_register_model_needs_the_models():
    config = with_overrides(Config(), {"register_model": "x", "log_models": False})
    with pytest.raises(ConfigError, match="--register-model needs the MLflow models"):
        validate(config)
