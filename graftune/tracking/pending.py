"""Per-round metrics that wait while the tracking server is away, so training goes on.

A tracking server that restarts, or a network that drops for a while, must not end hours of
training with a traceback, nor stall it for the minutes of back-off MLflow's client spends on
each call to a server that is gone. So each round first probes a remote server (one quick
try); while it does not answer, or when a call fails and then the probe does not answer, the
round's metrics (with their step and original timestamp) wait in a queue, and the queue goes
out in order, each round once, when it answers again. The queue is part
of every checkpoint, so a run that ends before the server is back loses nothing:
``--resume`` logs it. A metric keeps the time it was measured: sent twice (a call that
failed after the server had stored it), MLflow's SQL stores keep it once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from graftune.tracking.store import answers

REMOTE = ("http://", "https://")  # a local SQLite store does not come and go


class StoreAway(Exception):  # noqa: N818 (a state, as KeyboardInterrupt is)
    """The run ended with metrics still waiting for the tracking server; ``line`` says how
    to log them."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def away_line(uri: str, run_id: str, rounds: list[int], saved_round: int | None) -> str:
    waiting = "the run's final results"
    if rounds:
        some = f"rounds {rounds[0]}-{rounds[-1]}" if len(rounds) > 1 else f"round {rounds[0]}"
        waiting = f"the metrics of {some} and {waiting}"
    return (
        f"graftune: the tracking server {uri} does not answer; {waiting} are saved with round "
        f"{saved_round} of run {run_id}; once it answers, log them with: "
        f"python -m graftune.run --resume {run_id} --tracking-uri {uri}"
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class PendingLog:
    """A run's per-round metrics on their way to its tracker, waiting while its server is away.

    Args:
        tracker: the run's tracker (``log_metrics(metrics, step, timestamp)``).
        items: what a checkpoint kept waiting (``{"step", "timestamp", "metrics"}`` each).
        say: where the two lines go (one when logging first fails, one when it works again).
    """

    def __init__(self, tracker: Any, items: list[dict[str, Any]] | None = None, say=_say) -> None:
        self.tracker = tracker
        self.items: list[dict[str, Any]] = [dict(item) for item in items or []]
        self.say: Callable[[str], None] = say
        self.uri = getattr(tracker, "tracking_uri", "")
        self.remote = bool(getattr(tracker, "enabled", False)) and self.uri.startswith(REMOTE)
        self.away = False

    @property
    def steps(self) -> list[int]:
        return [item["step"] for item in self.items]

    def log(self, metrics: dict[str, float], step: int) -> bool:
        """Log ``metrics`` at ``step`` after whatever waits; False if they wait too."""
        self.items.append({"step": step, "timestamp": int(time.time() * 1000), "metrics": metrics})
        return self.flush()

    def flush(self) -> bool:
        """Send what waits, oldest first; True when nothing waits any more."""
        if self.items and self.remote and not answers(self.uri):
            self._went_away(None)  # one quick probe a round, not MLflow's minutes of retries
            return False
        while self.items:
            item = self.items[0]
            try:
                self.tracker.log_metrics(item["metrics"], item["step"], item["timestamp"])
            except Exception as error:
                if not self.remote or answers(self.uri):
                    raise  # the server is there and refused: a bug or bad input, as before
                self._went_away(error)
                return False
            self.items.pop(0)
        if self.away:
            self.away = False
            self.tracker.restart_system_metrics()  # MLflow's sampler gave up while it was away
            self.say(
                f"graftune: the tracking server {self.uri} answers again; waiting metrics logged"
            )
        return True

    def went_away(self, error: Exception) -> bool:
        """Whether ``error``, raised by a call outside this queue (the run's final results),
        came from a server that is away; if so, the run keeps them for ``--resume``."""
        if not self.remote or answers(self.uri):
            return False
        self._went_away(error, "the run's final results wait")
        return True

    def ready_for_final(self) -> bool:
        """Whether the run's final results may be logged now: nothing waits and the server
        answers a probe (a remote server that does not is not waited on for minutes). A flush
        that sent something has just probed and been answered: no second probe then."""
        probed = self.remote and bool(self.items)
        if not self.flush():
            return False
        if self.remote and not probed and not answers(self.uri):
            self._went_away(None, "the run's final results wait")
            return False
        return True

    def _went_away(self, error: Exception | None, what: str = "") -> None:
        if not self.away:
            reason = "no reply to a quick probe"
            if error is not None:
                reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
            what = what or (
                f"training goes on, and the metrics from round {self.items[0]['step']} on wait"
            )
            self.say(
                f"graftune: warning: the tracking server {self.uri} does not answer ({reason}); "
                f"{what} until it answers (they are kept in the checkpoints)"
            )
        self.away = True
