"""The Ray actor of one network: a thin shell over :class:`graftune.trainer.Trainer`.

Snapshots leave the actor as one numpy buffer (:mod:`graftune.snapshot`), so Ray's object
store carries them (zero-copy for readers on the same node) and no model is ever pickled.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from graftune.config import Config, from_flat
from graftune.data import ImageSet
from graftune.snapshot import Snapshot
from graftune.trainer import Trainer


@ray.remote(max_restarts=0)
class GraftWorker:
    """One network of the population; every method is a step the driver schedules."""

    def __init__(self, flat_config: dict[str, Any], index: int, data: ImageSet, threads: int):
        # Ray resolves the data ObjectRef before __init__: the arrays are shared, not copied.
        torch.set_num_threads(max(1, threads))
        config: Config = from_flat(flat_config)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.trainer = Trainer(config, index, data, device=device)

    def info(self) -> dict[str, Any]:
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": str(self.trainer.device),
            "threads": torch.get_num_threads(),
            "num_rounds": self.trainer.num_rounds,
            "steps_per_round": self.trainer.steps_per_round,
        }

    def train_interval(self) -> dict[str, float]:
        return self.trainer.train_interval()

    def snapshot(self) -> Snapshot:
        return self.trainer.snapshot()

    def graft_from(self, source: Snapshot | None) -> list[dict[str, Any]]:
        # A top-level ObjectRef argument arrives here already resolved (read-only arrays).
        return self.trainer.apply_graft(source)

    def load_weights(self, snapshot: Snapshot) -> bool:
        self.trainer.load_weights(snapshot)
        return self.trainer.weights_finite()

    def evaluate(self, with_probabilities: bool = True) -> dict[str, Any]:
        return self.trainer.evaluate(with_probabilities)

    def get_state(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def set_state(self, state: dict[str, Any]) -> int:
        self.trainer.load_state_dict(state)
        return self.trainer.step
