"""The search's console: one line per finished trial, instead of Tune's tables."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from ray import tune
from rich.console import Console

from graftune.commands.search_report import describe
from graftune.tracking.pending import REMOTE
from graftune.tracking.store import answers

console = Console(stderr=True, soft_wrap=True)  # a finished trial is one line


class TrialLines(tune.Callback):
    """One console line per finished trial; a trial ASHA stopped has its MLflow run closed.

    While a remote tracking server does not answer, the runs to close wait (a quick probe,
    not MLflow's minutes of retries on the search's driver) and are closed at the next
    trial's end or the search's; a run still waiting then is named, as it stays RUNNING."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.to_close: list[tuple[str, int]] = []  # (run id, rounds done) of stopped trials
        self.away = False

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        done, total = result.get("round", 0), result.get("num_rounds", 0)
        verb = "finished" if done >= total else "stopped early"
        console.print(f"trial {trial.trial_id} {verb}: {describe(trial.config, result)}")
        if done < total and result.get("run_id"):
            self.to_close.append((result["run_id"], done))
        self.close_stopped()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        console.print(f"[red]trial {trial.trial_id} failed; see {trial.path}/error.txt")

    def on_experiment_end(self, trials, **info) -> None:
        if not self.close_stopped():
            runs = ", ".join(run_id for run_id, _ in self.to_close)
            console.print(
                f"graftune: the tracking server {self.tracking_uri} does not answer; these "
                f"stopped trials' runs stay RUNNING: {runs}"
            )

    def close_stopped(self) -> bool:
        """Close the runs of stopped trials that wait; False while the server is away."""
        if not self.to_close:
            return True
        if self.tracking_uri.startswith(REMOTE) and not answers(self.tracking_uri):
            if not self.away:
                console.print(
                    f"graftune: warning: the tracking server {self.tracking_uri} does not "
                    "answer; the runs of stopped trials are closed once it does"
                )
            self.away = True
            return False
        client = MlflowClient(self.tracking_uri)
        while self.to_close:
            run_id, done = self.to_close[0]
            client.set_tag(run_id, "graftune.stopped_early", str(done))
            client.set_terminated(run_id, status="KILLED")
            self.to_close.pop(0)
        self.away = False
        return True
