"""Online distillation from the ring predecessor: the loss, the frozen teacher, the fused
path, and teachers kept across checkpoints and resume."""

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from conftest import distance, interrupted_in_round, models_of, smoke_config, tiny_config
from graftune.config import Config, with_overrides
from graftune.core.distill import distill_loss
from graftune.data import load_dataset
from graftune.models import register_model
from graftune.training.fused import FusedTrainer
from graftune.training.group import TrainerGroup
from graftune.training.trainer import Trainer


@register_model(name="distill_test_mlp")
def _no_batchnorm(num_classes: int = 10) -> nn.Module:
    """Without BatchNorm, a student in train mode and its copy in eval mode give the same
    outputs, so "a teacher equal to the student" can be tested exactly."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


def config_for(model: str, k: int, **overrides) -> Config:
    distilling = {"distill_weight": 1.0, "distill_temperature": 2.0}
    return tiny_config(model, k, **{**distilling, **overrides})


def test_the_loss_is_temperature_squared_kl_and_vanishes_for_equal_outputs():
    torch.manual_seed(0)
    student = torch.randn(3, 8, 5, requires_grad=True)
    teacher = torch.randn(3, 8, 5)
    loss = distill_loss(student, teacher, 2.0)
    for j in range(3):  # the batched form is the per-network form, network by network
        reference = (
            F.kl_div(
                F.log_softmax(student[j] / 2, -1),
                F.log_softmax(teacher[j] / 2, -1),
                reduction="batchmean",
                log_target=True,
            )
            * 4
        )
        assert float(loss[j].detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
        assert float(loss[j].detach()) > 0
    same = distill_loss(student, student.detach(), 2.0)
    same.sum().backward()
    assert float(same.detach().abs().max()) == 0.0
    assert float(student.grad.abs().max()) < 1e-8


def test_weight_zero_trains_the_same_weights_to_the_bit_with_or_without_a_teacher():
    torch.set_num_threads(1)
    config = config_for("resnet20", 2, distill_weight=0.0)
    data = load_dataset(config.data)
    for group in (FusedTrainer, TrainerGroup):
        plain, taught = group(config, range(2), data, "cpu"), group(config, range(2), data, "cpu")
        taught.set_teachers([1, 0])
        plain_metrics, taught_metrics = plain.train_interval(), taught.train_interval()
        assert "distill_loss" not in taught_metrics[0]
        assert [m["train_loss"] for m in plain_metrics] == [m["train_loss"] for m in taught_metrics]
        for a, b in zip(models_of(plain), models_of(taught)):
            assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("group", [FusedTrainer, TrainerGroup])
def test_a_teacher_equal_to_the_student_leaves_plain_training(group):
    torch.set_num_threads(1)
    config = config_for("distill_test_mlp", 2)
    plain_config = with_overrides(config, {"distill_weight": 0.0})
    data = load_dataset(config.data)
    plain = group(plain_config, range(2), data, "cpu")
    itself, other = group(config, range(2), data, "cpu"), group(config, range(2), data, "cpu")
    itself.set_teachers([0, 1])  # each network its own teacher
    other.set_teachers([1, 0])  # each network the other's
    plain.train_interval(1)
    metrics = itself.train_interval(1)
    assert [m["distill_loss"] for m in metrics] == [0.0, 0.0]
    assert other.train_interval(1)[0]["distill_loss"] > 0
    for a, b, c in zip(models_of(plain), models_of(itself), models_of(other)):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)
        assert distance(c, a) > 1e-4  # a real teacher does move the weights


def test_the_teacher_is_frozen_its_weights_and_batchnorm_statistics_do_not_move():
    torch.set_num_threads(1)
    config = config_for("resnet20", 2)
    data = load_dataset(config.data)
    donor = Trainer(config, 1, data, device="cpu")
    snapshot = donor.snapshot()
    trainer = Trainer(config, 0, data, device="cpu")
    trainer.set_teacher(snapshot)
    metrics = trainer.train_interval()
    assert metrics["distill_loss"] > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    for key, value in trainer.teacher_state().items():
        assert torch.equal(value, torch.from_numpy(snapshot[key].copy())), key
    fused = FusedTrainer(config, range(2), data, device="cpu")
    fused.set_teachers([snapshot, snapshot])
    before = {k: v.clone() for k, v in fused.teachers.items()}
    fused.train_interval()
    assert all(torch.equal(before[k], fused.teachers[k]) for k in before)
    assert not any(v.requires_grad for v in fused.teachers.values())


def test_fused_distillation_equals_separate_trainers_and_checkpoints_keep_the_teachers():
    torch.set_num_threads(1)
    config = config_for("resnet20", 3)
    data = load_dataset(config.data)
    fused = FusedTrainer(config, range(3), data, device="cpu")
    separate = TrainerGroup(config, range(3), data, device="cpu")
    fused.train_interval(), separate.train_interval()
    states = separate.state_dicts()
    fused.load_state_dicts(states), separate.load_state_dicts(states)  # same batches next
    ring = [2, 0, 1]
    fused.set_teachers(ring), separate.set_teachers(ring)
    fused.apply_grafts(ring), separate.apply_grafts(ring)
    checkpoint = fused.state_dicts()
    assert all(state["teacher"] is not None for state in checkpoint)
    metrics_f, metrics_s = fused.train_interval(), separate.train_interval()
    for f, s in zip(metrics_f, metrics_s):
        assert f["distill_loss"] == pytest.approx(s["distill_loss"], rel=1e-4)
        assert f["distill_loss"] > 0
    for a, b in zip(models_of(fused), models_of(separate)):
        assert distance(a, b) < 1e-4

    # Resumed from the checkpoint, fused or separate, a worker distils from the same teachers.
    resumed = FusedTrainer(config, range(3), data, device="cpu")
    resumed.load_state_dicts(checkpoint)
    group = TrainerGroup(config, range(3), data, device="cpu")
    group.load_state_dicts(checkpoint)
    resumed.train_interval(), group.train_interval()
    for a, b, c in zip(models_of(fused), models_of(resumed), models_of(group)):
        assert all(torch.equal(a[key], b[key]) for key in a)
        assert distance(c, a) < 1e-4
    without = FusedTrainer(config, range(3), data, device="cpu")
    without.load_state_dicts([{**state, "teacher": None} for state in checkpoint])
    without.train_interval()
    assert distance(models_of(without)[0], models_of(fused)[0]) > 1e-4  # teachers mattered


@pytest.mark.usefixtures("ray_local")
def test_distillation_alone_through_ray_resumes_like_an_uninterrupted_run(tmp_path, monkeypatch):
    """--source none with a distillation weight: the predecessors' snapshots still travel,
    net{k}/distill_loss is logged, and a run stopped in round 2 resumes with its teachers."""
    from graftune.population.resources import worker_threads
    from graftune.population.worker import usable_cores
    from graftune.tracking.experiment import run_experiment
    from graftune.tracking.resume import resume_payload

    config = smoke_config(
        tmp_path, num_models=2, epochs=3, source="none", distill_weight=1.0, fuse="off"
    )
    data = load_dataset(config.data)
    uninterrupted = run_experiment(config, data)
    # Two of the tests' 4 Ray CPUs each: as many threads as that share of the real cores.
    threads = worker_threads(2, usable_cores(), node_cpus=4)
    assert [info["threads"] for info in uninterrupted.worker_info] == [threads, threads]
    client = MlflowClient(uninterrupted.tracking_uri)
    distill = client.get_metric_history(uninterrupted.run_id, "net1/distill_loss")
    assert [m.step for m in distill] == [1, 2, 3]
    assert distill[0].value == 0.0 and distill[1].value > 0  # no teacher before the 1st graft

    config = with_overrides(config, {"experiment": "interrupted"})
    interrupted_in_round(monkeypatch, 2, lambda: run_experiment(config, data))
    (stopped,) = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    resumed = with_overrides(config, {"resume": stopped.info.run_id})
    run_experiment(resumed, data, resume=resume_payload(resumed))
    for key in ["net0/test_acc", "net1/distill_loss", "net1/train_loss"]:
        again = [m.value for m in client.get_metric_history(stopped.info.run_id, key)]
        once = [m.value for m in client.get_metric_history(uninterrupted.run_id, key)]
        assert again == pytest.approx(once, abs=1e-9), key
