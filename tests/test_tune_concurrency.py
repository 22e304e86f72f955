"""Many Tune trials at once on the default SQLite store: SQLite takes one writer at a time,
and every trial's driver logs each round; none may be lost or logged twice."""

import pytest
from test_tune import search_args, search_runs

from graftune.commands import trial
from graftune.commands import tune as tune_command

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

TRIALS = 8
ROUNDS = 3  # each trial starts two processes: most of the time is that, not rounds


def test_eight_concurrent_trials_log_every_round_once(tmp_path, monkeypatch):
    # Fractions of a CPU for each trial's driver and its one fused worker: all eight
    # trials fit the tests' 4-CPU Ray at once.
    monkeypatch.setitem(trial.DRIVER_BUNDLE, "CPU", 0.1)
    values = ", ".join(f"{0.1 * i:.1f}" for i in range(1, TRIALS + 1))
    space = f"A: {{grid: [{values}]}}\n"
    argv = search_args(
        tmp_path,
        space,
        "--epochs",
        str(ROUNDS),
        "--num-models",
        "2",
        "--fuse",
        "on",
        "--max-concurrent-trials",
        str(TRIALS),
    )
    assert tune_command.main(argv) == 0

    client, parent, children = search_runs(tmp_path)
    assert len(children) == TRIALS and {c.info.status for c in children} == {"FINISHED"}
    # They ran at the same time: every trial's run started before any of them ended.
    assert max(c.info.start_time for c in children) < min(c.info.end_time for c in children)
    for child in children:
        for key in ("population/mean_test_acc", "net0/test_acc", "net1/train_loss"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, ROUNDS + 1)), (child.info.run_name, key, steps)
