"""Every command's start-up: bad input is one line and exit code 2, a bug is a traceback
(exit code 1), and the libraries' start-up chatter stays off the console unless --verbose."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ONE_WORKER, refused, smoke_args
from graftune.commands import reproduce, run, startup
from graftune.data import DataError


def failing_data(monkeypatch, error: Exception) -> None:
    def load(config):
        raise error

    monkeypatch.setattr(startup, "load_dataset", load)


@pytest.mark.usefixtures("no_ray")
def test_an_internal_value_error_is_a_traceback_not_bad_input(tmp_path, monkeypatch):
    failing_data(monkeypatch, ValueError("a bug deep in the data code"))
    with pytest.raises(ValueError, match="a bug deep in the data code"):
        run.main(smoke_args(tmp_path))  # uncaught: Python prints it and exits with code 1


@pytest.mark.usefixtures("no_ray")
def test_a_data_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    failing_data(monkeypatch, DataError("--data-dir x: no train/ folder"))
    with pytest.raises(SystemExit) as exit_info:
        run.main(smoke_args(tmp_path))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "graftune: error: --data-dir x: no train/ folder"


@pytest.mark.slow  # a second Python process
def test_a_bug_exits_1_with_a_traceback(tmp_path):
    """The same as a process: an unexpected error in start-up is exit code 1 and a traceback."""
    code = (
        "import sys; from graftune.commands import run, startup\n"
        "def load(config): raise ValueError('a bug deep in the data code')\n"
        "startup.load_dataset = load\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *smoke_args(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: a bug deep" in done.stderr
    assert "graftune: error" not in done.stderr


@pytest.mark.usefixtures("no_ray")
def test_reproduce_with_a_bad_tracking_uri_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["table4", *smoke_args(tmp_path, "--tracking-uri", "bogus://store")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tracking-uri" in err, err


CHATTER = ("Token authentication is enabled", "Creating initial MLflow database tables")


def tiny_run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m graftune.run`` on a few synthetic images, in a fresh local Ray and a new
    MLflow store, as a first-time user meets it (RAY_AUTH_MODE unset)."""
    tmp_path.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    argv = smoke_args(tmp_path, "--epochs", "1", "--synthetic-size", "64", fresh_store=True)
    argv += ["--no-system-metrics", "--no-log-weights", *ONE_WORKER, *extra]
    done = subprocess.run(
        [sys.executable, "-m", "graftune.run", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_library_chatter_stays_off_the_console_unless_verbose(tmp_path):
    quiet = tiny_run(tmp_path / "quiet")
    console = quiet.stdout + quiet.stderr
    assert "graftune: 2 x tiny_cnn" in console
    assert [line for line in CHATTER if line in console] == []
    verbose = tiny_run(tmp_path / "verbose", "--verbose")
    assert [line for line in CHATTER if line in verbose.stdout + verbose.stderr] == list(CHATTER)


def test_rays_worker_death_message_is_dropped_and_others_pass(monkeypatch, capsys):
    """graftune reports a dead worker in one line; Ray's own multi-line message about it is
    kept off the console, and any other message Ray prints still gets through."""
    from ray._private import worker as ray_worker

    from graftune.commands.libraries import WORKER_DIED, drop_ray_worker_death_messages

    printed = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, _: printed.append(data))
    drop_ray_worker_death_messages()
    drop_ray_worker_death_messages()  # twice: still one filter
    death = {"lines": [f"{WORKER_DIED} by an unexpected system error. ..."], "pid": "raylet"}
    other = {"lines": ["The node with node id abc has been marked dead"], "pid": "raylet"}
    ray_worker.print_to_stdstream(death, False)
    ray_worker.print_to_stdstream(other, False)
    assert printed == [other]


# --- the tracking store at start-up: a server that does not answer, nothing left behind ---


SPACE = Path(__file__).parents[1] / "searchspaces" / "table5.yaml"


def silent_port() -> int:
    """A local port where nothing listens (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize("command", ["run", "tune", "reproduce"])
def test_a_tracking_server_that_does_not_answer_is_one_line(tmp_path, capsys, command):
    """One try, no retries: MLflow's client would retry for minutes before it said so."""
    from graftune.commands import tune

    uri = f"http://127.0.0.1:{silent_port()}"
    argv = smoke_args(tmp_path, "--tracking-uri", uri)
    main = {"run": run.main, "tune": tune.main, "reproduce": reproduce.main}[command]
    if command == "reproduce":
        argv = ["table4", *argv]
    if command == "tune":
        argv += ["--storage-path", str(tmp_path / "tune"), "--search-space", str(SPACE)]
    err = refused(capsys, main, argv)
    assert err == (
        f"graftune: error: --tracking-uri {uri} does not answer (connection refused or host "
        "not found); start the server or fix the URI"
    )


def test_a_server_that_accepts_but_never_answers_is_refused_after_one_timeout():
    from graftune.config import ConfigError
    from graftune.tracking.store import probe_server

    with socket.socket() as listening:  # connections queue up; nobody ever reads them
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        uri = f"http://127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(ConfigError, match=r"does not answer \(no answer in 0.2 s\)"):
            probe_server(uri, timeout_s=0.2)


def test_a_tracking_uri_that_is_not_a_url_is_one_line():
    from graftune.config import ConfigError
    from graftune.tracking.store import probe_server

    with pytest.raises(ConfigError, match=r"--tracking-uri http://localhost:99999 is not a valid"):
        probe_server("http://localhost:99999")


@pytest.mark.usefixtures("no_ray")
def test_a_run_refused_for_its_data_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """No store, no folder, no checkpoint: the store is made only when the run starts."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "runs" / "mlflow.db"  # a folder that MLflow would make with the store
    argv = [
        *smoke_args(tmp_path, fresh_store=True),
        *("--tracking-uri", f"sqlite:///{store}"),
        *("--dataset", "imagefolder", "--data-dir", str(tmp_path / "no-such-folder")),
    ]
    assert "--data-dir" in refused(capsys, run.main, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.usefixtures("no_ray")
def test_a_run_refused_for_its_settings_leaves_no_default_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["--model", "tiny_cnn", "--dataset", "synthetic", "--epochs", "0"]
    assert "--epochs" in refused(capsys, run.main, argv)
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_store_in_a_folder_that_cannot_be_made_is_refused(tmp_path):
    from graftune.config import ConfigError
    from graftune.tracking.store import open_store

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a folder that can be written"):
        open_store(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    assert open_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}") is None
    assert not (tmp_path / "new").exists()
