"""Asynchronous grafting: no barrier between the networks of a round.

In the synchronous ring every round waits for the slowest network. Here each network
trains, publishes its snapshot and grafts from whatever its ring predecessor published last,
without waiting; until its predecessor has published once, it trains on alone. This is for
populations on unequal hardware. A network may run at most ``max_lead`` rounds ahead of the
slowest, so that its sources stay recent and the states held for checkpoints stay bounded.

Every worker holds one network here (the population never fuses asynchronous runs), so
worker k is network k. Rounds are still reported whole and in order: round r is logged, checkpointed and becomes
the restart point once every network has finished it, with each network's own state at the
end of its round r, so ``--resume`` and worker restarts work as in the synchronous ring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray

from graftune.core.average import population_average
from graftune.core.graft import predecessor
from graftune.population.exchange import add_soup, soup_due, start_soup
from graftune.population.population import WORKER_LOSS, Population, RoundResult
from graftune.population.ring import graft_records, grafts_in_round, restore_donor


@dataclass
class AsyncSchedule:
    """Which network may start which round, and which rounds are complete: no Ray in here."""

    size: int
    first_round: int
    last_round: int
    max_lead: int = 2
    published: list[int] = field(default_factory=list)  # round of each latest snapshot; 0 none
    oldest_open: int = 0  # the first round that some network has not finished
    finished: dict[int, set[int]] = field(default_factory=dict)
    held: list[tuple[int, int]] = field(default_factory=list)  # (network, round) too far ahead

    def __post_init__(self) -> None:
        self.published = [0] * self.size
        self.oldest_open = self.first_round

    @property
    def done(self) -> bool:
        return self.oldest_open > self.last_round

    def source(self, network: int) -> int | None:
        """The ring predecessor, if it has published a snapshot to graft from."""
        source = predecessor(network, self.size)
        return source if self.published[source] else None

    def publish(self, network: int, round_index: int) -> None:
        self.published[network] = round_index

    def finish(self, network: int, round_index: int) -> None:
        """``network`` is done with ``round_index``; its next round waits in ``held``."""
        self.finished.setdefault(round_index, set()).add(network)
        if round_index < self.last_round:
            self.held.append((network, round_index + 1))

    def complete_rounds(self) -> list[int]:
        """Rounds that every network has now finished, oldest first (each returned once)."""
        complete = []
        while len(self.finished.get(self.oldest_open, ())) == self.size:
            del self.finished[self.oldest_open]
            complete.append(self.oldest_open)
            self.oldest_open += 1
        return complete

    def startable(self) -> list[tuple[int, int]]:
        """Held (network, round) pairs that are now within ``max_lead`` of the slowest."""
        ready = [(k, r) for k, r in self.held if r <= self.oldest_open + self.max_lead]
        self.held = [pair for pair in self.held if pair not in ready]
        return ready


def run_async(
    population: Population,
    first_round: int = 1,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Rounds ``first_round``..num_rounds without a barrier. A dead worker is replaced, all
    networks go back to the states of the last reported round, and they go on from there."""
    results = []
    while first_round <= population.num_rounds:
        try:
            for result in _rounds(population, first_round):
                results.append(result)
                first_round = result.round + 1
                if on_round is not None:
                    on_round(result)
        except WORKER_LOSS as error:
            population.recover(error, first_round)
    return results


@dataclass(frozen=True)
class Interval:
    """A network's interval in flight: its round and the ref of what training reports."""

    network: int
    round: int
    train: ray.ObjectRef


@dataclass
class NetworkRound:
    """One network's finished interval: what training reported, and the refs of what its
    worker does next, in this order: evaluate, graft (if it grafts), evaluate again (with
    --eval-after-graft), and hand over its state, the restart point once the round is whole."""

    train: dict[str, Any]
    evaluation: ray.ObjectRef
    state: ray.ObjectRef
    graft: ray.ObjectRef | None = None
    grafted: ray.ObjectRef | None = None
    events: list[str] = field(default_factory=list)  # a restore, if it diverged


def _rounds(population: Population, first_round: int) -> Iterator[RoundResult]:
    p, g = population.config.population, population.config.graft
    schedule = AsyncSchedule(population.size, first_round, population.num_rounds, p.max_lead)
    actors = population.actors
    snapshots: list[Any] = [None] * population.size  # each network's latest published one
    in_flight: dict[ray.ObjectRef, Interval] = {}  # keyed by the snapshot taken after it
    rounds: dict[int, dict[int, NetworkRound]] = {}  # round -> network -> its interval

    def start(k: int, round_index: int) -> None:
        train = actors[k].train_interval.remote()
        in_flight[actors[k].snapshot.remote(0)] = Interval(k, round_index, train)

    for k in range(population.size):
        start(k, first_round)
    while not schedule.done:
        [ready], _ = ray.wait(list(in_flight), num_returns=1)
        interval = in_flight.pop(ready)
        k, round_index = interval.network, interval.round
        [train], events = ray.get(interval.train), []
        if train["finite"]:
            snapshots[k] = ready
            schedule.publish(k, round_index)
        else:  # never a source: take the latest weights its predecessors published
            donor = restore_donor(k, population.size, lambda j: snapshots[j] is not None)
            events.append(population.restore(k, donor, snapshots[donor]))
        # Evaluated before the graft: the round's metrics are those of the trained network.
        evaluation = actors[k].evaluate.remote(True)
        graft = grafted = None
        source = schedule.source(k)
        if grafts_in_round(population.config, round_index, population.num_rounds):
            if g.source == "noise" or source is not None:
                distilling = population.config.train.distill_weight > 0 and source is not None
                graft = actors[k].graft_from.remote(
                    [snapshots[source] if g.source == "network" else None],
                    [snapshots[source]] if distilling else None,  # the predecessor, pre-graft
                )
                if g.eval_after_graft:
                    grafted = actors[k].evaluate.remote(False)
        state = actors[k].get_state.remote()
        rounds.setdefault(round_index, {})[k] = NetworkRound(
            train, evaluation, state, graft, grafted, events
        )
        schedule.finish(k, round_index)
        complete = schedule.complete_rounds()  # first: it may let held networks start
        for network, next_round in schedule.startable():
            start(network, next_round)
        for finished_round in complete:  # logged while the next rounds already train
            yield _result(population, finished_round, rounds.pop(finished_round))


def _result(population: Population, round_index: int, done: dict[int, NetworkRound]) -> RoundResult:
    networks = [done[k] for k in range(population.size)]
    evaluations = [e for n in networks for e in ray.get(n.evaluation)]
    records: list[dict[str, Any]] = []
    for k, n in enumerate(networks):
        if n.graft is not None:
            records += graft_records(round_index, k, ray.get(n.graft)[0])
        if n.grafted is not None:
            evaluations[k]["test_acc_grafted"] = ray.get(n.grafted)[0]["test_acc"]
    population.set_restart_point([n.state for n in networks])
    events = population.take_events() + [e for n in networks for e in n.events]
    restored = {k for k, n in enumerate(networks) if n.events}
    result = population.round_result(
        round_index, [n.train for n in networks], evaluations, records, events, restored
    )
    if soup_due(population.config, round_index, population.num_rounds):  # the last round
        include = [k for k in range(population.size) if k not in restored]
        models = [ray.get(networks[k].state)[0]["model"] for k in include]
        soup = start_soup(population, ray.put(population_average(models)), include)
        add_soup(result, ray.get(soup))
    return result
