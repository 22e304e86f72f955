"""A real driver process: Ctrl-C gives one line with the exact --resume command, exit 130,
the run KILLED and its workers gone; a second Ctrl-C exits at once even when cleanup is
stuck; and a second driver cannot resume the run while the first is alive."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient

from conftest import ONE_WORKER, smoke_args
from graftune.commands import run
from graftune.tracking.interrupt import EXIT_INTERRUPTED
from graftune.tracking.lease import read_lease

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

# Rounds of a second or more on a CPU, far more of them than a test waits for.
LONG_RUN = (
    "--synthetic-size",
    "2048",
    "--epochs",
    "50",
    "--num-models",
    "2",
    "--cpus-per-worker",
    "0.5",
    "--no-system-metrics",
    *ONE_WORKER,  # what is tested is the driver
)


def start_driver(tmp_path, *extra: str) -> tuple[subprocess.Popen, object]:
    """``python -m graftune.run`` in its own process, on the tests' Ray cluster."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "graftune.run", *smoke_args(tmp_path, *LONG_RUN, *extra)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # As a terminal starts it: Ctrl-C delivered. A test run started in the background of
        # a non-interactive shell inherits SIGINT ignored, and Python keeps it so.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return driver, log


def wait_for_first_round(tmp_path, driver) -> tuple[MlflowClient, str]:
    """Wait until round 1 is checkpointed (it is logged just before); returns the run id."""
    deadline = time.monotonic() + 240
    while not (found := list((tmp_path / "checkpoints").glob("*/population.pt"))):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
        time.sleep(0.1)
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), found[0].parent.name


def worker_pids(client, run_id) -> list[int]:
    return [w["pid"] for w in json.loads(client.get_run(run_id).data.tags["graftune.workers"])]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(pids: list[int], timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def resume_args(tmp_path, run_id) -> list[str]:
    return ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--resume", run_id]


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, capsys):
    driver, log = start_driver(tmp_path)
    client, run_id = wait_for_first_round(tmp_path, driver)
    pids = worker_pids(client, run_id)
    with pytest.raises(SystemExit) as refused:  # a second driver, while the first runs
        run.main(resume_args(tmp_path, run_id))
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    held = f"--resume {run_id}: the run is held by a live driver on {socket.gethostname()} "
    assert held in line and f"(pid {driver.pid}," in line and "driver.json" in line
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == EXIT_INTERRUPTED
    log.close()
    output = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    (line,) = [line for line in output.splitlines() if "graftune: stopped" in line]
    saved = client.get_metric_history(run_id, "population/mean_test_acc")[-1].step
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert line == (
        f"graftune: stopped; round {saved} of run {run_id} is saved; continue with: "
        f"python -m graftune.run --resume {run_id} --tracking-uri {store}"
    )
    assert client.get_run(run_id).info.status == "KILLED"
    assert wait_until_gone(pids) == []
    assert not list((tmp_path / "checkpoints").glob("*/driver.json"))  # released


def test_second_ctrl_c_exits_while_cleanup_waits_for_a_locked_store(tmp_path):
    driver, log = start_driver(tmp_path)
    client, run_id = wait_for_first_round(tmp_path, driver)
    pids = worker_pids(client, run_id)
    # Another writer holds the store: the cleanup's MLflow calls (KILLED, description) wait.
    blocker = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        driver.send_signal(signal.SIGINT)
        assert wait_until_gone(pids) == []  # the cleanup has begun: workers go first
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=15) == EXIT_INTERRUPTED  # before the store is free
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        driver.kill()
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert "Traceback" not in output, output
    assert f"--resume {run_id}" in output
    # It had no time to release its lease; its process is gone, so a resume takes it over.
    (lease,) = (tmp_path / "checkpoints").glob("*/driver.json")
    assert read_lease(lease)["pid"] == driver.pid
    run.prepare(resume_args(tmp_path, run_id))
    assert read_lease(lease)["pid"] == os.getpid()
