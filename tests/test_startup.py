"""Every command's start-up: bad input is one line and exit code 2, a bug is a traceback
(exit code 1), and the libraries' start-up chatter stays off the console unless --verbose."""

import os
import subprocess
import sys

import pytest

from conftest import ONE_WORKER, smoke_args
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
