"""The population driver: K worker actors in one placement group, trained and grafted in
synchronous rounds, surviving dead workers and diverged networks without losing a round."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from graftune.config import Config, flatten
from graftune.core import population_summary
from graftune.core.graft import predecessor
from graftune.population.ring import grafts_in_round
from graftune.population.worker import GraftWorker
from graftune.training.fused import fusable

log = logging.getLogger("graftune")


@dataclass
class RoundResult:
    round: int
    networks: list[dict[str, Any]]  # per network: losses, accuracies, lr, invalid counts
    population: dict[str, float]  # mean, best and ensemble test accuracy
    records: list[dict[str, Any]] = field(default_factory=list)  # entropy/alpha per unit
    events: list[str] = field(default_factory=list)  # restarts and restorations, as text
    run_id: str = ""  # set by the experiment: the MLflow run this round was logged to
    checkpoint: str = ""  # set by the experiment: the checkpoint written after this round

    def as_history(self) -> dict[str, Any]:
        return {"round": self.round, "networks": self.networks, "population": self.population}


def worker_resources(
    config: Config, cluster: dict[str, float], largest_node_cpus: float | None = None
) -> dict[str, float]:
    """CPUs and GPUs of one worker.

    A GPU each when the cluster has K of them, else an even share of its GPUs, with at most
    one CPU (data and augmentation live on the GPU). Without GPUs, an even share of the
    cluster's CPUs, fractions allowed so K may exceed the core count, and never more than
    the largest node holds, so that every worker fits on some node of a cluster with
    unequal nodes.
    """
    p = config.population
    gpus = p.gpus_per_worker
    if gpus < 0:
        gpus = gpu_share(cluster.get("GPU", 0), p.num_models)
    share = cluster.get("CPU", 1) / p.num_models
    if largest_node_cpus:
        share = min(share, largest_node_cpus)
    share = max(0.01, int(share * 100) / 100)
    cpus = p.cpus_per_worker or (min(1.0, share) if gpus else share)
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def gpu_share(num_gpus: float, num_models: int) -> float:
    """A whole GPU each when there are K; else 1/n of one, with n workers on every GPU, so
    that the fractions fit whole GPUs (3 workers on 2 GPUs get 0.5 each, not 0.67)."""
    whole = int(num_gpus)
    if whole >= num_models:
        return 1.0
    if whole == 0:
        return 0.0
    per_gpu = math.ceil(num_models / whole)
    return math.floor(10_000 / per_gpu) / 10_000  # Ray takes GPU fractions to 4 decimals


def largest_node_cpus() -> float:
    """The most CPUs any alive node of the connected cluster has."""
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)


def worker_layout(
    config: Config, cluster: dict[str, float], largest_node_cpus: float | None = None,
    num_workers: int | None = None,
) -> tuple[list[list[int]], dict[str, float], bool]:  # fmt: skip
    """Which networks each worker holds, one worker's resources, and whether it fuses.

    Fused (``--fuse on``, or ``auto`` with GPUs): one worker per GPU, up to K, holding an
    even, contiguous share of the networks (K = 8 on 2 GPUs: two workers of four), or one
    worker for all of them on CPUs. Unfused: one worker per network, as before.
    ``num_workers`` fixes the count (a Tune trial's placement group already has it).
    """
    k, gpus = config.population.num_models, int(cluster.get("GPU", 0))
    fuse = config.population.fuse
    unfusable = (
        config.population.asynchronous
        or config.model.compile
        or config.graft.bn_recalibrate_batches > 0
    )
    if fuse == "off" or (fuse == "auto" and not gpus) or unfusable:
        return [[i] for i in range(k)], worker_resources(config, cluster, largest_node_cpus), False
    count = num_workers or (min(gpus, k) if gpus else 1)
    groups = [list(range(k))[w * k // count : (w + 1) * k // count] for w in range(count)]
    cpus = cluster.get("CPU", 1) / count
    if largest_node_cpus:
        cpus = min(cpus, largest_node_cpus)
    cpus = config.population.cpus_per_worker or max(0.01, int(cpus * 100) / 100)
    if gpus:
        return groups, {"CPU": min(1.0, cpus), "GPU": 1.0}, True
    return groups, {"CPU": cpus}, True


class Population:
    """K networks on Ray actors. Use :meth:`start`, then :meth:`run_round` per round."""

    def __init__(
        self,
        config: Config,
        data_ref: ray.ObjectRef,
        test_labels: Any,
        placement: PlacementGroup | None = None,
        bundle_offset: int = 0,
    ):
        self.config, self.data_ref, self.test_labels = config, data_ref, test_labels
        self.placement, self.bundle_offset = placement, bundle_offset
        self.owns_placement = placement is None
        self.actors: list[Any] = []
        self.groups: list[list[int]] = []  # the networks of each actor, in ring order
        self.last_good: list[ray.ObjectRef] = []  # per actor: states after the last round
        self.failures = 0
        self.pending_events: list[str] = []  # reported with the next finished round

    @property
    def size(self) -> int:
        return self.config.population.num_models

    def start(self, ready_timeout_s: float = 120.0) -> None:
        num_workers = None
        if self.placement is not None:
            num_workers = len(self.placement.bundle_specs) - self.bundle_offset
        self.groups, self.resources, self.fused = worker_layout(
            self.config, ray.cluster_resources(), largest_node_cpus(), num_workers
        )
        self.fuse_note = ""
        if self.fused and (why := fusable(self.config.model.model)):
            self.fuse_note = (
                f"{self.config.model.model} cannot be fused ({why}); one network per worker"
            )
            log.warning(self.fuse_note)
            self.groups = [[k] for k in range(self.size)]
            self.resources, self.fused = (
                worker_resources(self.config, ray.cluster_resources()),
                False,
            )
        if self.placement is None:
            bundles = [dict(self.resources) for _ in self.groups]
            self.placement = placement_group(bundles, strategy=self.config.population.placement)
            try:
                ray.get(self.placement.ready(), timeout=ready_timeout_s)
            except GetTimeoutError:
                remove_placement_group(self.placement)
                raise RuntimeError(
                    f"the cluster cannot place {len(self.groups)} workers of {self.resources} "
                    f"(it has {ray.cluster_resources()}); lower --num-models or set "
                    f"--cpus-per-worker / --gpus-per-worker"
                ) from None
        self.where = [(a, s) for a, group in enumerate(self.groups) for s in range(len(group))]
        self.actors = [self._new_actor(a) for a in range(len(self.groups))]
        self.info = ray.get([a.info.remote() for a in self.actors])
        self.commit()

    def _new_actor(self, index: int):
        strategy = PlacementGroupSchedulingStrategy(
            self.placement, placement_group_bundle_index=self.bundle_offset + index
        )
        threads = max(1, int(self.resources["CPU"]))
        return GraftWorker.options(
            num_cpus=self.resources["CPU"],
            num_gpus=self.resources.get("GPU", 0),
            scheduling_strategy=strategy,
        ).remote(flatten(self.config), self.groups[index], self.data_ref, threads, self.fused)

    @property
    def num_rounds(self) -> int:
        return self.info[0]["num_rounds"]

    def actor_of(self, k: int) -> tuple[Any, int]:
        """The actor that holds network k, and k's slot in it."""
        a, slot = self.where[k]
        return self.actors[a], slot

    def per_network(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """Per-actor lists of results, flattened into network order."""
        return [item for items in ray.get(refs) for item in items]

    def commit(self) -> None:
        """Remember every network's full state (in the object store) as the last good one."""
        self.last_good = [a.get_state.remote() for a in self.actors]
        ray.wait(self.last_good, num_returns=len(self.last_good))

    def states(self) -> list[dict[str, Any]]:
        """Every network's state, in network order."""
        return self.per_network(self.last_good)

    def load_states(self, states: list[Any]) -> None:
        ray.get(
            [a.set_state.remote([states[k] for k in g]) for a, g in zip(self.actors, self.groups)]
        )
        self.commit()

    def snapshot_refs(self) -> list[ray.ObjectRef]:
        """One object-store entry per network's graft snapshot, in network order."""
        refs = []
        for actor, group in zip(self.actors, self.groups):
            out = actor.snapshots.options(num_returns=len(group)).remote()
            refs += out if len(group) > 1 else [out]
        return refs

    def run_round(self, round_index: int) -> RoundResult:
        """One round; a dead worker is replaced, all networks go back to the last good
        states and the round is redone, so the population always has K networks."""
        while True:
            try:
                result = self._round(round_index)
                self.commit()
                return result
            except RayActorError as error:
                self.recover(error, round_index)

    def recover(self, error: RayActorError, round_index: int) -> None:
        """Replace the dead workers and put every network back to the last good states, so
        that ``round_index`` can be run again; give up after --max-failures deaths."""
        self.failures += 1
        if self.failures > self.config.population.max_failures:
            raise RuntimeError(
                f"{self.failures} worker failures, more than --max-failures "
                f"{self.config.population.max_failures}"
            ) from error
        replaced = self._replace_dead_actors()
        log.warning("round %d: workers %s died; redoing the round", round_index, replaced)
        ray.get([a.set_state.remote(s) for a, s in zip(self.actors, self.last_good)])
        self.pending_events = [f"worker {k} died and was restarted" for k in replaced]

    def _replace_dead_actors(self) -> list[int]:
        dead = []
        for k, actor in enumerate(self.actors):
            try:
                ray.get(actor.info.remote(), timeout=60)
            except (RayActorError, GetTimeoutError):
                ray.kill(actor, no_restart=True)
                self.actors[k] = self._new_actor(k)
                dead.append(k)
        return dead

    def _round(self, round_index: int) -> RoundResult:
        """Train, evaluate the trained networks (the round's metrics), then graft, except
        after the last interval: what is reported and kept is always a trained network."""
        events, self.pending_events = self.pending_events, []
        train = self.per_network([a.train_interval.remote() for a in self.actors])
        restored = self._restore_diverged(train, events)
        evaluations = self.per_network([a.evaluate.remote(True) for a in self.actors])
        records: list[dict[str, Any]] = []
        if grafts_in_round(self.config, round_index, self.num_rounds):
            # Every snapshot is requested before any graft, and each actor runs its calls in
            # order, so every graft reads its predecessor's pre-graft weights; a predecessor
            # on the same actor is read there, on the device, before any of its grafts.
            grafting = self.config.graft.source == "network"
            distilling = self.config.train.distill_weight > 0
            snapshots = self.snapshot_refs() if grafting or distilling else None
            grafts = []
            for actor, group in zip(self.actors, self.groups):
                sources = [self._source(k, group, snapshots) for k in group]
                teachers = sources if distilling else None  # the predecessor, pre-graft
                if not grafting:
                    sources = [None] * len(group)
                grafts.append(actor.graft_from.remote(sources, teachers))
            for k, rows in enumerate(self.per_network(grafts)):
                records += graft_records(round_index, k, rows)
            if self.config.graft.eval_after_graft:
                grafted = self.per_network([a.evaluate.remote(False) for a in self.actors])
                for evaluation, after in zip(evaluations, grafted):
                    evaluation["test_acc_grafted"] = after["test_acc"]
        return self.round_result(round_index, train, evaluations, records, events, restored)

    def _source(self, k: int, group: list[int], snapshots: list | None):
        """Network k's graft source: its predecessor's slot when the same actor holds it,
        else the predecessor's snapshot in the object store; None for noise."""
        if snapshots is None:
            return None
        source = predecessor(k, self.size)
        return group.index(source) if source in group else snapshots[source]

    def round_result(self, round_index, train, evaluations, records, events, restored):
        """Per-network metrics and the population's mean, best and ensemble accuracy."""
        probabilities = [e.pop("probabilities") for e in evaluations]
        networks = [
            {**_train_metrics(t), **e, "restored": int(k in restored)}
            for k, (t, e) in enumerate(zip(train, evaluations))
        ]
        summary = population_summary(
            [n["test_acc"] for n in networks], probabilities, self.test_labels
        )
        return RoundResult(round_index, networks, summary, records, events)

    def _restore_diverged(self, train: list[dict[str, Any]], events: list[str]) -> set[int]:
        """Replace each network whose loss or weights are not finite by a copy of its nearest
        finite predecessor, before any snapshot is taken: it is never a graft source."""
        bad = {k for k, t in enumerate(train) if not t["finite"]}
        if not bad:
            return bad
        if len(bad) == self.size:
            raise RuntimeError("every network diverged (non-finite loss); lower --lr")
        for k in sorted(bad):
            donor = next(j for j in ring_before(k, self.size) if j not in bad)
            (actor, slot), (donor_actor, donor_slot) = self.actor_of(k), self.actor_of(donor)
            ray.get(actor.load_weights.remote(slot, donor_actor.snapshot.remote(donor_slot)))
            events.append(f"network {k} diverged; restored from network {donor}")
            log.warning(events[-1])
        return bad

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.owns_placement and self.placement is not None:
            remove_placement_group(self.placement)
            self.placement = None


def graft_records(round_index: int, network: int, rows: list[dict[str, Any]]) -> list[dict]:
    """One graft's per-unit entropy/alpha rows, labelled with its round and receiver."""
    return [{"round": round_index, "network": network, **row} for row in rows]


def ring_before(k: int, size: int) -> Iterator[int]:
    """The other networks of the ring, nearest predecessor first."""
    return (predecessor(k - i, size) for i in range(size - 1))


def _train_metrics(train: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_loss", "train_acc", "lr", "distill_loss")
    return {k: v for k, v in train.items() if k in keys}
