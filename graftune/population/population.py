"""The population driver: K worker actors in one placement group, trained and grafted in
synchronous rounds, surviving dead workers and diverged networks without losing a round."""

from __future__ import annotations

import logging
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
from graftune.population.resources import largest_node_cpus, worker_layout, worker_resources
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
            snapshots = self.snapshot_refs() if self.config.graft.source == "network" else None
            grafts = []
            for actor, group in zip(self.actors, self.groups):
                sources = [self._source(k, group, snapshots) for k in group]
                grafts.append(actor.graft_from.remote(sources))
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
