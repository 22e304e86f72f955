"""Separate Trainers behind the fused trainer's interface (one entry per network)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graftune.config import Config
from graftune.core.average import move_toward, population_average
from graftune.core.graft import StateLike
from graftune.core.snapshot import Snapshot, pack
from graftune.data import ImageSet
from graftune.training.trainer import Source, Trainer


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
        self.layout = "separate"

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

    def set_teachers(self, teachers: Sequence[Source]) -> None:
        local = {s: self.trainers[s].snapshot() for s in teachers if isinstance(s, int)}
        for trainer, s in zip(self.trainers, teachers):
            trainer.set_teacher(local[s] if isinstance(s, int) else s)

    def apply_grafts(self, sources: Sequence[Source]) -> list[list[dict[str, Any]]]:
        # Slots of this worker are read before any graft, as in the fused trainer.
        local = {s: self.trainers[s].snapshot() for s in sources if isinstance(s, int)}
        return [
            t.apply_graft(local[s] if isinstance(s, int) else s)
            for t, s in zip(self.trainers, sources)
        ]

    def unit_states(self) -> list[Snapshot]:
        """Every network's floating-point tensors (weights and BatchNorm statistics), one
        packed buffer each: what the population averages."""
        return [pack(state, float_keys(state)) for state in self._states()]

    def average(self, include: Sequence[int]) -> dict[str, Any]:
        """The average of the networks in slots ``include``, here, in slot order."""
        return population_average([self._states()[j] for j in include])

    def move_toward_average(self, average: StateLike | None, rate: float, include=()) -> None:
        """Move every network toward ``average`` by ``rate``; None: toward the average of
        the slots ``include`` of this worker (it holds the whole population)."""
        if average is None:
            average = self.average(include)
        for state in self._states():
            move_toward(state, average, rate)

    def _states(self) -> list[dict[str, Any]]:
        # state_dict() tensors share the parameters' storage: moving them moves the network
        return [t.model.state_dict() for t in self.trainers]

    def load_weights(self, slot: int, snapshot: Mapping[str, np.ndarray]) -> bool:
        self.trainers[slot].load_weights(snapshot)
        return self.trainers[slot].weights_finite()

    def state_dicts(self) -> list[dict[str, Any]]:
        return [t.state_dict() for t in self.trainers]

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> int:
        for trainer, state in zip(self.trainers, states):
            trainer.load_state_dict(state)
        return self.trainers[0].step


def float_keys(state: Mapping[str, Any]) -> list[str]:
    """The keys of a state dict that averaging moves: its floating-point tensors."""
    return [k for k, v in state.items() if v.is_floating_point()]
