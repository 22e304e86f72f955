"""What the networks of a synchronous round exchange once they are trained and evaluated:
a graft from the ring predecessor (``--source network``, noise or none, with distillation's
teachers), or a step toward the population's average weights (``--source average``, PAPA);
and the soup, the average evaluated as one network.

The average is of every network that did not diverge this round (a restored network holds
its donor's copy, which would count the donor twice), as grafting never takes a diverged
network as its source. It travels through the object store: the driver gathers the K
snapshots, averages them and puts the average once for every worker. A worker that holds the
whole population averages on its device instead, and nothing leaves it.
"""

from __future__ import annotations

from typing import Any

import ray

from graftune.config import Config
from graftune.core.average import population_average
from graftune.core.graft import predecessor
from graftune.core.snapshot import pack
from graftune.population.ring import graft_records

# ``population`` below is the driver's :class:`~graftune.population.population.Population`,
# which calls these functions (so this module does not import it back).
Population = Any


def soup_due(config: Config, round_index: int, num_rounds: int) -> bool:
    """Whether round ``round_index`` ends with the soup evaluated: every round with
    ``--soup every_round``, the last with ``end``."""
    soup = config.population.soup
    return soup == "every_round" or (soup == "end" and round_index == num_rounds)


def average_of(population: Population, include: list[int]) -> ray.ObjectRef | None:
    """The average of networks ``include``, in the object store; None when one worker holds
    every network (it averages them on its device, from the slots :func:`slots_of` gives).
    The snapshots are requested now, so they are the states before any later call."""
    if len(population.actors) == 1:
        return None
    refs = population.snapshot_refs("unit_states")
    average = population_average(ray.get([refs[k] for k in include]))
    return ray.put(pack(average, list(average)))


def slots_of(population: Population, include: list[int]) -> list[int]:
    """Networks ``include`` as slots of the first worker (where it holds them all)."""
    group = population.groups[0]
    return [group.index(k) for k in include if k in group]


def start_soup(population: Population, average: Any, include: list[int]) -> ray.ObjectRef:
    """The soup of ``average``, made and evaluated by the first worker (queued now: a worker
    that averages on its device reads its networks before any later exchange)."""
    bn_batches = population.config.population.soup_bn_batches
    slots = slots_of(population, include)
    return population.actors[0].soup.remote(average, slots, bn_batches)


def add_soup(result, soup: dict[str, Any]) -> None:
    """The soup's metrics join the round's population metrics; its weights ride along."""
    result.population["soup_test_acc"] = soup["test_acc"]
    result.population["soup_test_loss"] = soup["test_loss"]
    result.soup = soup["state"]


def exchange(
    population: Population,
    round_index: int,
    evaluations: list[dict[str, Any]],
    average: Any,
    include: list[int],
) -> list[dict[str, Any]]:
    """The round's exchange, chosen by ``--source``; returns the graft records (none for
    the average). With --eval-after-graft, the exchanged networks are evaluated too."""
    config = population.config
    averaging = config.graft.source == "average"
    records = []
    if not averaging or config.train.distill_weight > 0:  # the teachers, read first
        records = graft_exchange(population, round_index)
    if averaging:
        rate = config.graft.average_rate
        slots = slots_of(population, include)
        ray.get([a.average_toward.remote(average, rate, slots) for a in population.actors])
    if config.graft.eval_after_graft:
        after = population.per_network([a.evaluate.remote(False) for a in population.actors])
        for evaluation, exchanged in zip(evaluations, after):
            evaluation["test_acc_grafted"] = exchanged["test_acc"]
    return records


def graft_exchange(population: Population, round_index: int) -> list[dict[str, Any]]:
    """Graft every network from its source (with distillation, take its teacher too);
    returns the graft records. With --source average only the teachers are taken.

    Every snapshot is requested before any graft, and each actor runs its calls in order,
    so every graft reads its predecessor's pre-graft weights; a predecessor on the same
    actor is read there, on the device, before any of its grafts."""
    config = population.config
    grafting = config.graft.source == "network"
    distilling = config.train.distill_weight > 0
    snapshots = population.snapshot_refs() if grafting or distilling else None
    grafts = []
    for actor, group in zip(population.actors, population.groups):
        sources = [_source(population, k, group, snapshots) for k in group]
        teachers = sources if distilling else None  # the predecessor, pre-graft
        if not grafting:
            sources = [None] * len(group)
        grafts.append(actor.graft_from.remote(sources, teachers))
    records: list[dict[str, Any]] = []
    for k, rows in enumerate(population.per_network(grafts)):
        records += graft_records(round_index, k, rows)
    return records


def _source(population: Population, k: int, group: list[int], snapshots: list | None):
    """Network k's graft source: its predecessor's slot when the same actor holds it,
    else the predecessor's snapshot in the object store; None for noise."""
    if snapshots is None:
        return None
    source = predecessor(k, population.size)
    return group.index(source) if source in group else snapshots[source]
