"""The Ray actor of one device: a thin shell over the networks it trains.

A worker holds one or more networks of the population: a :class:`~graftune.training.fused.FusedTrainer`
(all of them in one step) or a :class:`~graftune.training.group.TrainerGroup` (separate Trainers).
Every method takes and returns one entry per network it holds, in the order of ``indices``.
Snapshots leave the actor as one numpy buffer per network (:mod:`graftune.core.snapshot`), so
Ray's object store carries them (zero-copy for readers on the same node) and no model is
ever pickled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
import torch

from graftune.config import Config, from_flat
from graftune.core.snapshot import Snapshot
from graftune.data import ImageSet, StreamSet
from graftune.data.loader import loader_workers
from graftune.population.resources import worker_threads
from graftune.training.fused import FusedTrainer
from graftune.training.group import TrainerGroup
from graftune.training.soup import Soup
from graftune.training.trainer import Source

HEALTH = "health"  # a concurrency group of its own: answers while an interval trains
HOLD_DIR = "GRAFTUNE_TEST_HOLD_DIR"  # tests only, see hold_if_asked


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def node_cpus() -> float:
    """The CPUs Ray counts on this worker's node."""
    here = ray.get_runtime_context().get_node_id()
    return next(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here)


@ray.remote(max_restarts=0, concurrency_groups={HEALTH: 1})
class GraftWorker:
    """Networks ``indices`` of the population; every method is a step the driver schedules."""

    def __init__(
        self,
        flat_config: dict[str, Any],
        indices: list[int],
        data: ImageSet | StreamSet,
        cpus: float,
        fused: bool = False,
    ):
        # Ray resolves the data ObjectRef before __init__: the arrays are shared, not copied.
        torch.set_num_threads(worker_threads(cpus, usable_cores(), node_cpus()))
        config: Config = from_flat(flat_config)
        # A streamed set is decoded in this worker's own share of the CPUs.
        config.data.loader_workers = loader_workers(config.data.loader_workers, cpus)
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        group = FusedTrainer if fused else TrainerGroup
        self.networks = group(config, indices, data, device=device)
        self.fused = fused
        self.config, self.data = config, data
        self._soup: Soup | None = None  # built on first use: most workers never make one

    def info(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {
            "actor_id": context.get_actor_id(),
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "device": str(self.networks.device),
            "threads": torch.get_num_threads(),
            "networks": self.networks.indices,
            "fused": self.fused,
            "step": self.networks.graph_note,
            "layout": self.networks.layout,
            "num_rounds": self.networks.num_rounds,
            "steps_per_round": self.networks.steps_per_round,
        }

    @ray.method(concurrency_group=HEALTH)
    def alive(self) -> int:
        """Answers at once, even in the middle of an interval (the other methods run one at
        a time, in order, in the default group): a dead worker's call fails instead."""
        return os.getpid()

    def train_interval(self) -> list[dict[str, float]]:
        hold_if_asked(self.networks.indices)
        return self.networks.train_interval()

    def snapshots(self) -> list[Snapshot] | Snapshot:
        # Called with num_returns = networks held: one object-store entry per network.
        shots = self.networks.snapshots()
        return shots if len(shots) > 1 else shots[0]

    def snapshot(self, slot: int) -> Snapshot:
        return self.networks.snapshots()[slot]

    def graft_from(
        self, sources: list[Source | ray.ObjectRef], teachers: list | None = None
    ) -> list[list[dict[str, Any]]]:
        """Graft every network from its source; with distillation, first take its teacher
        (the predecessor before its graft), so both read the same pre-graft weights."""

        def fetch(refs):  # refs nested in a list arrive unresolved: read-only numpy arrays
            return [ray.get(s) if isinstance(s, ray.ObjectRef) else s for s in refs]

        if teachers is not None:
            self.networks.set_teachers(fetch(teachers))
        return self.networks.apply_grafts(fetch(sources))

    def unit_states(self) -> list[Snapshot] | Snapshot:
        # Called with num_returns = networks held, as snapshots: one entry per network.
        states = self.networks.unit_states()
        return states if len(states) > 1 else states[0]

    def average_toward(self, average: Any, rate: float, include: list[int]) -> bool:
        """Move every network toward ``average`` (Ray resolves the driver's ref before the
        call; None: the average of this worker's slots ``include``, computed on its device)
        by ``rate``."""
        self.networks.move_toward_average(average, rate, include)
        return True

    def soup(self, average: Any, include: list[int], bn_batches: int) -> dict[str, Any]:
        """The soup of ``average`` (as in :meth:`average_toward`): its BatchNorm statistics
        recomputed on ``bn_batches`` training batches, its test accuracy and loss, and its
        weights (``state``)."""
        if average is None:
            average = self.networks.average(include)
        if self._soup is None:
            self._soup = Soup(self.config, self.data, device=str(self.networks.device))
        return self._soup.evaluate(average, bn_batches)

    def load_weights(self, slot: int, snapshot: Snapshot) -> bool:
        return self.networks.load_weights(slot, snapshot)

    def evaluate(self, with_probabilities: bool = True) -> list[dict[str, Any]]:
        return self.networks.evaluate(with_probabilities)

    def get_state(self) -> list[dict[str, Any]]:
        return self.networks.state_dicts()

    def set_state(self, states: list[dict[str, Any]]) -> int:
        return self.networks.load_state_dicts(states)


def hold_if_asked(networks: list[int]) -> None:
    """A test hook, off unless ``$GRAFTUNE_TEST_HOLD_DIR`` is set: while a file ``net<k>``
    exists in that folder for a network k of this worker, its interval waits before it
    trains (and says so by creating ``net<k>.held``). A test makes one worker's interval as
    long as it needs, or catches a worker in the middle of one, without sleeping."""
    folder = os.environ.get(HOLD_DIR)
    if not folder:
        return
    for k in networks:
        hold = Path(folder) / f"net{k}"
        if hold.exists():
            (Path(folder) / f"net{k}.held").touch()
            while hold.exists():
                time.sleep(0.05)
