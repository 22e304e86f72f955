"""The population driver: K worker actors in one placement group, trained and grafted in
synchronous rounds, surviving dead workers and diverged networks without losing a round."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from graftune.config import Config, flatten
from graftune.core import population_summary
from graftune.core.graft import predecessor
from graftune.worker import GraftWorker

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


class Population:
    """K networks as Ray actors. Use :meth:`start`, then :meth:`run_round` per round."""

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
        self.last_good: list[ray.ObjectRef] = []  # states after the last finished round
        self.failures = 0
        self.pending_events: list[str] = []  # reported with the next finished round

    @property
    def size(self) -> int:
        return self.config.population.num_models

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self.resources = worker_resources(self.config, ray.cluster_resources(), largest_node_cpus())
        if self.placement is None:
            bundles = [dict(self.resources) for _ in range(self.size)]
            self.placement = placement_group(bundles, strategy=self.config.population.placement)
            try:
                ray.get(self.placement.ready(), timeout=ready_timeout_s)
            except GetTimeoutError:
                remove_placement_group(self.placement)
                raise RuntimeError(
                    f"the cluster cannot place {self.size} workers of {self.resources} "
                    f"(it has {ray.cluster_resources()}); lower --num-models or set "
                    f"--cpus-per-worker / --gpus-per-worker"
                ) from None
        self.actors = [self._new_actor(k) for k in range(self.size)]
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
        ).remote(flatten(self.config), index, self.data_ref, threads)

    @property
    def num_rounds(self) -> int:
        return self.info[0]["num_rounds"]

    def commit(self) -> None:
        """Remember every network's full state (in the object store) as the last good one."""
        self.last_good = [a.get_state.remote() for a in self.actors]
        ray.wait(self.last_good, num_returns=len(self.last_good))

    def states(self) -> list[dict[str, Any]]:
        return ray.get(self.last_good)

    def load_states(self, states: list[Any]) -> None:
        ray.get([a.set_state.remote(s) for a, s in zip(self.actors, states)])
        self.commit()

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
        train = ray.get([a.train_interval.remote() for a in self.actors])
        restored = self._restore_diverged(train, events)
        evaluations = ray.get([a.evaluate.remote(True) for a in self.actors])
        records: list[dict[str, Any]] = []
        if grafts_in_round(self.config, round_index, self.num_rounds):
            g = self.config.graft
            # All snapshots are requested before any graft, and each actor runs its calls in
            # order, so every graft reads its predecessor's pre-graft weights.
            snapshots = (
                [a.snapshot.remote() for a in self.actors] if g.source == "network" else None
            )
            grafts = [
                a.graft_from.remote(snapshots[predecessor(k, self.size)] if snapshots else None)
                for k, a in enumerate(self.actors)
            ]
            for k, rows in enumerate(ray.get(grafts)):
                records += graft_records(round_index, k, rows)
            if g.eval_after_graft:
                grafted = ray.get([a.evaluate.remote(False) for a in self.actors])
                for evaluation, after in zip(evaluations, grafted):
                    evaluation["test_acc_grafted"] = after["test_acc"]
        return self.round_result(round_index, train, evaluations, records, events, restored)

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
            ray.get(self.actors[k].load_weights.remote(self.actors[donor].snapshot.remote()))
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


def grafts_in_round(config: Config, round_index: int, num_rounds: int) -> bool:
    """Whether round ``round_index`` ends with a graft: from --start-round on, never after
    the last interval (the final networks are trained ones), never for --source none."""
    g = config.graft
    return g.source != "none" and g.start_round <= round_index < num_rounds


def graft_records(round_index: int, network: int, rows: list[dict[str, Any]]) -> list[dict]:
    """One graft's per-unit entropy/alpha rows, labelled with its round and receiver."""
    return [{"round": round_index, "network": network, **row} for row in rows]


def ring_before(k: int, size: int) -> Iterator[int]:
    """The other networks of the ring, nearest predecessor first."""
    return (predecessor(k - i, size) for i in range(size - 1))


def _train_metrics(train: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train.items() if k in ("train_loss", "train_acc", "lr")}


def run_population(
    population: Population,
    first_round: int = 1,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Run rounds ``first_round``..num_rounds, calling ``on_round`` after each."""
    if population.config.population.asynchronous:
        from graftune.async_rounds import run_async  # it builds on this module

        return run_async(population, first_round, on_round)
    results = []
    for round_index in range(first_round, population.num_rounds + 1):
        result = population.run_round(round_index)
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results
