"""What a finished search reports: its best trial, printed, written as JSON (best.json),
logged and described on the parent MLflow run, and registered with --register-model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from graftune.commands.search_state import SearchState
from graftune.commands.searchspace import trial_overrides
from graftune.tracking.description import search_description
from graftune.tracking.tracker import BEST_MODEL_ID_TAG, REGISTERED_TAG, Tracker, browse_command

METRICS = ("mean_test_acc", "best_test_acc", "ensemble_test_acc")
# The soup's accuracy is reported only with --soup every_round: a search metric must be
# reported every round (ASHA compares trials at every rung).
SOUP_METRIC = "soup_test_acc"

console = Console(stderr=True, soft_wrap=True)


def describe(params: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A trial's sampled settings and, once it reported, its accuracies."""
    values = "  ".join(f"{k}={_short(v)}" for k, v in trial_overrides(params).items())
    if "round" not in metrics:
        return values
    shown = [k for k in (*METRICS, SOUP_METRIC) if k in metrics]
    accuracies = "  ".join(f"{k.split('_')[0]} {metrics[k]:.2%}" for k in shown)
    return f"{values} | round {metrics['round']}/{metrics.get('num_rounds', '?')}: {accuracies}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report_best(results, state: SearchState, tracker: Tracker) -> dict[str, Any] | None:
    """Print the best trial, write it as JSON and log it on the parent run; then, with
    --register-model, register its best network. The report comes first: a registry that
    fails cannot take best.json and the parent run's record with it."""
    metric = state.metric
    try:
        best = results.get_best_result(metric=metric, mode="max", scope="last")
    except RuntimeError:
        console.print(f"[red]no trial reported {metric}; see the errors above")
        return None
    chosen = trial_overrides(best.config)
    summary = {
        "metric": metric,
        "mode": "max",
        "value": best.metrics[metric],
        "config": chosen,
        "metrics": {
            k: best.metrics[k]
            for k in (*METRICS, SOUP_METRIC, "round", "num_rounds")
            if k in best.metrics
        },
        "trial_id": best.metrics.get("trial_id"),
        "trial_run_id": best.metrics.get("run_id"),
        "parent_run_id": state.parent_run_id,
        "trials": len(results),
        "errors": results.num_errors,
        "experiment_path": state.path,
        "registered": "",
    }
    output = write_summary(summary, state, tracker)
    tracker.log_params({f"best/{k}": v for k, v in chosen.items()})
    tracker.log_metrics({f"best/{k}": v for k, v in summary["metrics"].items()}, step=0)
    tracker.set_tag("graftune.best_run_id", str(summary["trial_run_id"]))
    print(f"best of {len(results)} trials by {metric}: {describe(best.config, best.metrics)}")
    print(f"best configuration: {output}")
    print(f"MLflow search run: {tracker.run_id}  best trial's run: {summary['trial_run_id']}")
    print(f"browse it:  {browse_command(tracker.tracking_uri)}")
    summary["registered"] = register_best(tracker, summary, state.settings)
    if summary["registered"]:
        write_summary(summary, state, tracker)
        print(f"registered the best trial's best network as {summary['registered']}")
    return summary


def write_summary(summary: dict[str, Any], state: SearchState, tracker: Tracker) -> Path:
    """best.json, on disk and on the parent run, and the parent run's description."""
    output = Path(state.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    tracker.log_text(output.read_text(), "best.json")
    tracker.set_description(search_description(state.as_json(), summary))
    return output


def register_best(tracker: Tracker, summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """With --register-model NAME, register the best trial's best network; its version."""
    name = settings.get("tracking/register_model", "")
    if not name:
        return ""
    tags = tracker.client.get_run(summary["trial_run_id"]).data.tags
    if BEST_MODEL_ID_TAG not in tags:  # its models failed to log; the trial run says why
        console.print(f"[red]--register-model {name}: the best trial logged no models")
        return ""
    version = tracker.register_model(tags[BEST_MODEL_ID_TAG], name)
    tracker.set_tag(REGISTERED_TAG, f"{name}/{version}")
    return f"{name} version {version}"
