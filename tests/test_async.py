"""Asynchronous grafting: the schedule on its own, then a run on real Ray actors."""

import math

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from conftest import run_with_hook_after_round_1, smoke_args, smoke_config
from graftune.commands import run
from graftune.data import load_dataset
from graftune.population.async_rounds import AsyncSchedule
from graftune.tracking.experiment import run_experiment


def test_a_network_runs_ahead_by_at_most_max_lead_rounds():
    schedule = AsyncSchedule(size=3, first_round=1, last_round=5, max_lead=1)
    schedule.finish(0, 1)
    assert schedule.startable() == [(0, 2)]  # one round ahead of the slowest: allowed
    schedule.finish(0, 2)
    assert schedule.startable() == []  # round 3 would be two ahead: held
    assert schedule.complete_rounds() == []
    schedule.finish(1, 1)
    schedule.finish(2, 1)
    assert schedule.complete_rounds() == [1]
    assert sorted(schedule.startable()) == [(0, 3), (1, 2), (2, 2)]


def test_rounds_complete_once_in_order_and_the_last_starts_nothing():
    schedule = AsyncSchedule(size=2, first_round=4, last_round=5, max_lead=3)
    for k, r in [(1, 4), (1, 5), (0, 4)]:
        schedule.finish(k, r)
    assert schedule.complete_rounds() == [4] and not schedule.done
    schedule.finish(0, 5)
    assert schedule.complete_rounds() == [5] and schedule.done
    assert schedule.complete_rounds() == []
    assert sorted(schedule.startable()) == [(0, 5), (1, 5)]  # from round 4; none after 5


def test_max_lead_zero_is_a_barrier():
    schedule = AsyncSchedule(size=2, first_round=1, last_round=3, max_lead=0)
    schedule.finish(0, 1)
    assert schedule.startable() == []
    schedule.finish(1, 1)
    assert schedule.complete_rounds() == [1]
    assert sorted(schedule.startable()) == [(0, 2), (1, 2)]


def test_the_source_is_the_predecessor_once_it_has_published():
    schedule = AsyncSchedule(size=3, first_round=1, last_round=2)
    assert [schedule.source(k) for k in range(3)] == [None, None, None]
    schedule.publish(2, 1)
    assert [schedule.source(k) for k in range(3)] == [2, None, None]  # 0's predecessor is 2


@pytest.mark.usefixtures("ray_local")
def test_asynchronous_run_survives_a_killed_worker_and_logs_every_round_once(tmp_path):
    # four rounds: round 3 grafts (the last round never does)
    config = smoke_config(tmp_path, num_models=3, epochs=4, asynchronous=True, max_lead=0)
    result = run_with_hook_after_round_1(
        config, lambda population: ray.kill(population.actors[1], no_restart=True)
    )
    assert [h["round"] for h in result.history] == [1, 2, 3, 4]
    assert all(len(h["networks"]) == 3 for h in result.history)
    assert any("worker 1 died" in e for e in result.events)
    # The redone round 2 starts from nothing published; with max_lead 0 round 3 starts only
    # once all have finished it, so in round 3 every network has a source and grafts.
    assert {r["network"] for r in result.records if r["round"] == 3} == {0, 1, 2}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for k in range(3):
        steps = [m.step for m in client.get_metric_history(result.run_id, f"net{k}/test_acc")]
        assert steps == [1, 2, 3, 4]


@pytest.mark.usefixtures("ray_local")
def test_asynchronous_run_resumes_from_its_last_reported_round(tmp_path):
    config = smoke_config(tmp_path, num_models=2, asynchronous=True)

    def stop_after_first_round(result):
        if result.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, load_dataset(config.data), on_round=stop_after_first_round)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (stopped,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    run_id = stopped.info.run_id
    assert run.main(smoke_args(tmp_path, "--resume", run_id, "--asynchronous")) == 0
    for key in ["net1/test_acc", "population/mean_test_acc"]:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.usefixtures("ray_local")
def test_asynchronous_nan_network_is_restored_and_never_a_graft_source(tmp_path):
    config = smoke_config(tmp_path, num_models=3, epochs=4, asynchronous=True, max_lead=0)

    def poison_network_1(population):
        # Round 2 was already queued when this hook runs, so the poison must act later: NaN
        # momentum leaves the weights finite until network 1's next optimizer step, in round 3.
        actor = population.actors[1]
        [state] = ray.get(actor.get_state.remote())
        for buffers in state["optimizer"]["state"].values():
            buffers["momentum_buffer"] = torch.full_like(buffers["momentum_buffer"], math.nan)
        ray.get(actor.set_state.remote([state]))

    result = run_with_hook_after_round_1(config, poison_network_1)
    round3 = result.history[2]["networks"]
    assert [n["restored"] for n in round3] == [0, 1, 0]
    assert any("network 1 diverged; restored from network 0" in e for e in result.events)
    assert all(math.isfinite(n["test_loss"]) for n in round3)
    h_src = [r["h_src"] for r in result.records if r["round"] == 3 and r["network"] == 2]
    assert h_src and all(np.isfinite(h_src))  # net2 grafted from net1's last finite snapshot
