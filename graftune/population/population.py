"""The population driver: K worker actors in one placement group, trained and grafted in
synchronous rounds, surviving dead workers and diverged networks without losing a round."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, ObjectLostError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from graftune.config import Config, flatten
from graftune.core import population_summary
from graftune.population.exchange import add_soup, average_of, exchange, soup_due, start_soup
from graftune.population.liveness import dead_workers, death_line, lost_call_line
from graftune.population.resources import largest_node_cpus, worker_layout
from graftune.population.ring import grafts_in_round, restore_donor, restored_event
from graftune.population.worker import GraftWorker

log = logging.getLogger("graftune")
# What a dead worker or a lost node raises: a call of the worker's, or an object it held.
WORKER_LOSS = (RayActorError, ObjectLostError)


@dataclass
class RoundResult:
    round: int
    networks: list[dict[str, Any]]  # per network: losses, accuracies, lr, invalid counts
    population: dict[str, float]  # mean, best and ensemble test accuracy
    records: list[dict[str, Any]] = field(default_factory=list)  # entropy/alpha per unit
    events: list[str] = field(default_factory=list)  # restarts and restorations, as text
    skipped_images: int = 0  # a streamed set's images that failed to decode, so far
    soup: dict[str, Any] | None = None  # the soup's weights, in a round that made one

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
        self._restart_point: list[ray.ObjectRef] = []  # per actor: states after the last round
        self.failures = 0
        self._events: list[str] = []  # restarts, reported with the next finished round
        self.health_timeout_s = 60.0  # for dead workers' alive calls to fail, after a death

    @property
    def size(self) -> int:
        return self.config.population.num_models

    def start(self, ready_timeout_s: float = 120.0) -> None:
        num_workers = None
        if self.placement is not None:
            num_workers = len(self.placement.bundle_specs) - self.bundle_offset
        layout = worker_layout(
            self.config, ray.cluster_resources(), largest_node_cpus(), num_workers
        )
        self.layout = layout
        self.groups, self.resources, self.fused = layout.groups, layout.resources, layout.fused
        self.fuse_note = layout.note
        if self.fuse_note:
            log.warning(self.fuse_note)
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
        cpus = self.resources["CPU"]
        return GraftWorker.options(
            num_cpus=cpus,
            num_gpus=self.resources.get("GPU", 0),
            scheduling_strategy=strategy,
        ).remote(flatten(self.config), self.groups[index], self.data_ref, cpus, self.fused)

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
        """Remember every network's full state now as the restart point."""
        self.set_restart_point([a.get_state.remote() for a in self.actors])

    def set_restart_point(self, states: list[ray.ObjectRef]) -> None:
        """Remember ``states`` (per actor, as ``get_state`` returns them) as the states that
        a restart goes back to: those after the last finished round."""
        ray.wait(states, num_returns=len(states))
        driver_node = ray.get_runtime_context().get_node_id()
        if any(info["node_id"] != driver_node for info in self.info):
            # They live in the object stores of their workers' nodes, and a lost node would
            # take them with it (ray.wait leaves a copy here too, but one that the store
            # may evict): keep a copy that the driver owns, in the driver's node.
            states = [ray.put(s) for s in ray.get(states)]
        self._restart_point = states

    def take_events(self) -> list[str]:
        """The events since the last finished round (restarts), each returned once."""
        events, self._events = self._events, []
        return events

    def states(self) -> list[dict[str, Any]]:
        """Every network's state, in network order."""
        return self.per_network(self._restart_point)

    def load_states(self, states: list[Any]) -> None:
        ray.get(
            [a.set_state.remote([states[k] for k in g]) for a, g in zip(self.actors, self.groups)]
        )
        self.commit()

    def snapshot_refs(self, method: str = "snapshots") -> list[ray.ObjectRef]:
        """One object-store entry per network's graft snapshot (or, with ``unit_states``,
        all its floating-point tensors), in network order."""
        refs = []
        for actor, group in zip(self.actors, self.groups):
            out = getattr(actor, method).options(num_returns=len(group)).remote()
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
            except WORKER_LOSS as error:
                self.recover(error, round_index)

    def recover(self, error: RayActorError | ObjectLostError, round_index: int) -> None:
        """Replace the workers that Ray reports dead and put every network back to the
        restart point, so that ``round_index`` can be run again; give up after
        --max-failures failures. A worker that is busy training is never taken for dead.
        A call that Ray lost (``ActorUnavailableError``) while every worker still answers
        redoes the round with the same workers: the call may or may not have run."""
        while True:
            dead, unreached = dead_workers(self.actors, self.info, error, self.health_timeout_s)
            lost_call = isinstance(error, ActorUnavailableError) and not unreached
            if not dead and not lost_call:
                raise error  # Ray gave no word of a death within the wait: not ours to guess
            self.failures += max(1, len(dead))
            if self.failures > self.config.population.max_failures:
                raise RuntimeError(
                    f"{self.failures} worker failures, more than --max-failures "
                    f"{self.config.population.max_failures}"
                ) from error
            lost_nodes = {n["NodeID"] for n in ray.nodes() if not n["Alive"]} if dead else ()
            events = [death_line(a, self.info[a], round_index, lost_nodes) for a in dead]
            for a in dead:
                self._replace(a)
            for event in events or [lost_call_line(error, self.info, round_index)]:
                log.warning(event)
                self._events.append(event)
            try:  # waits for the healthy workers to finish what they were doing
                restart = zip(self.actors, self._restart_point)
                ray.get([actor.set_state.remote(states) for actor, states in restart])
                return
            except WORKER_LOSS as again:  # another one died meanwhile
                error = again

    def _replace(self, a: int) -> None:
        """A new worker in dead worker ``a``'s bundle, holding the same networks."""
        ray.kill(self.actors[a], no_restart=True)
        self.actors[a] = self._new_actor(a)
        self.info[a] = ray.get(self.actors[a].info.remote())

    def _round(self, round_index: int) -> RoundResult:
        """Train, evaluate the trained networks (the round's metrics; with the soup, theirs
        too), then exchange, except after the last interval: what is reported and kept is
        always a trained network."""
        events = self.take_events()
        train = self.per_network([a.train_interval.remote() for a in self.actors])
        restored = self._restore_diverged(train, events)
        evaluations = self.per_network([a.evaluate.remote(True) for a in self.actors])
        include = [k for k in range(self.size) if k not in restored]
        exchanging = grafts_in_round(self.config, round_index, self.num_rounds)
        souping = soup_due(self.config, round_index, self.num_rounds)
        averaging = exchanging and self.config.graft.source == "average"
        # One average of the trained networks serves both, read before any exchange.
        average = average_of(self, include) if souping or averaging else None
        soup = start_soup(self, average, include) if souping else None
        records: list[dict[str, Any]] = []
        if exchanging:
            records = exchange(self, round_index, evaluations, average, include)
        result = self.round_result(round_index, train, evaluations, records, events, restored)
        if soup is not None:
            add_soup(result, ray.get(soup))
        return result

    def round_result(self, round_index, train, evaluations, records, events, restored):
        """Per-network metrics and the population's mean, best and ensemble accuracy."""
        probabilities = [e.pop("probabilities") for e in evaluations]
        # Each worker counts the damaged images it met; every worker reads every image once
        # an epoch, so the most any worker met is the population's count.
        skipped = max(int(e.pop("skipped_images", 0)) for e in evaluations)
        networks = [
            {**_train_metrics(t), **e, "restored": int(k in restored)}
            for k, (t, e) in enumerate(zip(train, evaluations))
        ]
        summary = population_summary(
            [n["test_acc"] for n in networks], probabilities, self.test_labels
        )
        return RoundResult(round_index, networks, summary, records, events, skipped)

    def _restore_diverged(self, train: list[dict[str, Any]], events: list[str]) -> set[int]:
        """Replace each network whose loss or weights are not finite by a copy of its nearest
        finite predecessor, before any snapshot is taken: it is never a graft source."""
        bad = {k for k, t in enumerate(train) if not t["finite"]}
        for k in sorted(bad):
            donor = restore_donor(k, self.size, lambda j: j not in bad)
            donor_actor, donor_slot = self.actor_of(donor)
            events.append(self.restore(k, donor, donor_actor.snapshot.remote(donor_slot)))
        return bad

    def restore(self, k: int, donor: int, snapshot: ray.ObjectRef) -> str:
        """Network ``k`` takes ``donor``'s weights (its snapshot in the object store) and
        drops its momentum; returns the event, which is logged here, once."""
        actor, slot = self.actor_of(k)
        ray.get(actor.load_weights.remote(slot, snapshot))
        event = restored_event(k, donor)
        log.warning(event)
        return event

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.owns_placement and self.placement is not None:
            remove_placement_group(self.placement)
            self.placement = None


def _train_metrics(train: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_loss", "train_acc", "lr", "distill_loss")
    return {k: v for k, v in train.items() if k in keys}
