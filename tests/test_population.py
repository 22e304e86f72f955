"""The population on real Ray actors: tracking, exchange, failures, NaNs and resume."""

import math

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from conftest import (
    ONE_WORKER,
    nan_weights,
    run_with_hook_after_round_1,
    smoke_args,
    smoke_config,
)
from graftune.commands import run
from graftune.config import Config, with_overrides
from graftune.core import GraftPolicy, find_graft_units, ring_graft
from graftune.data import load_dataset
from graftune.models import create_model
from graftune.population.population import Population
from graftune.tracking.experiment import run_experiment

pytestmark = pytest.mark.usefixtures("ray_local")


def client_for(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_two_round_run_is_tracked_in_mlflow(tmp_path, capsys):
    assert run.main(smoke_args(tmp_path, "--num-models", "3", "--plots", *ONE_WORKER)) == 0
    run_id = capsys.readouterr().out.split("MLflow run: ")[1].split()[0]
    client = client_for(tmp_path)
    data = client.get_run(run_id).data
    assert data.params["population/num_models"] == "3"
    assert data.params["graft/A"] == "0.4"
    for key in ["net0/test_acc", "net2/train_loss", "net1/lr", "population/ensemble_test_acc"]:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {
        "plots/accuracy.png",
        "plots/entropy_heatmap.png",
        "plots/alpha_heatmap.png",
    } <= artifacts
    csv_path = client.download_artifacts(run_id, "grafting/entropy_alpha.csv", str(tmp_path))
    rows = open(csv_path).read().splitlines()
    assert rows[0].split(",")[:4] == ["round", "network", "unit", "h_self"]
    # two rounds, one graft: none after the last interval
    assert len(rows) - 1 == 1 * 3 * len(find_graft_units(create_model("tiny_cnn")))
    assert {a.path for a in client.list_artifacts(run_id, "weights")} == {
        *(f"weights/net{k}.pt" for k in range(3)),
        "weights/soup.pt",  # --soup end, the default
    }


def test_actor_grafts_equal_the_pure_core(tmp_path):
    config = smoke_config(tmp_path, num_models=3)
    data = load_dataset(config.data)
    population = Population(config, ray.put(data), data.test_labels)
    population.start()
    try:
        ray.get([a.train_interval.remote() for a in population.actors])
        snapshots = ray.get(population.snapshot_refs())
        refs = [ray.put(s) for s in snapshots]
        ray.get([a.graft_from.remote([refs[k - 1]]) for k, a in enumerate(population.actors)])
        after = ray.get(population.snapshot_refs())
    finally:
        population.shutdown()
    units = find_graft_units(create_model("tiny_cnn"))
    expected = ring_graft(snapshots, units, GraftPolicy.from_config(config.graft))
    for k in range(3):
        for key, value in after[k].items():
            torch.testing.assert_close(torch.from_numpy(value), expected[k][0][key])


def test_killed_worker_is_replaced_and_every_round_logged_once(tmp_path):
    config = smoke_config(tmp_path, num_models=3, epochs=3)
    killed = []

    def kill_network_1(population):
        ray.kill(population.actors[1], no_restart=True)
        killed.append(1)

    result = run_with_hook_after_round_1(config, kill_network_1)
    assert killed == [1]
    assert [h["round"] for h in result.history] == [1, 2, 3]
    assert all(len(h["networks"]) == 3 for h in result.history)
    assert any("worker 1 died" in e for e in result.events)
    client = client_for(tmp_path)
    for k in range(3):
        steps = [m.step for m in client.get_metric_history(result.run_id, f"net{k}/test_acc")]
        assert steps == [1, 2, 3]


def test_nan_network_is_restored_and_never_a_graft_source(tmp_path):
    config = smoke_config(tmp_path, num_models=3, epochs=3)

    def poison_network_1(population):
        actor = population.actors[1]
        [state] = ray.get(actor.get_state.remote())
        state["model"] = nan_weights(state["model"])
        ray.get(actor.set_state.remote([state]))

    result = run_with_hook_after_round_1(config, poison_network_1)
    round2 = result.history[1]
    assert [n["restored"] for n in round2["networks"]] == [0, 1, 0]
    assert any("network 1 diverged; restored from network 0" in e for e in result.events)
    for network in round2["networks"] + result.history[2]["networks"]:
        assert math.isfinite(network["test_loss"])  # the successor (net2) stayed finite
    h_src = [r["h_src"] for r in result.records if r["round"] == 2 and r["network"] == 2]
    assert h_src and all(np.isfinite(h_src))


def test_resume_continues_the_same_run(tmp_path, capsys):
    config = smoke_config(tmp_path, num_models=2, fuse="on")  # one worker process a run
    data = load_dataset(config.data)

    def stop_after_first_round(result):
        if result.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, data, on_round=stop_after_first_round)
    client = client_for(tmp_path)
    (stopped,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    assert stopped.info.status == "KILLED"
    assert "killed after round 1" in stopped.data.tags["mlflow.note.content"]
    run_id = stopped.info.run_id
    with pytest.raises(SystemExit) as refused:  # a checkpoint of another architecture
        run.main(smoke_args(tmp_path, "--resume", run_id, "--model", "resnet20"))
    assert refused.value.code == 2
    assert "--model resnet20 does not match" in capsys.readouterr().err
    assert run.main(smoke_args(tmp_path, "--resume", run_id)) == 0
    assert f"MLflow run: {run_id}" in capsys.readouterr().out
    for key in ["net0/test_acc", "population/mean_test_acc"]:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "finished after round 2" in client.get_run(run_id).data.tags["mlflow.note.content"]
    # --no-plots (the tests' default) draws none; the table the plots come from is logged.
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert "plots" not in logged and "grafting" in logged


def test_worker_threads_are_its_share_of_the_real_cores():
    from graftune.population.resources import worker_threads

    assert worker_threads(2, cores=8, node_cpus=8) == 2  # Ray's CPUs are the cores: as asked
    assert worker_threads(2, cores=2, node_cpus=4) == 1  # 4 declared on 2 cores: half
    assert worker_threads(4, cores=2, node_cpus=4) == 2
    assert worker_threads(1.33, cores=2, node_cpus=4) == 1
    assert worker_threads(0.25, cores=2, node_cpus=2) == 1  # a fraction still runs
    assert worker_threads(3, cores=4, node_cpus=0) == 3  # a node Ray counts no CPUs on


def test_worker_resources_fit_the_nodes():
    from graftune.population.resources import worker_resources

    config = with_overrides(Config(), {"num_models": 4})
    assert worker_resources(config, {"CPU": 2}) == {"CPU": 0.5}
    assert worker_resources(config, {"CPU": 24, "GPU": 4}, 4) == {"CPU": 1.0, "GPU": 1.0}
    assert worker_resources(config, {"CPU": 24}, 4) == {"CPU": 4}  # 24/4 = 6 fits no node
    # fewer GPUs than networks: they share, in fractions that fit whole GPUs
    assert worker_resources(config, {"CPU": 16, "GPU": 1}) == {"CPU": 1.0, "GPU": 0.25}
    assert worker_resources(config, {"CPU": 2, "GPU": 1}) == {"CPU": 0.5, "GPU": 0.25}
    three = with_overrides(config, {"num_models": 3})
    assert worker_resources(three, {"CPU": 16, "GPU": 2}) == {"CPU": 1.0, "GPU": 0.5}
    assert worker_resources(three, {"CPU": 16, "GPU": 1}) == {"CPU": 1.0, "GPU": 0.3333}
    fixed = with_overrides(config, {"cpus_per_worker": 3, "gpus_per_worker": 0})
    assert worker_resources(fixed, {"CPU": 24, "GPU": 4}) == {"CPU": 3.0}


def test_worker_layout_puts_the_networks_of_a_gpu_in_one_fused_worker():
    from graftune.commands.trial import trial_resources
    from graftune.population.resources import worker_layout

    base = with_overrides(Config(), {"model": "tiny_cnn"})  # fusable, and quick to check

    def layout(cluster, **settings):
        config = with_overrides(base, {"num_models": 4, **settings})
        layout = worker_layout(config, cluster)
        return layout.groups, layout.resources, layout.fused

    one_gpu, four_gpus = {"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 4}
    assert layout(one_gpu) == ([[0, 1, 2, 3]], {"CPU": 1.0, "GPU": 1.0}, True)
    assert layout(four_gpus) == ([[0], [1], [2], [3]], {"CPU": 1.0, "GPU": 1.0}, True)
    eight = layout({"CPU": 16, "GPU": 2}, num_models=8)
    assert eight == ([[0, 1, 2, 3], [4, 5, 6, 7]], {"CPU": 1.0, "GPU": 1.0}, True)
    # what the user asks for stands: CPUs, half a GPU each, or no GPU at all
    assert layout(one_gpu, cpus_per_worker=3)[1] == {"CPU": 3.0, "GPU": 1.0}
    half = layout(one_gpu, gpus_per_worker=0.5)
    assert half == ([[0, 1], [2, 3]], {"CPU": 1.0, "GPU": 0.5}, True)
    assert layout(one_gpu, gpus_per_worker=0) == ([[0], [1], [2], [3]], {"CPU": 4.0}, False)
    # CPUs: one worker per network unless --fuse on; no GPU up yet (an autoscaling
    # cluster): one worker per network, each asking for its GPU
    assert layout({"CPU": 4}) == ([[0], [1], [2], [3]], {"CPU": 1.0}, False)
    # more networks than cores: a worker per core, each training its share in turn
    assert layout({"CPU": 2}) == ([[0, 1], [2, 3]], {"CPU": 1.0}, False)
    assert layout({"CPU": 2}, asynchronous=True)[0] == [[0], [1], [2], [3]]  # paced alone
    assert layout({"CPU": 4}, fuse="on") == ([[0, 1, 2, 3]], {"CPU": 4.0}, True)
    cold = layout({"CPU": 4}, gpus_per_worker=1, cpus_per_worker=3)
    assert cold == ([[0], [1], [2], [3]], {"CPU": 3.0, "GPU": 1.0}, False)
    assert layout(one_gpu, fuse="off")[2] is False
    # a Tune trial asks for its driver and its workers, not its networks
    bundles = trial_resources({}, with_overrides(base, {"num_models": 4}), one_gpu)
    assert bundles.bundles == [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    # where the networks would fuse but cannot: one per worker, and the note says why
    separate = ([[0], [1], [2], [3]], {"CPU": 1.0, "GPU": 0.25}, False)
    for settings, why in [
        ({"asynchronous": True}, "--asynchronous"),
        ({"model": "mobilenet_v2_imagenet"}, "mobilenet_v2_imagenet cannot be fused"),
    ]:
        assert layout(one_gpu, **settings) == separate
        config = with_overrides(base, {"num_models": 4, **settings})
        assert why in worker_layout(config, one_gpu).note
        assert len(trial_resources({}, config, one_gpu).bundles) == 1 + 4  # sized to match
    assert worker_layout(with_overrides(base, {"num_models": 4}), one_gpu).note == ""


def test_more_networks_than_cores_share_one_worker_per_core():
    """64 networks on 2 cores: 2 worker processes, not 64 (each costs hundreds of MB)."""
    from graftune.commands.trial import trial_resources
    from graftune.population.resources import placement_line, worker_layout

    config = with_overrides(Config(), {"model": "tiny_cnn", "num_models": 64})
    layout = worker_layout(config, {"CPU": 2})
    assert layout.groups == [list(range(32)), list(range(32, 64))]
    assert layout.resources == {"CPU": 1.0} and not layout.fused
    line = "64 networks in 2 workers (32 per worker, trained one after another)"
    assert placement_line(layout) == line
    odd = worker_layout(with_overrides(config, {"num_models": 5}), {"CPU": 2.5})
    assert (
        placement_line(odd) == "5 networks in 2 workers (2-3 per worker, trained one after another)"
    )
    assert placement_line(worker_layout(config, {"CPU": 64})).endswith("(one each)")
    # a Tune trial: its driver, then a bundle per worker, not per network
    assert (
        len(
            trial_resources(
                {}, with_overrides(config, {"cpus_per_worker": 0.5}), {"CPU": 2}
            ).bundles
        )
        == 3
    )


def test_resume_keeps_the_settings_of_the_last_resume(tmp_path):
    """The checkpoint's settings are the truth: --epochs given to one resume still stands
    at the next resume without flags, and each resume is recorded with what it changed."""
    config = smoke_config(tmp_path, num_models=2, epochs=3, fuse="on")  # one worker process
    data = load_dataset(config.data)

    def stop_after(last_round):
        def on_round(result):
            if result.round == last_round:
                raise KeyboardInterrupt

        return on_round

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, data, on_round=stop_after(1))
    client = client_for(tmp_path)
    (stopped,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    run_id = stopped.info.run_id
    # only the tracking store and the run: any other flag would count as a new override
    store = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-log-models"]
    longer, _, resume = run.prepare([*store, "--resume", run_id, "--epochs", "5"])
    assert longer.train.epochs == 5
    with pytest.raises(KeyboardInterrupt):
        run_experiment(longer, data, on_round=stop_after(3), resume=resume)
    again, _, _ = run.prepare([*store, "--resume", run_id])
    assert again.train.epochs == 5  # not the 3 of the first run's params
    assert run.main([*store, "--resume", run_id]) == 0
    steps = [m.step for m in client.get_metric_history(run_id, "population/mean_test_acc")]
    assert steps == [1, 2, 3, 4, 5]
    first = client.download_artifacts(run_id, "config-resume-1.yaml", str(tmp_path))
    assert "train/epochs: 5" in open(first).read()
    assert client.get_run(run_id).data.tags["graftune.resumes"] == "2"  # two resumes ran
