"""Exact resume anywhere: stopping at any round, with intervals that cross epoch boundaries,
then resuming (or recovering from a dead worker) gives bit for bit the weights of an
uninterrupted run on the CPU."""

import pytest
import ray
import torch

from conftest import smoke_config
from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.tracking.checkpoint import load_checkpoint
from graftune.tracking.experiment import run_experiment
from graftune.tracking.resume import resume_payload
from graftune.training.fused import FusedTrainer
from graftune.training.group import TrainerGroup

# 256 images in batches of 32: 8 steps an epoch; intervals of 3 end mid-epoch (after
# steps 3, 6, 9) and cross an epoch boundary (steps 7-9).
SETTINGS = {
    "model": "tiny_cnn",
    "dataset": "synthetic",
    "synthetic_size": 256,
    "batch_size": 32,
    "epochs": 2,
    "interval_steps": 3,
    "num_models": 2,
}


def assert_identical(a: list[dict], b: list[dict]) -> None:
    """Every network's weights, buffers and momentum, and its data position, bit for bit."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key, value in x["model"].items():
            assert torch.equal(value, y["model"][key]), key
        for i, slot in x["optimizer"]["state"].items():
            assert torch.equal(
                slot["momentum_buffer"], y["optimizer"]["state"][i]["momentum_buffer"]
            )
        assert x["batches"]["position"] == y["batches"]["position"]
        assert torch.equal(x["batches"]["generator"], y["batches"]["generator"])
        assert x["step"] == y["step"]


@pytest.mark.parametrize("group", [TrainerGroup, FusedTrainer])
@pytest.mark.parametrize("stop_after", [1, 3])  # mid-epoch; just past an epoch's end
def test_trainers_resume_mid_epoch_bit_for_bit(group, stop_after):
    config = with_overrides(Config(), SETTINGS)
    data = load_dataset(config.data)
    uninterrupted = group(config, [0, 1], data, device="cpu")
    for _ in range(4):
        uninterrupted.train_interval()
    stopped = group(config, [0, 1], data, device="cpu")
    for _ in range(stop_after):
        stopped.train_interval()
    resumed = group(config, [0, 1], data, device="cpu")  # a fresh process's trainers
    resumed.load_state_dicts(stopped.state_dicts())
    for _ in range(4 - stop_after):
        resumed.train_interval()
    assert_identical(resumed.state_dicts(), uninterrupted.state_dicts())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_population_stopped_resumed_and_recovered_equals_uninterrupted(tmp_path):
    """Stopped after round 1, resumed, a worker killed after round 2 of the resumed run:
    the last checkpoint equals that of a run that never stopped, bit for bit. (Fused
    workers save and load the same per-network state: the test above covers them.)"""
    settings = {**SETTINGS, "batch_size": 64, "epochs": 3}  # 4 steps an epoch

    def config_in(name: str) -> Config:
        return smoke_config(
            tmp_path / name,
            **settings,
            checkpoint_dir=str(tmp_path / name / "checkpoints"),
            tracking_uri=f"sqlite:///{tmp_path / name / 'mlflow.db'}",
        )

    whole = config_in("whole")
    (tmp_path / "whole").mkdir()
    data = load_dataset(whole.data)
    expected = run_experiment(whole, data)
    assert len(expected.history) == 4  # 12 steps in intervals of 3: all end mid-epoch

    def stop_after_round_1(result):
        if result.round == 1:
            raise KeyboardInterrupt

    broken = config_in("broken")
    (tmp_path / "broken").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(broken, data, on_round=stop_after_round_1)
    (run_dir,) = (tmp_path / "broken" / "checkpoints").iterdir()
    resumed = with_overrides(broken, {"resume": run_dir.name})
    started, killed = [], []

    def kill_a_worker_after_round_2(result):
        if result.round == 2:
            ray.kill(started[0].actors[-1], no_restart=True)
            killed.append(result.round)

    done = run_experiment(
        resumed,
        data,
        on_round=kill_a_worker_after_round_2,
        on_start=lambda population, rounds: started.append(population),
        resume=resume_payload(resumed),
    )
    assert killed == [2] and any("died" in e for e in done.events)
    assert [h["round"] for h in done.history] == [1, 2, 3, 4]
    whole_states = load_checkpoint(next((tmp_path / "whole" / "checkpoints").glob("*/*.pt")))
    assert_identical(load_checkpoint(run_dir / "population.pt")["states"], whole_states["states"])
