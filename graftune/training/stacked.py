"""What goes in and out of a fused worker's stacked weights: per-network views, snapshots,
grafts on the device, teachers, restores and state dicts that a separate Trainer can load.

:class:`StackedNetworks` is the half of :class:`~graftune.training.fused.FusedTrainer` that
does not train; it reads the stacked tensors the trainer owns (``params``, ``buffers``,
``momentum``, ``teachers``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from graftune.core import graft
from graftune.core.average import population_average
from graftune.core.graft import StateLike, as_tensor
from graftune.core.snapshot import Snapshot, pack
from graftune.training.trainer import Source, Trainer


class StackedNetworks:
    """Per-network access to stacked weights; one list entry per network held."""

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

    def unit_states(self) -> list[Snapshot]:
        """Every network's floating-point tensors, one packed buffer each (as a separate
        Trainer's: what the population averages)."""
        keys = [k for k, v in {**self.params, **self.buffers}.items() if v.is_floating_point()]
        return [pack(self.weights(j), keys) for j in range(self.size)]

    def average(self, include: Sequence[int]) -> dict[str, torch.Tensor]:
        """The average of the networks in slots ``include``, on the device, in slot order:
        the arithmetic the driver does for networks on separate workers."""
        return population_average([self.weights(j) for j in include])

    @torch.no_grad()
    def move_toward_average(self, average: StateLike | None, rate: float, include=()) -> None:
        """Move every network toward ``average`` (None: the average of the slots
        ``include``) by ``rate``, all networks of a tensor in one lerp: the same per-element
        arithmetic as one lerp per network. Momentum stays each network's own."""
        if average is None:
            average = self.average(include)
        for key, stacked in {**self.params, **self.buffers}.items():
            if key in average and stacked.is_floating_point():
                goal = as_tensor(average[key]).to(self.device, stacked.dtype)
                stacked.lerp_(goal.unsqueeze(0).expand_as(stacked), rate)

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

    @torch.no_grad()
    def set_teachers(self, teachers: Sequence[Source], slots: Sequence[int] | None = None) -> None:
        """Distil network ``slot`` from its teacher from now on: another worker's snapshot or
        a slot of this worker, read before any graft (a predecessor's trained weights, not a
        mixture); None keeps the teacher it has."""
        slots = list(range(self.size)) if slots is None else list(slots)
        if all(t is None for t in teachers):
            return
        own = {s: self.weights(s) for s in teachers if isinstance(s, int)}
        if self.teachers is None:
            # The step changes shape: capture a new CUDA graph after a fresh warm-up.
            names = [k for k in {**self.params, **self.buffers} if k in set(self.unit_keys)]
            stacked = {**self.params, **self.buffers}
            self.teachers = {k: stacked[k].detach().clone() for k in names}
            for k, v in self.buffers.items():  # num_batches_tracked: unused in eval mode
                self.teachers.setdefault(k, v.clone())
            self._restart_graph()
        for j, teacher in zip(slots, teachers):
            if teacher is None:
                continue
            source = own[teacher] if isinstance(teacher, int) else teacher
            for key in self.unit_keys:
                self.teachers[key][j].copy_(as_tensor(source[key]))
            self.taught[j] = 1.0

    def teacher_states(self) -> list[dict[str, torch.Tensor] | None]:
        if self.teachers is None:
            return [None] * self.size
        return [
            {k: self.teachers[k][j].detach().cpu().clone() for k in self.unit_keys}
            if self.taught[j]
            else None
            for j in range(self.size)
        ]

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
        teachers = self.teacher_states()
        batches = self.batches.state_dicts()
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
                    "batches": batches[j],
                    "noise": self.noise[j].get_state(),
                    "step": self.step,
                    "teacher": teachers[j],
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
            self.noise[j].set_state(state["noise"])
        self.batches.load_state_dicts([state["batches"] for state in states])
        self.step = int(states[0]["step"])
        if self.teachers is not None:  # a resumed run has the teachers its checkpoint has
            self.teachers = None
            self.taught.zero_()
            self._restart_graph()
        self.set_teachers([state.get("teacher") for state in states])
        return self.step
