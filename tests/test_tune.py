"""Ray Tune searches: a trial is a whole population in a placement group of one bundle for
its driver and one per worker, nested under one MLflow parent run; many trials run at once,
and an interrupted search resumes where it stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import empty_store, refused, smoke_args
from graftune.commands import trial
from graftune.commands import tune as tune_command
from graftune.commands.search_report import report_best
from graftune.commands.search_setup import absolute_paths, prepare
from graftune.commands.search_state import STATE_FILE, SearchState
from graftune.commands.searchspace import load_search_space
from graftune.commands.worker_sizing import fit_workers
from graftune.config import Config, ConfigError, flatten, validate, with_overrides
from graftune.tracking.tracker import BEST_MODEL_ID_TAG, PARENT_TAG, Tracker


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


TRIALS = 8
ROUNDS = 3


@pytest.mark.usefixtures("ray_local")
def test_concurrent_trials_each_run_as_a_nested_population_logging_every_round_once(
    tmp_path, capsys, monkeypatch
):
    """Eight trials at once on the default SQLite store (one writer at a time), each a whole
    fused population nested under the search's parent run: none of the rounds that every
    trial's driver logs may be lost or logged twice."""
    # Fractions of a CPU for each trial's driver and its one fused worker: all eight
    # trials fit the tests' 4-CPU Ray at once.
    monkeypatch.setitem(trial.DRIVER_BUNDLE, "CPU", 0.1)
    space = "num_models: {choice: [2, 3]}\nA: {uniform: [0.2, 0.6]}\n"
    argv = search_args(tmp_path, space, "--num-samples", str(TRIALS), "--epochs", str(ROUNDS))
    argv += ["--fuse", "on", "--max-concurrent-trials", str(TRIALS)]
    assert tune_command.main(argv) == 0

    histories = trial_histories(tmp_path)
    assert len(histories) == TRIALS
    for history in histories:
        last = history[-1]
        assert [row["round"] for row in history] == list(range(1, ROUNDS + 1))
        assert last["num_models"] == last["config"]["num_models"]
        assert last["bundles"] == 2  # the driver + one fused worker, whatever the networks
    assert {h[-1]["num_models"] for h in histories} == {2, 3}

    client, parent, children = search_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search/space/num_models"] == "choice [2, 3]"
    assert len(children) == TRIALS and {c.info.status for c in children} == {"FINISHED"}
    assert {c.info.run_id for c in children} == {h[-1]["run_id"] for h in histories}
    # They ran at the same time: every trial's run started before any of them ended.
    assert max(c.info.start_time for c in children) < min(c.info.end_time for c in children)
    for child in children:  # the layout of a single population run
        assert child.data.params["population/num_models"] in ("2", "3")
        assert not [k for k in child.data.metrics if k.startswith("system/")]
        for key in ("population/mean_test_acc", "net0/test_acc", "net1/train_loss"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, ROUNDS + 1)), (child.info.run_name, key, steps)

    best = json.loads((tmp_path / "tune" / "space" / "best.json").read_text())
    assert best["parent_run_id"] == parent.info.run_id
    assert set(best["config"]) == {"A", "num_models"}
    assert parent.data.params["best/num_models"] == str(best["config"]["num_models"])
    assert parent.data.metrics["best/mean_test_acc"] == best["metrics"]["mean_test_acc"]
    assert f"Best trial: `{best['trial_id']}`" in parent.data.tags["mlflow.note.content"]
    out = capsys.readouterr()
    assert out.err.count(" finished: ") == TRIALS
    assert "best configuration:" in out.out


@pytest.mark.usefixtures("ray_local")
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


@pytest.mark.usefixtures("ray_local")
def test_a_trial_the_scheduler_stops_has_its_run_closed(tmp_path, capsys):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = {"round": 1, "num_rounds": 3, "run_id": tracker.run_id}
    result.update(mean_test_acc=0.5, best_test_acc=0.6, ensemble_test_acc=0.7)
    trial = SimpleNamespace(trial_id="t1", config={"A": 0.25}, last_result=result)
    tune_command.TrialLines(tracker.tracking_uri).on_trial_complete(0, [trial], trial)
    assert "trial t1 stopped early: A=0.25 | round 1/3: mean 50.00%" in capsys.readouterr().err
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["graftune.stopped_early"] == "1"


def test_a_stopped_trials_run_waits_while_the_server_is_away(monkeypatch, capsys):
    """No MLflow call (each would wait out its retries) while a probe finds no server; the
    run is closed at the next trial's end once it answers, and named if it never does."""
    from graftune.commands import trial_lines

    up, calls = [False], []

    class Client:
        def __init__(self, uri):
            assert up[0], "called while the server was away"

        def set_tag(self, run_id, key, value):
            calls.append((run_id, key, value))

        def set_terminated(self, run_id, status):
            calls.append((run_id, status))

    monkeypatch.setattr(trial_lines, "answers", lambda uri: up[0])
    monkeypatch.setattr(trial_lines, "MlflowClient", Client)
    lines = trial_lines.TrialLines("http://mlflow.example:5000")

    def complete(trial_id, run_id, done):
        result = {"round": done, "num_rounds": 3, "run_id": run_id}
        result.update(mean_test_acc=0.5, best_test_acc=0.6, ensemble_test_acc=0.7)
        trial = SimpleNamespace(trial_id=trial_id, config={"A": 0.25}, last_result=result)
        lines.on_trial_complete(0, [trial], trial)

    complete("t1", "R1", 1)
    complete("t2", "R2", 2)
    assert calls == [] and capsys.readouterr().err.count("does not answer") == 1
    up[0] = True
    complete("t3", "R3", 3)  # finished: nothing of its own to close
    closed = [
        (run_id, "graftune.stopped_early", done) for run_id, done in (("R1", "1"), ("R2", "2"))
    ]
    assert calls == [closed[0], ("R1", "KILLED"), closed[1], ("R2", "KILLED")]
    up[0] = False
    complete("t4", "R4", 1)
    lines.on_experiment_end([])
    assert "stopped trials' runs stay RUNNING: R4" in capsys.readouterr().err


# --- bad input: one line, exit code 2, before Ray starts (no Ray needed for these) ---


def refused_search(argv: list[str], capsys) -> str:
    """The one line graftune.tune refuses ``argv`` with (exit code 2)."""
    return refused(capsys, tune_command.main, argv)


@pytest.mark.usefixtures("no_ray")
def test_output_that_is_a_folder_is_refused_before_the_search(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    argv = search_args(tmp_path, "A: {uniform: [0.2, 0.6]}\n", "--output", str(tmp_path / "out"))
    assert "--output" in refused_search(argv, capsys)


@pytest.mark.usefixtures("no_ray")
def test_storage_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = search_args(tmp_path, "A: {uniform: [0.2, 0.6]}\n")
    argv[argv.index("--storage-path") + 1] = str(tmp_path / "file")
    err = refused_search(argv, capsys)
    assert "--storage-path" in err and "is a file, not a folder" in err


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_optunas_range_is_refused(tmp_path, capsys, seed):
    """The search's seed is the train seed: it also seeds Optuna, whose seeds are 32-bit."""
    argv = search_args(tmp_path, "A: {uniform: [0.2, 0.6]}\n", "--seed", seed)
    assert "--seed must lie in [0, " in refused_search(argv, capsys)


def test_a_trial_too_large_for_a_local_ray_is_refused(tmp_path, monkeypatch):
    """Every value the space can give a trial's resources must fit, not only the flags':
    a trial that cannot fit would wait for its placement group forever."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = validate(with_overrides(Config(), {"model": "tiny_cnn", "num_models": 2}))
    space_file = tmp_path / "space.yaml"

    def fit(text: str) -> Config:
        space_file.write_text(text)
        space = load_search_space(str(space_file), config)
        return fit_workers(config, space, {"CPU": 2.0}, "local Ray")

    with pytest.raises(ConfigError, match=r"cpus_per_worker=1000\)? needs .*'CPU': 2001"):
        fit("cpus_per_worker: {choice: [0.25, 1000]}\n")
    with pytest.raises(ConfigError, match="a trial with 2 workers .* needs"):
        fit("cpus_per_worker: {uniform: [0.1, 600]}\n")  # a range: its upper end
    with pytest.raises(ConfigError, match="a trial with 2 workers .*cpus_per_worker=0.6"):
        fit("num_models: {choice: [2, 3]}\ncpus_per_worker: {choice: [0.1, 0.6]}\n")
    # pairs that vary together are checked as pairs: each of these trials fits
    fitted = fit(
        "grid: [{num_models: 3, cpus_per_worker: 0.3}, {num_models: 2, cpus_per_worker: 0.5}]\n"
    )
    # the fixed share, for the largest trial's workers: 2 on 2 cores, whatever its K
    assert fitted.population.cpus_per_worker == 0.5
    assert fit("num_models: {choice: [2, 64]}\n").population.cpus_per_worker == 0.5


# --- the end of a search: best.json and the report before the registry ---


def test_best_json_is_written_before_the_registry_is_asked(tmp_path, monkeypatch):
    store = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store(), store)
    tracker = Tracker(f"sqlite:///{store}")
    trial = Tracker(tracker.tracking_uri)
    trial.set_tag(BEST_MODEL_ID_TAG, "m-123")
    metrics = {"mean_test_acc": 0.5, "best_test_acc": 0.6, "ensemble_test_acc": 0.7}
    best = SimpleNamespace(
        config={"A": 0.3},
        metrics={**metrics, "round": 2, "num_rounds": 2, "trial_id": "t1", "run_id": trial.run_id},
    )
    results = type("Results", (list,), {"num_errors": 0, "get_best_result": lambda s, **k: best})(
        [best]
    )
    state = SearchState("s", str(tmp_path), searcher="grid search", metric="mean_test_acc")
    state.output, state.parent_run_id, state.trials = str(tmp_path / "best.json"), tracker.run_id, 1
    state.settings = {"tracking/register_model": "mymodel"}

    def registry_down(self, model_id, name):
        raise MlflowException("the registry is down")

    monkeypatch.setattr(Tracker, "register_model", registry_down)
    with pytest.raises(MlflowException, match="registry is down"):
        report_best(results, state, tracker)
    written = json.loads((tmp_path / "best.json").read_text())
    assert written["config"] == {"A": 0.3} and written["registered"] == ""
    parent = tracker.client.get_run(tracker.run_id)
    assert parent.data.params["best/A"] == "0.3"
    assert "Best trial: `t1`" in parent.data.tags["mlflow.note.content"]

    monkeypatch.setattr(Tracker, "register_model", lambda self, model_id, name: 7)
    (tmp_path / "best.json").unlink()
    summary = report_best(results, state, tracker)
    assert summary["registered"] == "mymodel version 7"
    assert json.loads((tmp_path / "best.json").read_text())["registered"] == "mymodel version 7"


# --- --resume: a damaged state file, and the flags typed with it ---


def stored_search(tmp_path) -> tuple[list[str], Path]:
    """A search Tune could restore (its tuner.pkl) with the state graftune.tune stores,
    made without running it; the command line that resumes it."""
    argv = search_args(tmp_path, "A: {uniform: [0.2, 0.6]}\n")
    path = tmp_path / "tune" / "space"
    config, _ = prepare(tune_command.build_parser().parse_args(argv))
    path.mkdir(parents=True)
    (path / "tuner.pkl").write_bytes(b"")
    settings = flatten(absolute_paths(config, path))
    state = SearchState("space", str(path), "Optuna TPE", "mean_test_acc", 10, settings=settings)
    state.output, state.parent_run_id, state.trials = str(path / "best.json"), "abc", 10
    state.save()
    return [*argv, "--resume"], path


@pytest.mark.parametrize(
    "content, named",
    [
        (b'{"name": "space", "pa', "is not valid JSON"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_damaged_state_file_is_refused(tmp_path, content, named):
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match=named) as error:
        SearchState.load(tmp_path)
    assert STATE_FILE in str(error.value) and len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize(
    "change, named",
    [
        ({"settings": "nope"}, "'settings': 'nope', which is not a mapping"),
        ({"name": None}, "'name': None, which is not text"),
        ({"trials": "10"}, "'trials': '10', which is not a whole number"),
    ],
)
def test_state_file_with_a_wrong_field_is_refused(tmp_path, change, named):
    stored = SearchState("s", str(tmp_path), settings={"train/epochs": 2}).as_json()
    (tmp_path / STATE_FILE).write_text(json.dumps({**stored, **change}))
    with pytest.raises(ConfigError, match=named):
        SearchState.load(tmp_path)
    del stored["name"]
    (tmp_path / STATE_FILE).write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="has no 'name'"):
        SearchState.load(tmp_path)


@pytest.mark.usefixtures("no_ray")
def test_resume_with_a_damaged_state_file_is_one_line(tmp_path, capsys):
    argv, path = stored_search(tmp_path)
    state = json.loads((path / STATE_FILE).read_text())
    (path / STATE_FILE).write_text(json.dumps({**state, "settings": {"train/epochs": "x"}}))
    err = refused_search(argv, capsys)
    assert str(path / STATE_FILE) in err and "--epochs must be an integer" in err
    (path / STATE_FILE).write_text('{"name": ')
    assert "is not valid JSON" in refused_search(argv, capsys)


@pytest.mark.usefixtures("no_ray")
def test_resume_checks_the_flags_it_ignores(tmp_path, capsys):
    argv, _ = stored_search(tmp_path)
    assert "--epochs must be >= 1; got 0" in refused_search([*argv, "--epochs", "0"], capsys)
    assert "--num-samples" in refused_search([*argv, "--num-samples", "0"], capsys)


def test_resume_warns_of_the_flags_it_ignores(tmp_path, capsys):
    argv, path = stored_search(tmp_path)
    parser = tune_command.build_parser()
    config, state = prepare(parser.parse_args(argv))  # the same command again: no warning
    assert capsys.readouterr().err == ""
    assert config.train.epochs == 2 and state.parent_run_id == "abc"

    config, _ = prepare(parser.parse_args([*argv, "--epochs", "5", "--lr", "0.2"]))
    err = capsys.readouterr().err.strip()
    assert config.train.epochs == 2 and config.train.lr == 0.05  # the stored settings win
    assert len(err.splitlines()) == 1 and "ignoring --epochs, --lr" in err, err


def test_without_a_search_space_the_default_one_is_searched_and_said_first(
    tmp_path, capsys, monkeypatch
):
    """``python -m graftune.tune`` alone searches A, c, lr and K, and its first line says so
    (the trials themselves are left out: the tuner is stopped before it starts any)."""

    class Stop(Exception):
        pass

    def tuner(args, config, data, state, cluster):
        assert sorted(state.space.settings) == ["A", "c", "lr", "num_models"]
        raise Stop

    monkeypatch.setattr(tune_command, "init_ray", lambda verbose: "local Ray (2 CPUs)")
    monkeypatch.setattr(tune_command.ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(tune_command, "make_tuner", tuner)
    argv = smoke_args(tmp_path, "--storage-path", str(tmp_path / "tune"), "--num-samples", "2")
    del argv[argv.index("--lr") : argv.index("--lr") + 2]  # lr is searched
    with pytest.raises(Stop):
        tune_command.main(argv)
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(
        "graftune.tune: starting search 'default' of the default search space "
        "(A, c, lr, num_models): 2 trials"
    ), first


def test_the_default_search_space_is_package_data():
    """Installed from a wheel, graftune has no searchspaces/ folder beside it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from graftune.commands.searchspace import DEFAULT_SPACE

    assert Path(DEFAULT_SPACE).is_file()
    root = Path(__file__).parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["graftune"]
    assert Path(DEFAULT_SPACE).relative_to(root / "graftune").as_posix() in data
