"""One network of a population: model, optimizer, schedule and data, with state in and out.

This is the plain object each Ray worker wraps; it runs and tests without Ray.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from graftune.config import Config
from graftune.core import GraftPolicy, find_graft_units, graft, l1_invalid_counts, unit_keys
from graftune.core.distill import distill_loss
from graftune.core.graft import as_tensor
from graftune.core.snapshot import Snapshot, pack
from graftune.data import ImageSet, skipped_count
from graftune.models import create_model
from graftune.training.common import (
    autocast,
    autocast_dtype,
    data_sources,
    initial_lr,
    lr_factor,
    steps_per_round,
)

Source = Mapping[str, Any] | int | None  # a snapshot, a slot of this worker, or no source


class Trainer:
    """Trains network ``index`` of a population of ``config.population.num_models``."""

    def __init__(self, config: Config, index: int, data: ImageSet, device: str | None = None):
        self.config, self.index = config, index
        t = config.train
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.seed = t.seed + index
        torch.manual_seed(self.seed)  # different initial weights per network
        model = create_model(config.model.model, num_classes=data.num_classes)
        self.units = find_graft_units(model)  # traced on the CPU, before moving
        self.unit_keys = unit_keys(self.units)
        self.memory_format = (
            torch.channels_last if config.model.channels_last else torch.contiguous_format
        )
        self.model = model.to(self.device, memory_format=self.memory_format)
        # The compiled wrapper shares the model's parameters, so weights, grafts and state
        # dicts all stay on self.model; only the forward passes go through self.network.
        self.network = torch.compile(self.model) if config.model.compile else self.model
        self.batches, self.test_source = data_sources(
            config, data, [self.seed], self.device, config.model.channels_last
        )
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = t.epochs * self.steps_per_epoch
        self.peak_lr = initial_lr(t.lr, index, config.population.num_models, t.diff_lr)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.peak_lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.policy = GraftPolicy.from_config(config.graft)
        self.noise = torch.Generator().manual_seed(self.seed)
        self.autocast = autocast_dtype(config.model.precision, self.device)
        self.teacher: torch.nn.Module | None = None  # the predecessor, from the first graft on
        self.step = 0

    def _lr_factor(self, step: int) -> float:
        return lr_factor(self.config.train, step, self.steps_per_epoch, self.total_steps)

    @staticmethod
    def optimizer_template(config: Config, peak_lr: float, lr: float, num_params: int) -> dict:
        """The optimizer state dict of a Trainer at learning rate ``lr``, without momentum:
        what a fused worker fills in, so its checkpoints load into a Trainer."""
        t = config.train
        params = [torch.zeros(1, requires_grad=True) for _ in range(num_params)]
        optimizer = torch.optim.SGD(
            params, lr=peak_lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
        state = optimizer.state_dict()
        state["param_groups"][0].update(lr=lr, initial_lr=peak_lr)
        return state

    @staticmethod
    def scheduler_template(peak_lr: float, lr: float, step: int) -> dict:
        """The LambdaLR state dict of a Trainer ``step`` optimizer steps in."""
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
        state = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0).state_dict()
        state.update(last_epoch=step, _step_count=step + 1, _last_lr=[lr])
        return state

    @property
    def steps_per_round(self) -> int:
        return steps_per_round(self.config.graft, self.steps_per_epoch)

    @property
    def num_rounds(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_round)

    def train_interval(self, steps: int | None = None) -> dict[str, float]:
        """Train one graft interval (or ``steps``), never past the end of the schedule.

        Returns:
            Mean train loss and accuracy over the interval, the learning rate at its end, the
            global step and whether loss and weights stayed finite.
        """
        steps = min(steps or self.steps_per_round, self.total_steps - self.step)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        distill_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        weight, temperature = (
            self.config.train.distill_weight,
            self.config.train.distill_temperature,
        )
        for _ in range(steps):
            x, y = self.batches.next_batch()
            with autocast(self.device, self.autocast):
                out = self.network(x)
            loss = F.cross_entropy(out.float(), y)
            total = loss
            if weight > 0 and self.teacher is not None:
                with torch.no_grad(), autocast(self.device, self.autocast):
                    teacher_out = self.teacher(x)
                distill = distill_loss(out, teacher_out, temperature)
                total = loss + weight * distill
                distill_sum += distill.detach() * len(y)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            # Sums stay on the device: one host sync per interval, not per step.
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
        self.step += steps
        train_loss = float(loss_sum) / max(seen, 1)
        metrics = {
            "train_loss": train_loss,
            "train_acc": float(correct) / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "step": self.step,
        }
        if weight > 0:
            metrics["distill_loss"] = float(distill_sum) / max(seen, 1)
        finite = all(math.isfinite(v) for v in (train_loss, metrics.get("distill_loss", 0.0)))
        return {**metrics, "finite": finite and self.weights_finite()}

    @torch.no_grad()
    def evaluate(self, with_probabilities: bool = False) -> dict[str, Any]:
        """Test loss and top-1 accuracy; optionally the softmax outputs for the ensemble."""
        self.model.eval()
        batches = self.test_source.batches(self.config.model.channels_last)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        probabilities = []
        for x, y in batches:
            with autocast(self.device, self.autocast):
                out = self.network(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            if with_probabilities:
                probabilities.append(out.softmax(1))
        count = self.test_source.count
        metrics: dict[str, Any] = {
            "test_loss": float(loss_sum) / count,
            "test_acc": float(correct) / count,
            "skipped_images": skipped_count(self.batches),
        }
        state = self.model.state_dict()
        for threshold, (invalid, _) in l1_invalid_counts(state, self.units).items():
            metrics[f"invalid_l1_{threshold:g}"] = invalid
        if with_probabilities:
            metrics["probabilities"] = torch.cat(probabilities).cpu().numpy()
        return metrics

    def weights_finite(self) -> bool:
        """Parameters and float buffers (BatchNorm statistics) all finite."""
        state = self.model.state_dict().values()
        return all(bool(torch.isfinite(v).all()) for v in state if v.is_floating_point())

    def snapshot(self) -> Snapshot:
        """The graft units' tensors in one numpy buffer: what travels to the successor."""
        return pack(self.model.state_dict(), self.unit_keys)

    def apply_graft(self, source: Mapping[str, np.ndarray] | None) -> list[dict[str, Any]]:
        """Graft from the predecessor's snapshot (or noise / nothing, by policy)."""
        own = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        new_state, records = graft(own, source, self.units, self.policy, self.noise)
        self.model.load_state_dict(new_state)
        if records and self.config.graft.bn_recalibrate_batches > 0:
            self.recalibrate_batchnorm(self.config.graft.bn_recalibrate_batches)
        return records

    @torch.no_grad()
    def set_teacher(self, snapshot: Mapping[str, Any] | None) -> None:
        """Distil from ``snapshot`` (the predecessor's graft units, taken before its graft)
        from now on: a frozen copy in eval mode, so neither its weights nor its BatchNorm
        statistics move. Its trained weights, not a mixture, are what it has learned."""
        if snapshot is None:
            return
        if self.teacher is None:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        state = self.teacher.state_dict()
        for key, value in snapshot.items():
            state[key].copy_(as_tensor(value))

    def teacher_state(self) -> dict[str, torch.Tensor] | None:
        if self.teacher is None:
            return None
        state = self.teacher.state_dict()
        return {k: state[k].detach().cpu().clone() for k in self.unit_keys}

    def load_weights(self, snapshot: Mapping[str, np.ndarray]) -> None:
        """Take another network's unit tensors wholesale (restoring a diverged network) and
        drop the momentum, which diverged with it."""
        state = self.model.state_dict()
        state.update({k: torch.as_tensor(np.array(v)) for k, v in snapshot.items()})
        self.model.load_state_dict(state)
        self.optimizer.state.clear()

    @torch.no_grad()
    def recalibrate_batchnorm(self, num_batches: int) -> None:
        """Re-estimate BN running statistics, stale after mixing, on a few training batches."""
        norms = [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        self.model.train()
        order = self.batches.state_dict()  # so recalibrating does not shift the data order
        for _, (x, _) in zip(range(num_batches), self.batches.epoch()):
            self.network(x)
        self.batches.load_state_dict(order)
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, momentum, schedule, and the data
        order and position in the epoch."""
        # Copies, not views: a caller holding this state must not see training go on.
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "batches": self.batches.state_dict(),
            "noise": self.noise.get_state(),
            "step": self.step,
            "teacher": self.teacher_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["batches"])
        self.noise.set_state(state["noise"])
        self.step = int(state["step"])
        self.teacher = None
        self.set_teacher(state.get("teacher"))  # checkpoints from before distillation: None
