"""Fused workers train the same networks as separate Trainers: through an interval, a graft,
a checkpoint and resume, and the restore of a diverged network (fp32, on the CPU)."""

import math

import pytest
import torch

from conftest import distance, models_of, tiny_config
from graftune.config import Config, ConfigError, validate, with_overrides
from graftune.data import load_dataset
from graftune.training.fused import FusedTrainer, fusable
from graftune.training.group import TrainerGroup

# Relative distance ||fused - separate|| / ||separate|| over every float tensor of a network.
# One step agrees to float rounding (about 1e-7); the vmapped convolutions sum in another
# order, and on these synthetic images at initialisation ReLU kinks and MobileNetV2's badly
# conditioned start (fp32 against fp64 differs by 1% there, fused or not) amplify that.
# A real fault (a shared BatchNorm, a swapped learning rate, a lost momentum) is order 1e-1.
AFTER_TRAINING = {"resnet20": 1e-4, "mobilenetv2": 2e-2}
LOSS = {"resnet20": 1e-4, "mobilenetv2": 1e-2}  # the second step's loss follows the first


def config_for(model: str, k: int) -> Config:
    return tiny_config(model, k)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("model", ["resnet20", "mobilenetv2"])
def test_fused_trains_the_same_weights_as_separate_trainers(model, k):
    torch.set_num_threads(1)
    config = config_for(model, k)
    data = load_dataset(config.data)
    fused = FusedTrainer(config, range(k), data, device="cpu")
    separate = TrainerGroup(config, range(k), data, device="cpu")
    for a, b in zip(models_of(fused), models_of(separate)):
        assert distance(a, b) == 0.0  # the same initial weights, network by network

    train_f, train_s = fused.train_interval(), separate.train_interval()
    for f, s in zip(train_f, train_s):
        assert f["lr"] == s["lr"] and f["step"] == s["step"] == 2
        assert f["train_loss"] == pytest.approx(s["train_loss"], rel=LOSS[model])
    after_f, after_s = models_of(fused), models_of(separate)
    for j in range(k):
        assert distance(after_f[j], after_s[j]) < AFTER_TRAINING[model]
        assert distance(after_f[j], after_s[(j + 1) % k]) > 0.1  # networks stay apart

    # A graft from identical states is the core's arithmetic on both sides.
    fused.load_state_dicts(separate.state_dicts())
    ring = [(j - 1) % k for j in range(k)]
    records_f, records_s = fused.apply_grafts(ring), separate.apply_grafts(ring)
    for rows_f, rows_s in zip(records_f, records_s):
        assert [r["alpha"] for r in rows_f] == pytest.approx([r["alpha"] for r in rows_s])
    for a, b in zip(models_of(fused), models_of(separate)):
        assert distance(a, b) < 1e-6

    # A checkpoint resumes exactly, into a fused or a separate worker.
    checkpoint = fused.state_dicts()
    resumed = FusedTrainer(config, range(k), data, device="cpu")
    resumed.load_state_dicts(checkpoint)
    separate.load_state_dicts(checkpoint)
    fused.train_interval(), resumed.train_interval(), separate.train_interval()
    for a, b, c in zip(models_of(fused), models_of(resumed), models_of(separate)):
        assert all(torch.equal(a[key], b[key]) for key in a)
        assert distance(a, c) < AFTER_TRAINING[model]


def test_a_diverged_fused_network_is_detected_and_restored_alone():
    config = config_for("resnet20", 3)
    fused = FusedTrainer(config, range(3), load_dataset(config.data), device="cpu")
    fused.train_interval()
    before = models_of(fused)
    with torch.no_grad():
        fused.buffers["bn1.running_var"][1].fill_(math.nan)  # a buffer, not a parameter
    assert fused.weights_finite() == [True, False, True]
    donor = fused.snapshots()[0]
    assert fused.load_weights(1, donor)
    after = models_of(fused)
    for key in donor:
        assert torch.equal(after[1][key], torch.from_numpy(donor[key].copy()))
    for j in (0, 2):
        assert all(torch.equal(after[j][key], before[j][key]) for key in before[j])
    assert all(float(buf[1].abs().sum()) == 0 for buf in fused.momentum.values())


@pytest.mark.parametrize("model", ["resnet20_leaky", "resnet56", "vgg16_bn", "tiny_cnn"])
def test_registered_cifar_models_fuse(model):
    assert fusable(model) == ""


def test_fuse_on_refuses_what_only_separate_workers_do():
    for setting in [{"asynchronous": True}, {"compile": True}, {"bn_recalibrate_batches": 2}]:
        with pytest.raises(ConfigError, match="--fuse on cannot be combined"):
            validate(with_overrides(Config(), {"fuse": "on", "num_models": 2, **setting}))


@pytest.mark.usefixtures("ray_local")
def test_a_fused_population_runs_survives_its_worker_dying_and_logs_every_round(tmp_path):
    import ray
    from mlflow.tracking import MlflowClient

    from conftest import run_with_hook_after_round_1, smoke_config

    config = smoke_config(tmp_path, num_models=3, epochs=3, fuse="on")

    def kill_the_worker(population):
        assert population.groups == [[0, 1, 2]] and population.fused
        ray.kill(population.actors[0], no_restart=True)

    result = run_with_hook_after_round_1(config, kill_the_worker)
    assert [info["networks"] for info in result.worker_info] == [[0, 1, 2]]
    assert [h["round"] for h in result.history] == [1, 2, 3]
    assert all(len(h["networks"]) == 3 for h in result.history)
    assert any("worker 0 died" in e for e in result.events)
    client = MlflowClient(result.tracking_uri)
    for k in range(3):
        steps = [m.step for m in client.get_metric_history(result.run_id, f"net{k}/test_acc")]
        assert steps == [1, 2, 3]
    assert {r["round"] for r in result.records} == {1, 2}  # grafted on the device
