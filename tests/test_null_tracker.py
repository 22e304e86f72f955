"""The round loop without MLflow: run_experiment with a NullTracker trains the same rounds,
to the same numbers, as a tracked run, and writes neither a run nor a checkpoint."""

import pytest

from conftest import smoke_config
from graftune.data import load_dataset
from graftune.tracking.experiment import run_experiment
from graftune.tracking.null_tracker import NullTracker

pytestmark = pytest.mark.usefixtures("ray_local")


def test_null_tracker_runs_the_same_rounds_as_a_tracked_run(tmp_path):
    untracked_dir = tmp_path / "untracked"
    untracked = smoke_config(
        untracked_dir,
        tracking_uri=f"sqlite:///{untracked_dir / 'mlflow.db'}",
        checkpoint_dir=str(untracked_dir / "checkpoints"),
        system_metrics=False,
        fuse="on",  # one worker process a run: the tracker is what this compares
    )
    tracked = smoke_config(tmp_path, system_metrics=False, fuse="on")
    data = load_dataset(tracked.data)
    rounds = []
    quiet = run_experiment(untracked, data, on_round=rounds.append, tracker=NullTracker())
    logged = run_experiment(tracked, data)

    assert [r.round for r in rounds] == [1, 2] and quiet.run_id == ""
    assert len(quiet.history) == len(logged.history) == 2
    for mine, theirs in zip(quiet.history, logged.history):
        assert [n["test_acc"] for n in mine["networks"]] == pytest.approx(
            [n["test_acc"] for n in theirs["networks"]], abs=1e-9
        )
    assert quiet.records and len(quiet.records) == len(logged.records)
    assert quiet.best == logged.best and len(quiet.states) == 2
    assert not untracked_dir.exists()  # no MLflow store, no checkpoint: nothing on disk
