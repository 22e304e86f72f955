"""Ctrl-C on a driver: one line that says what is saved and how to go on, and a second
Ctrl-C that ends the process at once, even while the first one's cleanup is stuck (a busy
tracking store, a slow Ray)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class RunStopped(KeyboardInterrupt):
    """A tracked run stopped by Ctrl-C after its cleanup; ``line`` tells the user how to go on.

    A KeyboardInterrupt still, so callers that only know Ctrl-C treat it as one."""

    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def stopped_line(run_id: str, saved_round: int | None, tracking_uri: str = "") -> str:
    """What a stopped run tells the user: the round that is saved and the exact command that
    continues it (``tracking_uri`` as the user typed it; empty: the same default store)."""
    if saved_round is None:
        return f"graftune: stopped before any round of run {run_id} was saved; start it again"
    store = f" --tracking-uri {tracking_uri}" if tracking_uri else ""
    return (
        f"graftune: stopped; round {saved_round} of run {run_id} is saved; continue with: "
        f"python -m graftune.run --resume {run_id}{store}"
    )


def exit_on_interrupt(line: str) -> Callable[[], None]:
    """From now on Ctrl-C prints ``line`` and exits with 130 at once; returns the function
    that puts the previous handling back.

    Python runs signal handlers in the main thread between bytecodes, so a handler alone
    waits as long as the main thread is inside a C call (SQLite's busy wait, a socket).
    The C-level handler also writes the signal's number to the wakeup fd, and a thread
    blocked on that pipe exits the process right away. Only the main thread can set
    handlers: elsewhere (a Tune trial) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    old_fd = signal.set_wakeup_fd(write_end)
    old_handler = signal.signal(signal.SIGINT, lambda *_: None)  # the main thread goes on
    threading.Thread(
        target=_exit_on_sigint, args=(read_end, line), name="graftune-ctrl-c", daemon=True
    ).start()

    def restore() -> None:
        signal.signal(signal.SIGINT, old_handler)
        signal.set_wakeup_fd(old_fd)
        os.close(write_end)  # the watcher reads the end of the pipe and stops

    return restore


def _exit_on_sigint(read_end: int, line: str) -> None:
    while chunk := os.read(read_end, 1):  # other signals with Python handlers land here too
        if chunk[0] == signal.SIGINT:
            print(line, file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
    os.close(read_end)
