"""One driver per run: the lease beside the checkpoint, without Ray. (A real second driver
refused while the first runs is in test_driver.py.)"""

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from graftune.tracking import lease as lease_module
from graftune.tracking.lease import DriverLease, LeaseHeld, acquire, read_lease


@pytest.fixture
def other_process():
    """A live process that is not this one: the holder of a lease."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def write_holder(path, host, pid, started, heartbeat):
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"host": host, "pid": pid, "started": started, "heartbeat": heartbeat}
    path.write_text(json.dumps(holder))


def live_holder(path, process):
    started = psutil.Process(process.pid).create_time()
    write_holder(path, socket.gethostname(), process.pid, started, time.time())


def test_a_new_lease_names_this_process(tmp_path):
    path = tmp_path / "run" / "driver.json"
    acquire(path, "r1")
    holder = read_lease(path)
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    acquire(path, "r1")  # its own lease: taken again, not refused


def test_a_live_driver_on_this_host_keeps_the_run(tmp_path, other_process):
    path = tmp_path / "driver.json"
    live_holder(path, other_process)
    with pytest.raises(LeaseHeld) as held:
        acquire(path, "r1")
    message = str(held.value)
    assert "--resume r1" in message and f"pid {other_process.pid}" in message
    assert socket.gethostname() in message and f"delete {path}" in message
    assert "\n" not in message
    assert read_lease(path)["pid"] == other_process.pid  # untouched
    other_process.kill()
    other_process.wait()
    acquire(path, "r1")  # its process has ended: taken over
    assert read_lease(path)["pid"] == os.getpid()


def test_a_reused_pid_does_not_hold_the_run(tmp_path, other_process):
    path = tmp_path / "driver.json"
    started = psutil.Process(other_process.pid).create_time() - 3600  # an older process
    write_holder(path, socket.gethostname(), other_process.pid, started, time.time())
    acquire(path, "r1")
    assert read_lease(path)["pid"] == os.getpid()


def test_another_hosts_driver_holds_the_run_until_its_heartbeat_is_stale(tmp_path):
    path = tmp_path / "driver.json"
    write_holder(path, "elsewhere", 4242, 0.0, time.time() - 5)
    with pytest.raises(LeaseHeld, match="on elsewhere .pid 4242, heartbeat 5 s ago"):
        acquire(path, "r1")
    write_holder(path, "elsewhere", 4242, 0.0, time.time() - lease_module.STALE_AFTER_S - 1)
    acquire(path, "r1")
    assert read_lease(path)["host"] == socket.gethostname()


def test_the_heartbeat_is_refreshed_and_the_lease_released(tmp_path):
    path = tmp_path / "driver.json"
    held = DriverLease(path, "r1", heartbeat_s=0.05).hold()
    first = read_lease(path)["heartbeat"]
    deadline = time.monotonic() + 30
    while read_lease(path)["heartbeat"] == first:
        assert time.monotonic() < deadline, "the heartbeat was never refreshed"
        time.sleep(0.01)
    held.release()
    assert not path.exists()


def test_a_lease_taken_by_hand_is_not_written_over(tmp_path, other_process):
    path = tmp_path / "driver.json"
    held = DriverLease(path, "r1", heartbeat_s=0.05).hold()
    live_holder(path, other_process)  # someone deleted ours and another driver took it
    held._thread.join(timeout=30)
    assert not held._thread.is_alive()  # the heartbeat saw it and stopped
    held.release()
    assert read_lease(path)["pid"] == other_process.pid


def test_a_rivals_new_lease_is_never_removed(tmp_path, other_process, monkeypatch):
    """Two drivers find the same dead lease; the second moves aside what the first has
    just written. It must put that back and refuse, not run beside the first."""
    path = tmp_path / "driver.json"
    started = psutil.Process(other_process.pid).create_time() - 3600
    write_holder(path, socket.gethostname(), other_process.pid, started, time.time())  # gone
    judged = lease_module.holder_alive

    def rival_takes_it_right_after(holder, now=None):
        verdict = judged(holder, now)
        live_holder(path, other_process)  # the rival's fresh lease
        return verdict

    monkeypatch.setattr(lease_module, "holder_alive", rival_takes_it_right_after)
    with pytest.raises(LeaseHeld, match=f"pid {other_process.pid},"):
        acquire(path, "r1")
    holder = read_lease(path)
    assert holder["pid"] == other_process.pid and holder["started"] > started
