"""Several networks of a population trained as one: a fused step over stacked weights.

CIFAR networks leave most of a GPU idle at batch 128, and separate processes on one GPU only
take turns. Here the networks of one worker keep their weights stacked along a new first
dimension and run one forward and one backward for all of them, as one wide network of
grouped convolutions (:mod:`~graftune.training.grouped`), or with ``torch.func.vmap`` for a
model that layout cannot express; either way a step costs the kernel launches of one
network. Each network keeps its own initial weights, data order, learning rate, momentum and
BatchNorm statistics, so the result equals separate Trainers up to floating-point rounding
(tests/test_fused.py holds that).

:class:`FusedTrainer` and :class:`TrainerGroup` (separate Trainers in a loop) offer the
same list-in, list-out methods, one entry per network, so the worker does not care which
it holds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import stack_module_state

from graftune.config import Config
from graftune.core import GraftPolicy, find_graft_units, l1_invalid_counts, unit_keys
from graftune.core.distill import distill_loss
from graftune.data import ImageSet, StreamSet, skipped_count
from graftune.models import create_model
from graftune.training.common import autocast, autocast_dtype, data_sources, initial_lr, lr_factor
from graftune.training.cuda_graph import WARMUP_STEPS, CudaGraphStep
from graftune.training.grouped import GroupedForward, groupable, grouped_network, vmapped
from graftune.training.stacked import StackedNetworks
from graftune.training.trainer import Trainer


class FusedTrainer(StackedNetworks):
    """Networks ``indices`` of a population, trained together on one device."""

    def __init__(
        self,
        config: Config,
        indices: Sequence[int],
        data: ImageSet | StreamSet,
        device: str | None = None,
        grouped: bool | None = None,
    ):
        """``grouped`` (None: ``--fused-step``): run the step in the wide layout of grouped
        convolutions wherever :func:`~graftune.training.grouped.groupable` says it computes
        what vmap computes (True), or with vmap (False)."""
        self.config, self.indices = config, list(indices)
        t, n = config.train, len(indices)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        models = []
        for index in self.indices:  # seeded as a separate Trainer seeds: the same weights
            torch.manual_seed(t.seed + index)
            models.append(create_model(config.model.model, num_classes=data.num_classes))
        self.units = find_graft_units(models[0])
        self.unit_keys = unit_keys(self.units)
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().to(self.device).requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(self.device) for k, v in buffers.items()}
        # Zero momentum equals "no momentum yet": SGD's first step sets buf = d, and so does
        # 0 * momentum + d, exactly. A restored network's momentum is zeroed the same way.
        self.momentum = {k: torch.zeros_like(v) for k, v in self.params.items()}
        # Each network's batches stay NCHW: the wide layout makes one NHWC tensor of them
        # (with --channels-last), and vmap runs NCHW (with channels_last inputs its batched
        # backward strays ~1% from the unbatched one; adaptive pooling leaves the fast path).
        self.channels_last = False
        # In memory, the images go to the device once, as uint8, for every network's batches;
        # streamed, each decoded batch serves every network, each with its own crops.
        seeds = [t.seed + index for index in self.indices]
        self.batches, self.test_source = data_sources(
            config, data, seeds, self.device, self.channels_last
        )
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = t.epochs * self.steps_per_epoch
        num_models = config.population.num_models
        self.peak_lr = [initial_lr(t.lr, i, num_models, t.diff_lr) for i in self.indices]
        self.policy = GraftPolicy.from_config(config.graft)
        self.noise = [torch.Generator().manual_seed(t.seed + i) for i in self.indices]
        self.autocast = autocast_dtype(config.model.precision, self.device)
        if grouped is None:
            grouped = config.population.fused_step == "grouped"
        # Only where it computes what vmap computes:
        grouped = grouped and groupable(config.model.model, data.num_classes)
        wide = grouped_network(self.base, n) if grouped else None
        # Teachers (distillation): the predecessors' graft units, stacked like the networks,
        # run through a frozen eval-mode forward; allocated at the first graft.
        self.teachers: dict[str, torch.Tensor] | None = None
        self.taught = torch.zeros(n, device=self.device)  # 1 where a network has a teacher
        self.step = 0
        self._eager_steps = 0  # since the step last changed shape: CUDA graph warm-up
        # On a GPU the whole step (forward, backward, update) is captured once in a CUDA
        # graph and replayed: per-op dispatch costs more host time than the GPU work.
        self.graph: CudaGraphStep | None = None
        self.graph_note = "" if self.device.type == "cuda" else "eager on CPUs"
        if wide is not None:
            self.layout = "grouped convolutions"
            self.grouped = GroupedForward(wide, n, config.model.channels_last)
            forwards = (self.grouped.train, self.grouped.eval, self.grouped.teacher)
        else:
            self.layout, self.grouped = "vmap", None
            forwards = self._vmapped_forwards()
        # train: each network its own batch; eval: one batch for all; teacher: frozen, eval mode
        self._train_forward, self._eval_forward, self._teacher_forward = forwards

    def _vmapped_forwards(self):
        if self.autocast is not None:  # batched BatchNorm's backward needs one dtype: fp32
            for module in self.base.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.register_forward_pre_hook(lambda _, args: (args[0].float(),))
        teacher = vmapped(copy.deepcopy(self.base).eval())
        return (
            vmapped(self.base),
            vmapped(self.base, in_dims=(0, 0, None)),
            lambda tensors, x: teacher(tensors, {}, x),
        )

    @property
    def size(self) -> int:
        return len(self.indices)

    steps_per_round = Trainer.steps_per_round
    num_rounds = Trainer.num_rounds

    def lrs(self, step: int) -> list[float]:
        """Every network's learning rate at ``step``, in double precision as SGD has it."""
        factor = lr_factor(self.config.train, step, self.steps_per_epoch, self.total_steps)
        return [peak * factor for peak in self.peak_lr]

    def _next_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches.next_batches()

    def _autocast(self):
        return autocast(self.device, self.autocast)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One SGD step of every network on its own batch (x: [n, B, C, H, W], y: [n, B]).

        Returns each network's summed loss, summed distillation loss and number of correct
        predictions, on the device.
        """
        out = self._loss_terms(x, y)
        self._sgd()
        self.step += 1
        return out

    def _loss_terms(self, x: torch.Tensor, y: torch.Tensor, autocast_cache: bool = True):
        """Forward and backward of every network (the part of a step the CUDA graph shares)."""
        self.base.train()
        dtype = self.autocast or torch.float32
        enabled = self.autocast is not None
        with torch.autocast(self.device.type, dtype, enabled, cache_enabled=autocast_cache):
            out = self._train_forward(self.params, self.buffers, x)
            if self.distilling:
                with torch.no_grad():
                    teacher_out = self._teacher_forward(self.teachers, x)
        out = out.float()
        # Each network's mean loss by the kernel a Trainer uses (the same rounding); their
        # sum's gradient for each network is its own loss's gradient.
        losses = torch.stack([F.cross_entropy(out[j], y[j]) for j in range(self.size)])
        total = losses.sum()
        distill = torch.zeros_like(losses)
        if self.distilling:
            distill = distill_loss(out, teacher_out, self.config.train.distill_temperature)
            distill = distill * self.taught  # networks without a teacher yet learn alone
            total = total + self.config.train.distill_weight * distill.sum()
        total.backward()
        right = (out.detach().argmax(2) == y).sum(1)
        return losses.detach() * y.shape[1], distill.detach() * y.shape[1], right

    @property
    def distilling(self) -> bool:
        return self.config.train.distill_weight > 0 and self.teachers is not None

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD's update (momentum, weight decay, no dampening or Nesterov) over
        all stacked tensors at once, then each network's own learning rate: one foreach
        call per network with SGD's own ``alpha=-lr``, so the rounding is SGD's too."""
        params, bufs = self.momentum_update()
        for j, lr in enumerate(self.lrs(self.step)):
            torch._foreach_add_([p[j] for p in params], [b[j] for b in bufs], alpha=-lr)
        for p in params:
            p.grad = None

    @torch.no_grad()
    def momentum_update(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """SGD's weight decay and momentum over all stacked tensors: buf = m * buf + g + wd * p.
        Returns the parameters and their momentum buffers, for the learning-rate step."""
        t = self.config.train
        params = list(self.params.values())
        grads = [p.grad for p in params]
        bufs = list(self.momentum.values())
        if t.weight_decay:
            torch._foreach_add_(grads, params, alpha=t.weight_decay)
        torch._foreach_mul_(bufs, t.momentum)
        torch._foreach_add_(bufs, grads)
        return params, bufs

    def train_interval(self, steps: int | None = None) -> list[dict[str, Any]]:
        """Train one graft interval (or ``steps``); one metrics dict per network."""
        steps = min(steps or self.steps_per_round, self.total_steps - self.step)
        loss_sum = torch.zeros(self.size, device=self.device)
        distill_sum = torch.zeros(self.size, device=self.device)
        correct = torch.zeros(self.size, device=self.device, dtype=torch.long)
        seen = 0
        for _ in range(steps):
            x, y = self._next_batches()
            full = y.shape[1] == self.batches.batch_size  # not short of a damaged image
            if self.graph is None and self._eager_steps >= WARMUP_STEPS and not self.graph_note:
                if full:
                    self.graph, self.graph_note = CudaGraphStep.capture(self, x, y)
            if self.graph is not None and not full:
                # A streamed batch short of a damaged image: one eager step, off the graph,
                # without the gradients the last replay left in p.grad.
                for p in self.params.values():
                    p.grad = None
                loss, distill, right = self.train_step(x, y)
            elif self.graph is not None:
                loss, distill, right = self.graph.run(x, y, self.step)
                self.step += 1
            elif self.device.type == "cuda":  # warm-up for the capture: on a side stream
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss, distill, right = self.train_step(x, y)
                torch.cuda.current_stream().wait_stream(side)
            else:
                loss, distill, right = self.train_step(x, y)
            self._eager_steps += self.graph is None
            loss_sum += loss
            distill_sum += distill
            correct += right
            seen += y.shape[1]
        finite = self.weights_finite()
        lr = self.lrs(self.step)
        losses, rights = (loss_sum / max(seen, 1)).tolist(), correct.tolist()
        distills = (distill_sum / max(seen, 1)).tolist()
        metrics = []
        for j in range(self.size):
            m = {
                "train_loss": losses[j],
                "train_acc": rights[j] / max(seen, 1),
                "lr": lr[j],
                "step": self.step,
            }
            if self.config.train.distill_weight > 0:
                m["distill_loss"] = distills[j]
            ok = math.isfinite(losses[j]) and math.isfinite(distills[j]) and finite[j]
            metrics.append({**m, "finite": ok})
        return metrics

    @torch.no_grad()
    def evaluate(self, with_probabilities: bool = False) -> list[dict[str, Any]]:
        """Every network on the same test batches; one metrics dict per network."""
        self.base.eval()
        batches = self.test_source.batches(self.channels_last)
        loss_sum = torch.zeros(self.size, device=self.device)
        correct = torch.zeros(self.size, device=self.device, dtype=torch.long)
        probabilities = []
        for x, y in batches:
            with self._autocast():
                out = self._eval_forward(self.params, self.buffers, x)
            out = out.float()
            target = y.expand(self.size, -1)
            loss = F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="none")
            loss_sum += loss.view_as(target).sum(1)
            correct += (out.argmax(2) == target).sum(1)
            if with_probabilities:
                probabilities.append(out.softmax(2))
        count = self.test_source.count
        skipped = skipped_count(self.batches)
        losses, rights = (loss_sum / count).tolist(), correct.tolist()
        if with_probabilities:
            stacked = torch.cat(probabilities, 1).cpu().numpy()
        metrics = []
        for j in range(self.size):
            m: dict[str, Any] = {
                "test_loss": losses[j],
                "test_acc": rights[j] / count,
                "skipped_images": skipped,
            }
            for threshold, (invalid, _) in l1_invalid_counts(self.weights(j), self.units).items():
                m[f"invalid_l1_{threshold:g}"] = invalid
            if with_probabilities:
                m["probabilities"] = stacked[j]
            metrics.append(m)
        return metrics

    def _restart_graph(self) -> None:
        """Drop the CUDA graph (the step changes shape): capture anew after a warm-up. A
        replayed graph leaves its static gradients in ``p.grad``, which the next eager
        backward would add to its own."""
        for p in self.params.values():
            p.grad = None
        if self.device.type == "cuda":
            self.graph, self.graph_note, self._eager_steps = None, "", 0
