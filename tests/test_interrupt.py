"""Ctrl-C on a real driver process: one line with the exact --resume command, exit 130, the
run KILLED and its workers gone; a second Ctrl-C exits at once even when cleanup is stuck."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient

from conftest import smoke_args
from graftune.tracking.interrupt import EXIT_INTERRUPTED

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

# Rounds of a second or more on a CPU, far more of them than a test waits for.
LONG_RUN = ("--synthetic-size", "2048", "--epochs", "50", "--num-models", "2",
            "--cpus-per-worker", "0.5", "--no-system-metrics")  # fmt: skip


def start_driver(tmp_path, *extra: str) -> tuple[subprocess.Popen, object]:
    """``python -m graftune.run`` in its own process, on the tests' Ray cluster."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "graftune.run", *smoke_args(tmp_path, *LONG_RUN, *extra)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
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


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path):
    driver, log = start_driver(tmp_path)
    client, run_id = wait_for_first_round(tmp_path, driver)
    pids = worker_pids(client, run_id)
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
