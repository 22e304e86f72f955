"""The ring's rules that need no Ray, so Ray-free drivers (benchmarks/fused_accuracy.py)
follow the same rounds as the population."""

from __future__ import annotations

from graftune.config import Config


def grafts_in_round(config: Config, round_index: int, num_rounds: int) -> bool:
    """Whether round ``round_index`` ends with an exchange along the ring (a graft, and with
    distillation new teachers): from --start-round on, never after the last interval (the
    final networks are trained ones), never for --source none without distillation."""
    exchanges = config.graft.source != "none" or config.train.distill_weight > 0
    return exchanges and config.graft.start_round <= round_index < num_rounds
