"""Which workers are dead, by Ray's own word, and what the user is told about them.

A worker is dead when Ray says so: the ``ActorDiedError`` that a call of its own raised, or
its ``alive`` method, which runs in a concurrency group of its own and so answers at once
even while the worker trains, failing with ``ActorDiedError``. Nothing here waits behind an
interval, and a worker that Ray has no word on is never called dead: if it really is, the
round that is redone runs into its death and names it then.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayTaskError,
)

POLL_S = 0.5  # between questions to a worker Ray cannot reach yet


def dead_workers(
    actors: list[Any], info: list[dict[str, Any]], error: Exception, timeout_s: float
) -> tuple[list[int], list[int]]:
    """Indices of the workers Ray reports dead, and of those it gave no word on in time.

    A worker that answers ``alive`` is alive. One that Ray calls unavailable (its node
    stopped answering, which Ray takes a while to declare lost) is asked again until Ray
    says dead or alive, or until ``timeout_s``; once some worker is known dead, those
    still unknown count as alive, and the redone round names them if they are dead too.

    Args:
        actors: the worker actors.
        info: each worker's ``info()``, for its actor id.
        error: what the round raised; it names the dead actor when it is a death of one of
            our own calls (not one wrapped in another worker's task error).
        timeout_s: how long to wait for Ray's word on every worker.
    """
    dead = set()
    if isinstance(error, ActorDiedError) and not isinstance(error, RayTaskError):
        dead |= {a for a, i in enumerate(info) if i["actor_id"] == error.actor_id}
    unknown = set(range(len(actors))) - dead
    deadline = time.monotonic() + timeout_s
    while unknown:
        answers = {a: actors[a].alive.remote() for a in unknown}
        wait_s = max(0.0, deadline - time.monotonic())
        ray.wait(list(answers.values()), num_returns=len(answers), timeout=wait_s)
        for a, answer in answers.items():
            try:
                ray.get(answer, timeout=0)
                unknown.discard(a)
            except ActorDiedError:
                dead.add(a)
                unknown.discard(a)
            except (GetTimeoutError, ActorUnavailableError):  # no word from Ray yet
                pass
        if dead or time.monotonic() >= deadline:
            break
        if unknown:
            time.sleep(POLL_S)  # an unavailable worker answers at once: do not spin
    return sorted(dead), sorted(unknown)


def restart_point(round_index: int) -> str:
    """Where a redone round starts from, in words."""
    return f"the states after round {round_index - 1}" if round_index > 1 else "the start"


def lost_call_line(error: Exception, info: list[dict[str, Any]], round_index: int) -> str:
    """One line for a call that Ray lost while its worker lived on (a connection that
    stalled, then came back), and what happens next."""
    workers = [a for a, i in enumerate(info) if i["actor_id"] == getattr(error, "actor_id", None)]
    who = f"worker {workers[0]}" if workers else "a worker"
    since = restart_point(round_index)
    return (
        f"{who} did not answer for a while (Ray lost the call) but every worker answers "
        f"again; round {round_index} starts again from {since}"
    )


def death_line(
    worker: int, info: dict[str, Any], round_index: int, lost_nodes: Collection[str] = ()
) -> str:
    """One line: which worker died, with which networks and where (and whether its node
    was lost with it), and what happens next."""
    networks = ", ".join(str(k) for k in info["networks"])
    since = restart_point(round_index)
    node = f"node {info['node_id'][:8]} at {info['node_ip']}"
    if info["node_id"] in lost_nodes:
        node += ", which was lost"
    return (
        f"worker {worker} died (network{'s' * (len(info['networks']) > 1)} {networks}, "
        f"pid {info['pid']}, {node}); a new worker takes its place and round {round_index} "
        f"starts again from {since}"
    )
