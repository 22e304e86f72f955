"""One driver per run: a lease file beside the run's checkpoint.

The driver of a run holds ``driver.json`` in the run's checkpoint folder: its host, pid,
the start time of that process and a heartbeat it refreshes every ``HEARTBEAT_S``. Another
driver may take the run over only when the holder is gone: on the same host, its process
has ended (or the pid now belongs to another process); on another host, its heartbeat is
older than ``STALE_AFTER_S`` (clocks are assumed to agree to within seconds). A driver that
stops cleanly removes its lease; one that was killed leaves a lease that the next resume
takes over by these rules, or by hand by deleting the file.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from graftune.config import ConfigError

LEASE_NAME = "driver.json"
HEARTBEAT_S = 20.0  # seconds between refreshes of a live driver's heartbeat
STALE_AFTER_S = 120.0  # a heartbeat this old on another host: its driver is gone


class LeaseHeld(ConfigError):
    """Another live driver holds the run: bad input to this command (one line, exit 2)."""


def lease_path(checkpoint: str | os.PathLike) -> Path:
    """The lease of the run whose checkpoint is ``checkpoint``: in the same folder."""
    return Path(checkpoint).parent / LEASE_NAME


def this_driver() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        "heartbeat": time.time(),
    }


def is_this_driver(holder: dict[str, Any]) -> bool:
    me = this_driver()
    return holder.get("host") == me["host"] and holder.get("pid") == me["pid"]


def holder_alive(holder: dict[str, Any], now: float | None = None) -> bool:
    """Whether the driver that wrote ``holder`` may still be running."""
    if holder.get("host") == socket.gethostname():  # ask the process table, not the clock
        try:
            process = psutil.Process(int(holder["pid"]))
            same = abs(process.create_time() - float(holder["started"])) < 1.0  # not reused
            return same and process.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, TypeError, ValueError):
            return False
    age = (now or time.time()) - float(holder.get("heartbeat", 0))
    return age < STALE_AFTER_S


def read_lease(path: Path) -> dict[str, Any] | None:
    """The holder written in ``path``; None if there is none (a damaged file counts as none:
    leases are written whole, by rename, so only a hand-edited one can be damaged)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def held_message(run_id: str, path: Path, holder: dict[str, Any]) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (
        f"--resume {run_id}: the run is held by a live driver on {holder.get('host')} "
        f"(pid {holder.get('pid')}, heartbeat {age:.0f} s ago); stop that one first, or if it "
        f"is truly gone delete {path} and resume again (a dead process on this host, or a "
        f"heartbeat over {STALE_AFTER_S:.0f} s old, is taken over without asking)"
    )


def acquire(path: Path, run_id: str) -> None:
    """Make this process the holder of the run's lease, or raise :class:`LeaseHeld`.

    A new lease appears whole (written aside, then hard-linked, which fails if one
    exists), so of two drivers that start together one wins and the other sees a live
    holder. A lease of a gone driver is first moved aside; the mover checks that what it
    moved is the lease it judged gone, so it never removes one that a rival just wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        if _link_new(path):
            return
        holder = read_lease(path)
        if holder is not None and is_this_driver(holder):
            _write(path)
            return
        if holder is not None and holder_alive(holder):
            raise LeaseHeld(held_message(run_id, path, holder))
        aside = path.with_name(f".{LEASE_NAME}.gone-{os.getpid()}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            continue  # a rival moved it first: look again
        if read_lease(aside) != holder:  # a rival's fresh lease: put it back, refuse
            moved = read_lease(aside) or {}
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # a third driver got there meanwhile: it holds the run now
            finally:
                aside.unlink(missing_ok=True)
            raise LeaseHeld(held_message(run_id, path, moved))
        aside.unlink(missing_ok=True)
    raise LeaseHeld(f"--resume {run_id}: another driver keeps taking {path}; try again")


def _link_new(path: Path) -> bool:
    tmp = _written_aside(path)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path) -> None:
    os.replace(_written_aside(path), path)


def _written_aside(path: Path) -> Path:
    tmp = path.with_name(f".{LEASE_NAME}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(this_driver()))
    return tmp


class DriverLease:
    """This process's lease on a run, with its heartbeat, from :meth:`hold` to :meth:`release`."""

    def __init__(self, path: Path, run_id: str, heartbeat_s: float = HEARTBEAT_S):
        self.path, self.run_id, self.heartbeat_s = Path(path), run_id, heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, take_over: bool = False) -> DriverLease:
        """Take the lease (``take_over``: whoever holds it) and keep its heartbeat going."""
        if take_over:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write(self.path)
        else:
            acquire(self.path, self.run_id)
        self._thread = threading.Thread(target=self._beat, name="graftune-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = read_lease(self.path)
            if holder is None or not is_this_driver(holder):
                return  # taken over (by hand): never write over another driver's lease
            _write(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_lease(self.path)
        if holder is not None and is_this_driver(holder):
            self.path.unlink(missing_ok=True)
