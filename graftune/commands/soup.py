"""``python -m graftune.soup RUN_ID``: the soup of a finished run, without training again.

The run's networks come from its MLflow models ``net{k}`` (or, where it logged none, its
``weights/net{k}.pt``); their average weights become one network whose BatchNorm statistics
are re-estimated on the run's training data, which is then evaluated on its test set. The
accuracy is logged to that run as ``population/soup_test_acc`` at its last round, the soup's
weights as ``weights/soup.pt`` and, where the run has models, as the model ``soup``; the
run's status and end time stay as they were.

    python -m graftune.soup 0123abcd --tracking-uri sqlite:///runs/accuracy/mlflow.db
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from graftune.commands.cli import OneLineParser
from graftune.commands.startup import Startup, start
from graftune.config import RULES, Config, ConfigError, flatten, from_flat, validate, with_overrides
from graftune.core.average import population_average
from graftune.models import list_models
from graftune.tracking.logged_models import log_soup
from graftune.tracking.tracker import Tracker, resolve_tracking_uri
from graftune.training.soup import Soup


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m graftune.soup",
        description="Average a finished run's networks into one (its soup), re-estimate its "
        "BatchNorm statistics, evaluate it and log the result to the run.",
    )
    add = parser.add_argument
    add("run_id", help="the MLflow run whose networks are averaged")
    add("--tracking-uri", default="", help='"" = MLFLOW_TRACKING_URI, else ./mlflow.db')
    add("--bn-batches", type=int, help="training batches for BatchNorm (default: the run's)")
    add("--data-dir", help="where the run's data set is now (default: the run's --data-dir)")
    add("--device", default="", help='"" = cuda when there is one, else cpu')
    return parser


def configure(startup: Startup) -> Config:
    """The run's settings (its params), with the data where it is now; the run, its last
    round and its networks go to ``startup.extra``."""
    args = startup.args
    ok, rule = RULES["soup_bn_batches"]
    if args.bn_batches is not None and not ok(args.bn_batches):
        raise ConfigError(f"--bn-batches {args.bn_batches}: {rule}")  # before any lookup
    client, uri = startup.store(args.tracking_uri), resolve_tracking_uri(args.tracking_uri)
    try:
        run = client.get_run(args.run_id)
    except Exception:  # MLflow raises its own types for an unknown run
        raise ConfigError(f"{args.run_id}: no such MLflow run in {uri}") from None
    overrides: dict[str, Any] = {"tracking_uri": uri}
    overrides["checkpoint_dir"] = "."  # the command writes no checkpoint
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.bn_batches is not None:
        overrides["soup_bn_batches"] = args.bn_batches
    config = validate(with_overrides(from_flat(run.data.params), overrides), list_models())
    history = client.get_metric_history(run.info.run_id, "population/mean_test_acc")
    if not history:
        raise ConfigError(f"{args.run_id}: the run finished no round, so it has no networks")
    states = [network_state(client, run, k) for k in range(config.population.num_models)]
    startup.extra = (run, max(m.step for m in history), states)
    return config


def network_state(client: MlflowClient, run, k: int) -> dict[str, torch.Tensor]:
    """Network k's final weights: its logged model's, else its weights artifact."""
    import mlflow.pytorch

    uri = f"runs:/{run.info.run_id}/net{k}"
    try:
        model = mlflow.pytorch.load_model(uri)
    except Exception:  # noqa: BLE001 (no model: MLflow raises several kinds)
        return weights_artifact(client, run.info.run_id, k)
    inner = "network."  # the logged model wraps the network behind its normalisation
    state = model.state_dict()
    return {key[len(inner) :]: v for key, v in state.items() if key.startswith(inner)}


def weights_artifact(client: MlflowClient, run_id: str, k: int) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"weights/net{k}.pt", tmp)
        except Exception:  # noqa: BLE001
            raise ConfigError(
                f"{run_id}: network {k} has neither an MLflow model net{k} nor weights/net{k}.pt "
                "(the run used --no-log-models and --no-log-weights, or did not finish)"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=True)


def main(argv: list[str] | None = None) -> int:
    # MLflow draws a progress bar per artifact it downloads: noise around the one result line
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    startup = start(build_parser(), argv, configure)
    config, data = startup.config, startup.data
    run, last_round, states = startup.extra
    device = startup.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    soup = Soup(config, data, device).evaluate(
        population_average(states), config.population.soup_bn_batches
    )
    client = MlflowClient(config.tracking.tracking_uri)
    tracker = Tracker(config.tracking.tracking_uri, run_id=run.info.run_id)
    try:
        metrics = {"population/soup_test_acc": soup["test_acc"]}
        metrics["population/soup_test_loss"] = soup["test_loss"]
        tracker.log_metrics(metrics, step=last_round)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(soup["state"], Path(tmp) / "soup.pt")
            tracker.log_artifacts(tmp, "weights")
        if config.tracking.log_models:
            final = {"round": last_round, "population": {"soup_test_acc": 0, "soup_test_loss": 0}}
            log_soup(tracker, config.model.model, data, soup["state"], final, flatten(config))
    finally:  # the run keeps its status and end time: its wall time stays its training's
        info = run.info
        client.set_terminated(info.run_id, status=info.status, end_time=info.end_time)
    p = run.data.metrics
    line = "  ".join(
        f"{name} {100 * p[f'population/{name}_test_acc']:.2f}%"
        for name in ("mean", "best", "ensemble")
        if f"population/{name}_test_acc" in p
    )
    print(f"soup of {len(states)} networks: {100 * soup['test_acc']:.2f}%  ({line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
