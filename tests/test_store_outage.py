"""A tracking server that goes away in the middle of a run: training goes on, each round's
metrics wait and are logged once the server answers (in order, each once), and a run that
ends while it is away keeps them in its checkpoint for ``--resume``.

A real ``mlflow server`` (SQLite behind it, a free local port) is stopped and started again
from the run's round hook, so each outage begins and ends at a known round."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import empty_store, smoke_args, smoke_config
from graftune.data import load_dataset
from graftune.tracking import experiment
from graftune.tracking.checkpoint import load_checkpoint
from graftune.tracking.experiment import run_experiment
from graftune.tracking.pending import StoreAway
from graftune.tracking.resume import stopped_run
from graftune.tracking.store import answers

ROUNDS = 5


class Server:
    """``mlflow server`` on a free port; stop() and start() keep its store and its port."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.process = folder, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(self.port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(self.folder / "artifacts")),
        ]
        store = self.folder / "mlflow.db"
        if not store.exists():  # made once per test process: MLflow's migrations take seconds
            shutil.copyfile(empty_store(), store)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # one process less
        log = (self.folder / "server.log").open("a")
        # its own process group: the server's uvicorn worker goes with it
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=log, env=env, start_new_session=True
        )
        while not answers(self.uri, timeout_s=1.0):  # readiness, not a race: it must answer
            try:  # a pause between tries that ends early if the server dies
                self.process.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError((self.folder / "server.log").read_text()[-2000:])

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)
        assert not answers(self.uri, timeout_s=1.0)


@pytest.fixture
def server(tmp_path, monkeypatch):
    # MLflow's own retries as they are: a round probes the server before its first call, so
    # an outage costs the run seconds, not the minutes of back-off of a call to a gone server.
    server = Server(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.mark.usefixtures("ray_local")
def test_metrics_wait_for_the_server_and_a_resume_logs_what_the_run_could_not(
    tmp_path, server, capsys, monkeypatch
):
    config = smoke_config(
        tmp_path, epochs=ROUNDS, tracking_uri=server.uri, num_models=2, system_metrics=False
    )
    data = load_dataset(config.data)
    # away after round 1's logging, back after round 3's: rounds 2 and 3 wait and go out
    # with round 4; away again after round 4, for good: round 5 waits in the checkpoint
    hooks = {1: server.stop, 3: server.start, 4: server.stop}
    with pytest.raises(StoreAway) as away:
        run_experiment(config, data, on_round=lambda r: hooks.get(r.round, lambda: None)())
    err = capsys.readouterr().err
    assert err.count(f"the tracking server {server.uri} does not answer (") == 2, err
    assert err.count(f"the tracking server {server.uri} answers again") == 1, err
    assert "the metrics from round 2 on wait" in err and "from round 5 on wait" in err
    line = away.value.line
    assert "the metrics of round 5" in line and f"--tracking-uri {server.uri}" in line

    server.start()
    client = MlflowClient(server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    assert run.info.status == "RUNNING"  # the end could not be recorded either
    assert run.data.tags["graftune.placement"] == "2 networks in 2 workers (one each)"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "net0/test_acc")]
    assert steps == [1, 2, 3, 4]  # the outage's rounds, in order, each once
    saved = load_checkpoint(run.data.tags["graftune.tracking.checkpoint"])
    assert saved["round"] == ROUNDS and [p["step"] for p in saved["pending"]] == [5]

    # resumed, with no round left: round 5 goes out, then the server goes away again
    # while the final results are logged; they wait for the next resume
    final_results = experiment.log_final_artifacts

    def away_at_the_end(*args):
        server.stop()
        final_results(*args)

    monkeypatch.setattr(experiment, "log_final_artifacts", away_at_the_end)
    # a call that the server leaves mid-way waits out MLflow's retries: none here, so that
    # the test takes seconds (the probe before each round spares the rounds above that wait)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    with pytest.raises(StoreAway) as away:
        run_experiment(config, data, resume=stopped_run(client, run.info.run_id))
    assert "; the run's final results are saved with round 5 of run" in away.value.line
    server.start()
    checkpoint = run.data.tags["graftune.tracking.checkpoint"]
    assert load_checkpoint(checkpoint)["pending"] == []  # round 5 is out: not sent again

    monkeypatch.setattr(experiment, "log_final_artifacts", final_results)
    result = run_experiment(config, data, resume=stopped_run(client, run.info.run_id))
    history = client.get_metric_history(result.run_id, "net0/test_acc")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert history[-1].value == pytest.approx(saved["history"][-1]["networks"][0]["test_acc"])
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(result.run_id, "population/mean_test_acc")) == ROUNDS


@pytest.mark.usefixtures("no_ray")
def test_a_run_that_ends_while_the_server_is_away_exits_1_with_the_resume_line(
    tmp_path, monkeypatch, capsys
):
    from graftune.commands import run
    from graftune.population.resources import Layout
    from graftune.tracking import experiment

    def away(*args, **kwargs):
        raise StoreAway("graftune: the tracking server ... python -m graftune.run --resume R")

    monkeypatch.setattr(run, "init_ray", lambda verbose: "local Ray")
    monkeypatch.setattr(run, "fits_local_ray", lambda config: Layout([[0], [1]], {}, False))
    monkeypatch.setattr(experiment, "run_experiment", away)
    assert run.main(smoke_args(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "graftune: the tracking server ... python -m graftune.run --resume R"


class FlakyStore:
    """A tracker whose server is away while ``up[0]`` is False."""

    enabled, tracking_uri = True, "http://mlflow.example:5000"

    def __init__(self, up: list[bool]):
        self.up, self.logged, self.restarts, self.calls_while_away = up, [], 0, 0

    def log_metrics(self, metrics, step, timestamp):
        if not self.up[0]:
            self.calls_while_away += 1  # each would wait out MLflow's retries
            raise ConnectionError("connection refused")
        if metrics.get("bad"):
            raise ValueError("a metric the server refuses")
        self.logged.append((step, timestamp))

    def restart_system_metrics(self):
        self.restarts += 1


def test_waiting_metrics_go_out_in_order_with_their_own_time_and_the_sampler_restarts(
    monkeypatch,
):
    from graftune.tracking import pending
    from graftune.tracking.pending import PendingLog

    up, probes = [True], []
    monkeypatch.setattr(pending, "answers", lambda uri: probes.append(uri) or up[0])
    store, lines = FlakyStore(up), []
    log = PendingLog(store, say=lines.append)
    assert log.log({"acc": 0.1}, 1)
    up[0] = False
    assert not log.log({"acc": 0.2}, 2) and not log.log({"acc": 0.3}, 3)
    assert log.steps == [2, 3] and len(lines) == 1 and "from round 2 on wait" in lines[0]
    assert store.calls_while_away == 0  # the probe said so: no call waits out MLflow's retries
    assert not log.ready_for_final()
    times = [item["timestamp"] for item in log.items]
    up[0] = True
    assert log.log({"acc": 0.4}, 4) and log.steps == []
    assert [step for step, _ in store.logged] == [1, 2, 3, 4]
    assert [t for step, t in store.logged if step in (2, 3)] == times  # when measured
    assert store.restarts == 1 and len(lines) == 2 and "answers again" in lines[1]
    with pytest.raises(ValueError, match="refuses"):  # a server that answers and refuses
        log.log({"bad": 1.0}, 5)
    log.items.clear()
    log.items.append({"step": 5, "timestamp": 0, "metrics": {"acc": 0.5}})
    probes.clear()
    assert log.ready_for_final() and len(probes) == 1  # the flush's probe serves the final too
    up[0] = False  # nothing waits, and the server goes before the final results
    assert not log.ready_for_final() and store.calls_while_away == 0
    assert len(lines) == 3 and "final results wait" in lines[2]


def test_system_metrics_start_again_when_mlflows_sampler_gave_up(tmp_path):
    import threading

    from graftune.tracking.tracker import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start_system_metrics()
    tracker.restart_system_metrics()  # still sampling: left alone
    first = tracker.monitor
    ended = threading.Thread(target=lambda: None)  # as MLflow's loop ends when a call fails
    ended.start()
    ended.join()
    first.finish()
    first._process = ended
    assert first.stopped
    tracker.restart_system_metrics()
    assert tracker.monitor is not first and not tracker.monitor.stopped
    tracker.finish()
