"""A search's parent MLflow run: opened with the search's settings, and closed with its
trials' runs when the search is interrupted."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console

from graftune.commands.search_state import SearchState
from graftune.commands.searchspace import SearchSpace
from graftune.config import Config, flatten
from graftune.tracking.description import search_description
from graftune.tracking.tracker import PARENT_TAG, Tracker

INTERRUPTED = 130  # exit code of a search stopped by Ctrl+C (128 + SIGINT)
ASHA_FLAGS = ("asha", "grace_period", "reduction_factor", "max_concurrent_trials")

console = Console(stderr=True, soft_wrap=True)


def start_search(
    args: argparse.Namespace, config: Config, space: SearchSpace, state: SearchState
) -> SearchState:
    """Open the parent MLflow run, log the search, and store what --resume needs."""
    state.searcher = "grid search" if space.has_grid else "Optuna TPE"
    state.metric = args.metric
    state.num_samples = args.num_samples or (1 if space.has_grid else 10)
    state.output = str(Path(args.output or Path(state.path) / "best.json").resolve())
    state.settings = flatten(config)
    state.trials = state.num_samples * space.grid_size
    t = config.tracking
    tracker = Tracker(t.tracking_uri, t.experiment, t.run_name or f"search {state.name}")
    fixed = {k: v for k, v in state.settings.items() if k.split("/")[1] not in space.settings}
    stored = state.as_json()
    tracker.log_params(
        {
            **fixed,
            **{f"search/space/{k}": v for k, v in space.describe().items()},
            **{f"search/{k}": stored[k] for k in ("searcher", "metric", "trials", "name", "path")},
            **{f"search/{k}": getattr(args, k) for k in ASHA_FLAGS},
        }
    )
    tracker.log_text(Path(space.path).read_text(), "search_space.yaml")
    tracker.set_description(search_description(stored, None))
    state.parent_run_id = tracker.run_id
    state.save()
    return state


def interrupted(results, expected: int) -> bool:
    """Whether Ctrl+C ended the search. Tune marks the trials it stops then as terminated, so
    look at what they reported: an error, ``done`` (a scheduler stop, or the end in this
    session) or their last round (a trial that finished before a --resume)."""
    metrics = [r.metrics or {} for r in results if not r.error]
    ended = [m for m in metrics if m.get("done") or m.get("round", 0) >= m.get("num_rounds", 1)]
    return len(ended) + results.num_errors < max(len(results), expected)


def stopped(state: SearchState, config: Config) -> int:
    """An interrupted search: close its trials' MLflow runs and say how to go on."""
    client = MlflowClient(config.tracking.tracking_uri)
    experiment = client.get_run(state.parent_run_id).info.experiment_id
    query = f"tags.`{PARENT_TAG}` = '{state.parent_run_id}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment], query):
        client.set_terminated(run.info.run_id, status="KILLED")
    storage = Path(state.path).parent
    console.print(
        f"search '{state.name}' stopped; continue it with:\n  python -m graftune.tune "
        f"--resume --name {state.name} --storage-path {storage}"
    )
    return INTERRUPTED
