"""The search's console: one line per finished trial, instead of Tune's tables."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from ray import tune
from rich.console import Console

from graftune.commands.search_report import describe

console = Console(stderr=True, soft_wrap=True)  # a finished trial is one line


class TrialLines(tune.Callback):
    """One console line per finished trial; a trial ASHA stopped has its MLflow run closed."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        done, total = result.get("round", 0), result.get("num_rounds", 0)
        verb = "finished" if done >= total else "stopped early"
        console.print(f"trial {trial.trial_id} {verb}: {describe(trial.config, result)}")
        if done < total and result.get("run_id"):
            client = MlflowClient(self.tracking_uri)
            client.set_tag(result["run_id"], "graftune.stopped_early", str(done))
            client.set_terminated(result["run_id"], status="KILLED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        console.print(f"[red]trial {trial.trial_id} failed; see {trial.path}/error.txt")
