"""Ray Tune searches: a trial is a whole population in a placement group of 1 + K bundles,
nested under one MLflow parent run, and an interrupted search resumes where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import ray
from mlflow.tracking import MlflowClient

from conftest import smoke_args
from graftune.commands import tune as tune_command
from graftune.tracking.tracker import PARENT_TAG, Tracker

pytestmark = pytest.mark.usefixtures("ray_local")


def search_args(tmp_path, space: str, *extra: str) -> list[str]:
    path = tmp_path / "space.yaml"
    path.write_text(space)
    return smoke_args(
        tmp_path,
        "--search-space",
        str(path),
        "--storage-path",
        str(tmp_path / "tune"),
        "--cpus-per-worker",
        "0.1",
        "--no-log-weights",
        "--no-system-metrics",
        *extra,
    )


def trial_histories(tmp_path) -> list[list[dict]]:
    """What each trial reported to Tune, round by round (from Tune's result.json files)."""
    files = sorted((tmp_path / "tune" / "space").glob("*/result.json"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


def search_runs(tmp_path):
    """The search's parent run and its nested trial runs."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("graftune").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return client, parent, children


def test_search_runs_each_trial_as_a_nested_population(tmp_path, capsys):
    space = "num_models: {choice: [2, 3]}\nA: {uniform: [0.2, 0.6]}\n"
    assert tune_command.main(search_args(tmp_path, space, "--num-samples", "3")) == 0

    histories = trial_histories(tmp_path)
    assert len(histories) == 3
    for history in histories:
        last = history[-1]
        assert [row["round"] for row in history] == [1, 2]
        assert last["num_models"] == last["config"]["num_models"]
        assert last["bundles"] == 1 + last["num_models"]  # the driver + one per worker
    assert {h[-1]["num_models"] for h in histories} == {2, 3}

    client, parent, children = search_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search/space/num_models"] == "choice [2, 3]"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.info.run_id for c in children} == {h[-1]["run_id"] for h in histories}
    for child in children:  # the layout of a single population run
        assert child.data.params["population/num_models"] in ("2", "3")
        assert not [k for k in child.data.metrics if k.startswith("system/")]
        steps = client.get_metric_history(child.info.run_id, "population/mean_test_acc")
        assert [m.step for m in steps] == [1, 2]

    best = json.loads((tmp_path / "tune" / "space" / "best.json").read_text())
    assert best["parent_run_id"] == parent.info.run_id
    assert set(best["config"]) == {"A", "num_models"}
    assert parent.data.params["best/num_models"] == str(best["config"]["num_models"])
    assert parent.data.metrics["best/mean_test_acc"] == best["metrics"]["mean_test_acc"]
    assert f"Best trial: `{best['trial_id']}`" in parent.data.tags["mlflow.note.content"]
    out = capsys.readouterr()
    assert out.err.count(" finished: ") == 3
    assert "best configuration:" in out.out


def test_interrupted_search_resumes_its_trial_and_parent_run(tmp_path):
    argv = search_args(
        tmp_path, "A: {uniform: [0.2, 0.6]}\n", "--num-samples", "1", "--epochs", "6"
    )
    log = tmp_path / "search.log"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with log.open("w") as output:
        search = subprocess.Popen(
            [sys.executable, "-m", "graftune.tune", *argv],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        # Poll until the trial has reported twice: its first checkpoint is then registered
        # with Tune (a trial only trains on after Tune has taken its checkpoint).
        deadline = time.monotonic() + 240
        while not any(len(h) >= 2 for h in trial_histories(tmp_path)):
            assert search.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        search.send_signal(signal.SIGINT)
        assert search.wait(timeout=120) == tune_command.INTERRUPTED, log.read_text()
    assert "--resume" in log.read_text()
    ((*_, stopped_at),) = trial_histories(tmp_path)
    assert stopped_at["round"] < 6
    _, parent, (child,) = search_runs(tmp_path)
    assert parent.info.status == "KILLED" and child.info.status in ("KILLED", "FAILED")

    assert tune_command.main([*argv, "--resume"]) == 0
    client, resumed, (continued,) = search_runs(tmp_path)
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert continued.info.run_id == child.info.run_id == stopped_at["run_id"]
    assert continued.info.status == "FINISHED"
    steps = client.get_metric_history(child.info.run_id, "population/mean_test_acc")
    assert [m.step for m in steps] == [1, 2, 3, 4, 5, 6]  # every round logged once
    ((*_, final),) = trial_histories(tmp_path)
    assert final["round"] == 6 and final["bundles"] == 3


def test_a_trial_the_scheduler_stops_has_its_run_closed(tmp_path, capsys):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = {"round": 1, "num_rounds": 3, "run_id": tracker.run_id}
    result.update(mean_test_acc=0.5, best_test_acc=0.6, ensemble_test_acc=0.7)
    trial = SimpleNamespace(trial_id="t1", config={"A": 0.25}, last_result=result)
    tune_command.TrialLines(tracker.tracking_uri).on_trial_complete(0, [trial], trial)
    assert "trial t1 stopped early: A=0.25 | round 1/3: mean 50.00%" in capsys.readouterr().err
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["graftune.stopped_early"] == "1"
