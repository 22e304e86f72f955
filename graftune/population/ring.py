"""The ring's rules, each written once for the synchronous and the asynchronous rounds:
which networks come before a network, whether a round ends with a graft, which network
restores a diverged one (and what the user is told), and the records a graft leaves.

No Ray in here. The index arithmetic of the ring (network k grafts from k - 1, the first
from the last) is :func:`graftune.core.graft.predecessor`, which the pure core uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from graftune.config import Config
from graftune.core.graft import predecessor


def ring_before(k: int, size: int) -> Iterator[int]:
    """The other networks of the ring, nearest predecessor first."""
    return (predecessor(k - i, size) for i in range(size - 1))


def grafts_in_round(config: Config, round_index: int, num_rounds: int) -> bool:
    """Whether round ``round_index`` ends with an exchange along the ring (a graft, and with
    distillation new teachers): from --start-round on, never after the last interval (the
    final networks are trained ones), never for --source none without distillation."""
    exchanges = config.graft.source != "none" or config.train.distill_weight > 0
    return exchanges and config.graft.start_round <= round_index < num_rounds


def restore_donor(k: int, size: int, finite: Callable[[int], bool]) -> int:
    """The network whose weights replace those of diverged network ``k``: its nearest
    predecessor whose weights are finite. ``k`` itself is never asked, so a diverged
    network is never a graft source, not even for itself.

    Raises:
        RuntimeError: when no other network has finite weights to give.
    """
    donor = next((j for j in ring_before(k, size) if finite(j)), None)
    if donor is None:
        raise RuntimeError(
            f"network {k} diverged (non-finite loss) and no other network has finite "
            "weights to restore it from; lower --lr"
        )
    return donor


def restored_event(k: int, donor: int) -> str:
    """What the run says when network ``k`` took ``donor``'s weights."""
    return f"network {k} diverged; restored from network {donor}"


def graft_records(round_index: int, network: int, rows: list[dict[str, Any]]) -> list[dict]:
    """One graft's per-unit entropy/alpha rows, labelled with its round and receiver."""
    return [{"round": round_index, "network": network, **row} for row in rows]
