"""Several networks of a population trained as one: a fused step over stacked weights.

CIFAR networks leave most of a GPU idle at batch 128, and separate processes on one GPU only
take turns. Here the networks of one worker keep their weights stacked along a new first
dimension, and ``torch.func.vmap`` runs one forward and one backward for all of them: vmap
turns a convolution with stacked weights into one grouped convolution, so a step costs the
kernel launches of one network. Each network keeps its own initial weights, data order,
learning rate, momentum and BatchNorm statistics, so the result equals separate Trainers up
to floating-point rounding (tests/test_fused.py holds that).

:class:`FusedTrainer` and :class:`TrainerGroup` (separate Trainers in a loop) offer the
same list-in, list-out methods, one entry per network, so the worker does not care which
it holds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from graftune.config import Config
from graftune.core import GraftPolicy, find_graft_units, graft, l1_invalid_counts, unit_keys
from graftune.core.graft import as_tensor
from graftune.core.snapshot import Snapshot, pack
from graftune.data import ImageSet, TrainBatches, eval_batches
from graftune.models import create_model
from graftune.training.trainer import Trainer, autocast, autocast_dtype, initial_lr, lr_factor

Source = Mapping[str, Any] | int | None  # a snapshot, a slot of this worker, or no source


def fusable(model_name: str, num_classes: int = 10, image_size: int = 32) -> str:
    """Why the model cannot be trained fused ('' if it can): one tiny vmapped train step
    on the CPU, the same code path the fused trainer runs."""
    try:
        models = [create_model(model_name, num_classes=num_classes) for _ in range(2)]
        base = copy.deepcopy(models[0]).to("meta").train()
        params, buffers = stack_module_state(models)

        def forward(p, b, x):
            return functional_call(base, (p, b), (x,))

        x = torch.zeros(2, 2, 3, image_size, image_size)
        vmap(forward)(params, buffers, x).sum().backward()
    except Exception as error:  # any op without a batching rule shows up here
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return ""


class FusedTrainer:
    """Networks ``indices`` of a population, trained together on one device."""

    def __init__(
        self, config: Config, indices: Sequence[int], data: ImageSet, device: str | None = None
    ):
        self.config, self.indices = config, list(indices)
        t = config.train
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
        # NCHW under vmap: with channels_last inputs the batched convolution's backward
        # strays ~1% from the unbatched one, and adaptive pooling leaves the fast path.
        self.channels_last = False
        # Shared by every network's batches: the images go to the device once, as uint8.
        images = as_tensor(data.train_images).to(self.device)
        labels = as_tensor(data.train_labels).to(self.device)
        self.batches = [
            TrainBatches(
                images, labels, t.batch_size, data.mean, data.std, device=self.device,
                seed=t.seed + index, channels_last=self.channels_last,
            )
            for index in self.indices
        ]  # fmt: skip
        self.test_images = as_tensor(data.test_images).to(self.device)
        self.test_labels = as_tensor(data.test_labels).to(self.device)
        self.mean, self.std = data.mean, data.std
        self.steps_per_epoch = self.batches[0].steps_per_epoch
        self.total_steps = t.epochs * self.steps_per_epoch
        num_models = config.population.num_models
        self.peak_lr = [initial_lr(t.lr, i, num_models, t.diff_lr) for i in self.indices]
        self.policy = GraftPolicy.from_config(config.graft)
        self.noise = [torch.Generator().manual_seed(t.seed + i) for i in self.indices]
        self.autocast = autocast_dtype(config.model.precision, self.device)
        if self.autocast is not None:  # batched BatchNorm's backward needs one dtype: fp32
            for module in self.base.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.register_forward_pre_hook(lambda _, args: (args[0].float(),))
        self.step = 0
        # On a GPU the whole step (forward, backward, update) is captured once in a CUDA
        # graph and replayed: vmap's per-op dispatch costs more host time than the GPU work.
        self.graph: CudaGraphStep | None = None
        self.graph_note = "" if self.device.type == "cuda" else "eager on CPUs"

        def forward(p, b, x):
            return functional_call(self.base, (p, b), (x,))

        self._train_forward = vmap(forward)  # each network its own batch
        self._eval_forward = vmap(forward, in_dims=(0, 0, None))  # one batch for all

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
        xs, ys = zip(*(batches.next_batch() for batches in self.batches))
        return torch.stack(xs), torch.stack(ys)

    def _autocast(self):
        return autocast(self.device, self.autocast)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every network on its own batch (x: [n, B, C, H, W], y: [n, B]).

        Returns each network's summed loss and number of correct predictions, on the device.
        """
        self.base.train()
        with self._autocast():
            out = self._train_forward(self.params, self.buffers, x)
        out = out.float()
        # Each network's mean loss by the kernel a Trainer uses (the same rounding); their
        # sum's gradient for each network is its own loss's gradient.
        losses = torch.stack([F.cross_entropy(out[j], y[j]) for j in range(self.size)])
        losses.sum().backward()
        self._sgd()
        self.step += 1
        return losses.detach() * y.shape[1], (out.detach().argmax(2) == y).sum(1)

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
        correct = torch.zeros(self.size, device=self.device, dtype=torch.long)
        seen = 0
        for _ in range(steps):
            x, y = self._next_batches()
            if self.graph is None and self.step >= WARMUP_STEPS and not self.graph_note:
                self.graph, self.graph_note = CudaGraphStep.capture(self, x, y)
            if self.graph is not None:
                loss, right = self.graph.run(x, y, self.step)
                self.step += 1
            elif self.device.type == "cuda":  # warm-up for the capture: on a side stream
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss, right = self.train_step(x, y)
                torch.cuda.current_stream().wait_stream(side)
            else:
                loss, right = self.train_step(x, y)
            loss_sum += loss
            correct += right
            seen += y.shape[1]
        finite = self.weights_finite()
        lr = self.lrs(self.step)
        losses, rights = (loss_sum / max(seen, 1)).tolist(), correct.tolist()
        return [
            {
                "train_loss": losses[j],
                "train_acc": rights[j] / max(seen, 1),
                "lr": lr[j],
                "step": self.step,
                "finite": math.isfinite(losses[j]) and finite[j],
            }
            for j in range(self.size)
        ]

    @torch.no_grad()
    def evaluate(self, with_probabilities: bool = False) -> list[dict[str, Any]]:
        """Every network on the same test batches; one metrics dict per network."""
        self.base.eval()
        batches = eval_batches(
            self.test_images, self.test_labels, self.config.train.eval_batch_size,
            self.mean, self.std, self.device, channels_last=self.channels_last,
        )  # fmt: skip
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
        count = len(self.test_labels)
        losses, rights = (loss_sum / count).tolist(), correct.tolist()
        if with_probabilities:
            stacked = torch.cat(probabilities, 1).cpu().numpy()
        metrics = []
        for j in range(self.size):
            m: dict[str, Any] = {"test_loss": losses[j], "test_acc": rights[j] / count}
            for threshold, (invalid, _) in l1_invalid_counts(self.weights(j), self.units).items():
                m[f"invalid_l1_{threshold:g}"] = invalid
            if with_probabilities:
                m["probabilities"] = stacked[j]
            metrics.append(m)
        return metrics

    def weights(self, slot: int) -> dict[str, torch.Tensor]:
        """Network ``slot``'s state dict: views into the stacked tensors, on the device."""
        return {k: v[slot].detach() for k, v in {**self.params, **self.buffers}.items()}

    @torch.no_grad()
    def weights_finite(self) -> list[bool]:
        """Per network: are all its float parameters and buffers finite? (one host sync)"""
        tensors = [v for v in [*self.params.values(), *self.buffers.values()]]
        flags = [torch.isfinite(v.flatten(1)).all(1) for v in tensors if v.is_floating_point()]
        return torch.stack(flags).all(0).tolist()

    def snapshots(self) -> list[Snapshot]:
        """Every network's graft-unit tensors, one packed buffer each."""
        return [pack(self.weights(j), self.unit_keys) for j in range(self.size)]

    @torch.no_grad()
    def apply_grafts(
        self, sources: Sequence[Source], slots: Sequence[int] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Graft every network (or those in ``slots``) from its source: another worker's
        snapshot, a slot of this worker (read before any graft here, so order does not
        matter), or None (noise or no source, by policy). The arithmetic is the core's, in
        fp32, on the device."""
        own = [{k: v.clone() for k, v in self.weights(j).items()} for j in range(self.size)]
        slots = list(range(self.size)) if slots is None else list(slots)
        results = []
        for j, source in zip(slots, sources):
            if isinstance(source, int):
                source = own[source]
            elif source is not None:  # a snapshot from the object store: numpy, on the CPU
                source = {k: as_tensor(v).to(self.device) for k, v in source.items()}
            results.append(graft(own[j], source, self.units, self.policy, self.noise[j]))
        for j, (state, _) in zip(slots, results):
            self._write(j, state)
        return [records for _, records in results]

    @torch.no_grad()
    def _write(self, slot: int, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            target = self.params.get(key, self.buffers.get(key))
            target[slot].copy_(
                as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
            )

    def load_weights(self, slot: int, snapshot: Mapping[str, np.ndarray]) -> bool:
        """Take another network's unit tensors wholesale (restoring a diverged network); its
        momentum diverged with it and starts again from zero."""
        self._write(slot, snapshot)
        with torch.no_grad():
            for buf in self.momentum.values():
                buf[slot].zero_()
        return self.weights_finite()[slot]

    def state_dicts(self) -> list[dict[str, Any]]:
        """Per network, the same state a separate Trainer saves, so checkpoints move freely
        between fused and unfused workers."""
        names = list(self.params)
        states = []
        for j in range(self.size):
            lr = self.lrs(self.step)[j]
            template = Trainer.optimizer_template(self.config, self.peak_lr[j], lr, len(names))
            template["state"] = {
                i: {"momentum_buffer": self.momentum[k][j].detach().cpu().clone()}
                for i, k in enumerate(names)
            }
            states.append(
                {
                    "model": {k: v.cpu().clone() for k, v in self.weights(j).items()},
                    "optimizer": template,
                    "scheduler": Trainer.scheduler_template(self.peak_lr[j], lr, self.step),
                    "batches": self.batches[j].state_dict(),
                    "noise": self.noise[j].get_state(),
                    "step": self.step,
                }
            )
        return states

    @torch.no_grad()
    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> int:
        names = list(self.params)
        for j, state in enumerate(states):
            self._write(j, state["model"])
            saved = state["optimizer"]["state"]
            for i, k in enumerate(names):
                buf = saved.get(i, {}).get("momentum_buffer")
                self.momentum[k][j].copy_(buf) if buf is not None else self.momentum[k][j].zero_()
            self.batches[j].load_state_dict(state["batches"])
            self.noise[j].set_state(state["noise"])
        self.step = int(states[0]["step"])
        return self.step


WARMUP_STEPS = 3  # eager steps before capture: cuDNN picks its kernels, the allocator settles


class CudaGraphStep:
    """The fused train step recorded as one CUDA graph. Inputs are copied into static
    tensors, the learning rates come from a table on the device indexed by a step counter,
    and everything else (weights, momentum, BatchNorm statistics) is updated in place, so
    grafts, restores and loaded states between replays are seen by the next replay."""

    def __init__(self, trainer: FusedTrainer, x: torch.Tensor, y: torch.Tensor):
        self.trainer = trainer
        self.x, self.y = x.clone(), y.clone()
        steps = range(trainer.total_steps + 1)
        table = [trainer.lrs(step) for step in steps]  # double, then rounded once
        self.lr_table = torch.tensor(table, dtype=torch.float32, device=trainer.device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=trainer.device)
        self.graph = torch.cuda.CUDAGraph()

    @classmethod
    def capture(cls, trainer: FusedTrainer, x, y) -> tuple[CudaGraphStep | None, str]:
        try:
            step = cls(trainer, x, y)
            for p in trainer.params.values():
                p.grad = None
            torch.cuda.synchronize()
            with torch.cuda.graph(step.graph):
                step.loss, step.right = step._body()
            return step, "cuda graph"
        except Exception as error:  # capture is an optimisation: eager steps still work
            return None, f"eager (CUDA graph capture failed: {type(error).__name__}: {error})"

    def _body(self) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = self.trainer
        trainer.base.train()
        with torch.autocast("cuda", dtype=trainer.autocast or torch.float32,
                            enabled=trainer.autocast is not None, cache_enabled=False):  # fmt: skip
            out = trainer._train_forward(trainer.params, trainer.buffers, self.x)
        out = out.float()
        losses = torch.stack([F.cross_entropy(out[j], self.y[j]) for j in range(trainer.size)])
        losses.sum().backward()
        params, bufs = trainer.momentum_update()
        with torch.no_grad():
            lr = self.lr_table.index_select(0, self.step_index).view(-1)
            steps = [lr.view(-1, *([1] * (p.dim() - 1))) for p in params]
            torch._foreach_addcmul_(params, bufs, steps, value=-1.0)
        right = (out.detach().argmax(2) == self.y).sum(1)
        return losses.detach() * self.y.shape[1], right

    def run(self, x: torch.Tensor, y: torch.Tensor, step: int):
        self.x.copy_(x)
        self.y.copy_(y)
        self.step_index.fill_(step)
        self.graph.replay()
        return self.loss.clone(), self.right.clone()


class TrainerGroup:
    """Separate Trainers behind the fused trainer's interface: one network per worker, or a
    CPU worker where fusing does not pay."""

    def __init__(
        self, config: Config, indices: Sequence[int], data: ImageSet, device: str | None = None
    ):
        self.indices = list(indices)
        self.trainers = [Trainer(config, k, data, device=device) for k in self.indices]
        self.device = self.trainers[0].device
        self.graph_note = "eager"

    @property
    def num_rounds(self) -> int:
        return self.trainers[0].num_rounds

    @property
    def steps_per_round(self) -> int:
        return self.trainers[0].steps_per_round

    def train_interval(self, steps: int | None = None) -> list[dict[str, Any]]:
        return [t.train_interval(steps) for t in self.trainers]

    def evaluate(self, with_probabilities: bool = False) -> list[dict[str, Any]]:
        return [t.evaluate(with_probabilities) for t in self.trainers]

    def snapshots(self) -> list[Snapshot]:
        return [t.snapshot() for t in self.trainers]

    def apply_grafts(self, sources: Sequence[Source]) -> list[list[dict[str, Any]]]:
        # Slots of this worker are read before any graft, as in the fused trainer.
        local = {s: self.trainers[s].snapshot() for s in sources if isinstance(s, int)}
        return [
            t.apply_graft(local[s] if isinstance(s, int) else s)
            for t, s in zip(self.trainers, sources)
        ]

    def load_weights(self, slot: int, snapshot: Mapping[str, np.ndarray]) -> bool:
        self.trainers[slot].load_weights(snapshot)
        return self.trainers[slot].weights_finite()

    def state_dicts(self) -> list[dict[str, Any]]:
        return [t.state_dict() for t in self.trainers]

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> int:
        for trainer, state in zip(self.trainers, states):
            trainer.load_state_dict(state)
        return self.trainers[0].step
