"""What a round reports and keeps: trained networks, evaluated before the graft, and no graft
after the last interval (the authors' order: train, test, graft)."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import interrupted_in_round, smoke_args
from graftune.commands import run
from graftune.commands.cli import config_from_args
from graftune.config import with_overrides
from graftune.core import GraftPolicy, ring_graft
from graftune.data import load_dataset
from graftune.tracking.checkpoint import load_checkpoint
from graftune.tracking.experiment import run_experiment
from graftune.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("ray_local")


def config_for(tmp_path, **overrides):
    args = run.build_parser().parse_args(smoke_args(tmp_path, "--num-models", "3"))
    return with_overrides(config_from_args(args), overrides)


def reference_rounds(config, data):
    """The same population without Ray: per round, train every network, evaluate it, then
    graft from the pre-graft snapshots, except after the last round."""
    torch.set_num_threads(1)  # as each worker runs: the same kernels, the same rounding
    trainers = [Trainer(config, k, data, device="cpu") for k in range(3)]
    policy = GraftPolicy.from_config(config.graft)
    accuracies = []
    for round_index in range(1, trainers[0].num_rounds + 1):
        for trainer in trainers:
            trainer.train_interval()
        accuracies.append([t.evaluate()["test_acc"] for t in trainers])
        if round_index < trainers[0].num_rounds:
            states = [t.model.state_dict() for t in trainers]
            for trainer, (state, _) in zip(trainers, ring_graft(states, trainers[0].units, policy)):
                trainer.model.load_state_dict(state)
    return trainers, accuracies


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_local):
    """One run of three networks for three rounds, read by two tests (a run costs seconds)."""
    config = config_for(tmp_path_factory.mktemp("uninterrupted"), epochs=3)
    data = load_dataset(config.data)
    return config, data, run_experiment(config, data)


def test_final_networks_are_trained_and_metrics_are_taken_before_the_graft(uninterrupted):
    config, data, result = uninterrupted
    trainers, accuracies = reference_rounds(config, data)
    client = MlflowClient(result.tracking_uri)
    for k in range(3):
        logged = [m.value for m in client.get_metric_history(result.run_id, f"net{k}/test_acc")]
        assert logged == pytest.approx([acc[k] for acc in accuracies], abs=1e-9)
    final = load_checkpoint(client.get_run(result.run_id).data.tags["graftune.tracking.checkpoint"])
    assert final["round"] == 3
    for trainer, state in zip(trainers, final["states"]):
        for key, value in trainer.model.state_dict().items():
            torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-6)
    # two grafts of three networks (rounds 1 and 2), none after round 3
    assert sorted({r["round"] for r in result.records}) == [1, 2]


def test_best_over_rounds_and_accuracy_after_the_graft_are_logged(tmp_path):
    config = config_for(tmp_path, epochs=3, eval_after_graft=True)
    result = run_experiment(config, load_dataset(config.data))
    client = MlflowClient(result.tracking_uri)

    def history(key):
        return [m.value for m in client.get_metric_history(result.run_id, key)]

    for k in range(3):
        accuracy = history(f"net{k}/test_acc")
        best = history(f"net{k}/best_test_acc")
        assert best == [max(accuracy[: r + 1]) for r in range(3)]
        # after the graft of rounds 1 and 2; the last round has no graft
        assert [
            m.step for m in client.get_metric_history(result.run_id, f"net{k}/test_acc_grafted")
        ] == [1, 2]
    over_rounds = history("population/best_test_acc_over_rounds")
    assert over_rounds[-1] == max(max(history(f"net{k}/test_acc")) for k in range(3))


def test_a_stop_between_evaluation_and_graft_redoes_that_round_on_resume(
    tmp_path, monkeypatch, uninterrupted
):
    """A round is finished when its graft is done: a stop after round 2's evaluation but
    before its graft leaves round 1 as the last finished round, and resume redoes round 2."""
    _, data, once_through = uninterrupted
    config = config_for(tmp_path, epochs=3)  # the same settings in a store of its own
    interrupted_in_round(monkeypatch, 2, lambda: run_experiment(config, data))
    client = MlflowClient(config.tracking.tracking_uri)
    (stopped,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    assert [m.step for m in client.get_metric_history(stopped.info.run_id, "net0/test_acc")] == [1]
    resumed = with_overrides(config, {"resume": stopped.info.run_id})
    from graftune.tracking.resume import resume_payload

    run_experiment(resumed, data, resume=resume_payload(resumed))
    once_client = MlflowClient(once_through.tracking_uri)
    for key in ["net0/test_acc", "net2/test_acc", "population/ensemble_test_acc"]:
        again = client.get_metric_history(stopped.info.run_id, key)
        assert [m.step for m in again] == [1, 2, 3]
        once = once_client.get_metric_history(once_through.run_id, key)
        assert [m.value for m in again] == pytest.approx([m.value for m in once], abs=1e-9)
