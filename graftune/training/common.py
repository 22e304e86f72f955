"""What one network's trainer and the fused trainer share: each network's peak learning rate
and schedule, the steps of a round, autocast, and the training and test batches."""

from __future__ import annotations

import math
from typing import Any

import torch

from graftune.config import Config
from graftune.data import ImageSet, StreamSet, eval_source, train_source
from graftune.data.stream_batches import Skipped


def initial_lr(lr: float, index: int, num_models: int, diff_lr: bool = True) -> float:
    """Peak learning rate of network ``index`` (0-based) of K: with diff-lr the k-th of K
    (k = index + 1) starts at lr * (1 + cos(pi * (K - k) / K)) / 2, so the last gets lr."""
    if not diff_lr:
        return lr
    k = index + 1
    return lr * (1.0 + math.cos(math.pi * (num_models - k) / num_models)) / 2.0


def lr_factor(t: Any, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The schedule's multiplier of the peak learning rate at optimizer step ``step``:
    cosine annealed per step, or x ``step_gamma`` every ``step_epochs`` epochs."""
    if t.schedule == "step":
        return t.step_gamma ** (step // (t.step_epochs * steps_per_epoch))
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def steps_per_round(g: Any, steps_per_epoch: int) -> int:
    """Optimizer steps in one graft interval: --interval-steps, else --interval-epochs."""
    if g.interval_steps > 0:
        return g.interval_steps
    return max(1, round(g.interval_epochs * steps_per_epoch))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it ("auto" or "bf16"); fp32 on CPUs, where bf16
    convolutions are slower, and whenever "fp32" is asked for."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward passes' autocast context (a no-op for fp32); weights stay fp32."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def data_sources(
    config: Config,
    data: ImageSet | StreamSet,
    seeds: list[int],
    device: torch.device,
    channels_last: bool,
):
    """The training batches of the networks ``seeds`` and the test batches, on ``device``:
    from memory or streamed, as the data set is held. Streamed, the networks share one order
    (``--shared-order``, seeded by ``--seed``: every worker's networks see the same images)
    or each follows its own, and both sources count the images that fail to decode."""
    d, t = config.data, config.train
    skipped = Skipped(d.data_dir)
    order_seed = t.seed if d.shared_order else None
    workers = max(d.loader_workers, 0)  # -1 is resolved by the worker from its CPU share
    train = train_source(
        data, seeds, t.batch_size, device, channels_last, order_seed, workers, skipped
    )
    test = eval_source(data, t.eval_batch_size, device, workers, skipped)
    return train, test
