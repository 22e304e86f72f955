"""The single-network trainer, without Ray: learning, schedules, diff-lr, state round trips."""

import math

import pytest
import torch

from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.training.common import initial_lr
from graftune.training.trainer import Trainer


def make_trainer(index=0, **overrides) -> Trainer:
    settings = {
        "model": "tiny_cnn",
        "dataset": "synthetic",
        "synthetic_size": 256,
        "batch_size": 32,
        "epochs": 4,
        "lr": 0.05,
        **overrides,
    }
    config = with_overrides(Config(), settings)
    return Trainer(config, index, load_dataset(config.data), device="cpu")


def test_one_interval_lowers_the_loss():
    trainer = make_trainer()
    before = trainer.evaluate()["test_loss"]
    metrics = trainer.train_interval()
    assert metrics["step"] == trainer.steps_per_epoch == 8 and metrics["finite"]
    assert trainer.evaluate()["test_loss"] < before


def test_diff_lr_follows_the_papers_formula():
    lrs = [initial_lr(0.1, k, 4) for k in range(4)]
    expected = [0.1 * (1 + math.cos(math.pi * (4 - k) / 4)) / 2 for k in range(1, 5)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(0.1) and lrs[0] < lrs[1] < lrs[2]
    assert initial_lr(0.1, 0, 4, diff_lr=False) == 0.1
    assert make_trainer(index=0, num_models=2).peak_lr == pytest.approx(0.05 / 2)


def test_cosine_anneals_per_step_and_step_schedule_decays():
    trainer = make_trainer(epochs=2)
    first = trainer.train_interval(1)["lr"]
    last = trainer.train_interval(trainer.total_steps)["lr"]
    assert first < trainer.peak_lr and last == pytest.approx(0.0, abs=1e-9)
    stepped = make_trainer(epochs=3, schedule="step", step_epochs=1, step_gamma=0.1, diff_lr=False)
    assert stepped.train_interval()["lr"] == pytest.approx(0.005)


def test_interval_in_steps_and_number_of_rounds():
    trainer = make_trainer(interval_steps=3, epochs=2)  # 16 steps in all
    assert trainer.steps_per_round == 3 and trainer.num_rounds == 6
    assert trainer.train_interval()["step"] == 3


def test_state_round_trip_continues_identically():
    a = make_trainer()
    a.train_interval()
    state = a.state_dict()
    b = make_trainer()
    b.load_state_dict(state)
    ma, mb = a.train_interval(), b.train_interval()
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-5)
    for key, value in a.model.state_dict().items():
        torch.testing.assert_close(value, b.model.state_dict()[key])


def test_snapshot_and_graft_round_trip():
    a, b = make_trainer(index=0), make_trainer(index=1)
    snapshot = b.snapshot()
    assert set(snapshot) == set(a.unit_keys)
    records = a.apply_graft(snapshot)
    assert len(records) == len(a.units)
    a.load_weights(snapshot)
    for key in a.unit_keys:
        torch.testing.assert_close(a.model.state_dict()[key], torch.from_numpy(snapshot[key]))


def test_non_finite_loss_is_reported():
    trainer = make_trainer()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    assert trainer.train_interval()["finite"] is False


def test_bn_recalibration_keeps_the_data_order():
    a, b = make_trainer(bn_recalibrate_batches=2), make_trainer()
    a.recalibrate_batchnorm(2)
    a.train_interval(1)
    b.train_interval(1)
    batches_a, batches_b = a.batches.epoch(), b.batches.epoch()
    torch.testing.assert_close(next(batches_a)[0], next(batches_b)[0])


def test_compiled_network_trains_the_same_weights_as_eager():
    eager, compiled = make_trainer(), make_trainer(compile=True)
    assert compiled.network is not compiled.model  # the forward goes through torch.compile
    first = [eager.train_interval(2)["train_loss"], compiled.train_interval(2)["train_loss"]]
    assert first[1] == pytest.approx(first[0], rel=1e-4)
    for key, value in eager.model.state_dict().items():  # grafts and checkpoints see these
        assert torch.allclose(compiled.model.state_dict()[key].float(), value.float(), atol=1e-4)
    assert compiled.evaluate()["test_acc"] == pytest.approx(eager.evaluate()["test_acc"])
