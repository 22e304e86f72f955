"""Which workers are dead, by Ray's own word, and what the user is told about them.

A worker is dead when Ray says so: the ``ActorDiedError`` that a call of its own raised, or
its ``alive`` method, which runs in a concurrency group of its own and so answers at once
even while the worker trains, failing with ``ActorDiedError``. Nothing here waits behind an
interval, and a worker that does not answer in time is never called dead: if it really
is, the round that is redone runs into its death and names it then.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError


def dead_workers(
    actors: list[Any], info: list[dict[str, Any]], error: RayActorError, timeout_s: float
) -> list[int]:
    """Indices of the workers Ray reports dead.

    Args:
        actors: the worker actors.
        info: each worker's ``info()``, for its actor id.
        error: what the round raised; it names the dead actor when it is a death of one of
            our own calls (not one wrapped in another worker's task error).
        timeout_s: how long to wait for the ``alive`` answers; a worker that neither
            answers nor is reported dead within it counts as alive.
    """
    dead = set()
    if isinstance(error, ActorDiedError) and not isinstance(error, RayTaskError):
        dead |= {a for a, i in enumerate(info) if i["actor_id"] == error.actor_id}
    answers = [actor.alive.remote() for actor in actors]
    ray.wait(answers, num_returns=len(answers), timeout=timeout_s)
    for a, answer in enumerate(answers):
        try:
            ray.get(answer, timeout=0)
        except ActorDiedError:
            dead.add(a)
        except (GetTimeoutError, RayActorError):  # no answer yet, or briefly unreachable
            pass
    return sorted(dead)


def death_line(worker: int, info: dict[str, Any], round_index: int) -> str:
    """One line: which worker died, with which networks and where, and what happens next."""
    networks = ", ".join(str(k) for k in info["networks"])
    since = f"the states after round {round_index - 1}" if round_index > 1 else "the start"
    return (
        f"worker {worker} died (network{'s' * (len(info['networks']) > 1)} {networks}, "
        f"pid {info['pid']}, node {info['node_id'][:8]} at {info['node_ip']}); a new worker "
        f"takes its place and round {round_index} starts again from {since}"
    )
