"""Separate Trainers behind the fused trainer's interface (one entry per network)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graftune.config import Config
from graftune.core.snapshot import Snapshot
from graftune.data import ImageSet
from graftune.training.trainer import Source, Trainer


class TrainerGroup:
    """Separate Trainers behind the fused trainer's interface, trained one after another: one
    network per worker, or a CPU worker's share where fusing does not pay."""

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

    def load_weights(self, slot: int, snapshot: Mapping[str, np.ndarray]) -> bool:
        self.trainers[slot].load_weights(snapshot)
        return self.trainers[slot].weights_finite()

    def state_dicts(self) -> list[dict[str, Any]]:
        return [t.state_dict() for t in self.trainers]

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> int:
        for trainer, state in zip(self.trainers, states):
            trainer.load_state_dict(state)
        return self.trainers[0].step
