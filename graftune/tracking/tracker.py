"""MLflow tracking of a population run. Only the driver calls this module.

Everything goes through an explicit ``MlflowClient`` and run id (no global active run), so
a Tune trial can own a nested run while its parent search owns another.
"""

from __future__ import annotations

import csv
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from mlflow.entities import (
    DatasetInput,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    RunStatus,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from graftune.config import Config
from graftune.tracking.store import resolve_tracking_uri

PARENT_TAG = "mlflow.parentRunId"
CHECKPOINT_TAG = "graftune.tracking.checkpoint"
BEST_MODEL_TAG = "graftune.best_model"  # net{k} with the best final test accuracy
BEST_MODEL_ID_TAG = "graftune.best_model_id"  # its logged model: models:/<id>
REGISTERED_TAG = "graftune.registered_model"  # "NAME/VERSION" of --register-model


def round_metrics(networks: list[dict[str, Any]], population: dict[str, float]) -> dict:
    """A round's per-network metrics as ``net{k}/{name}`` and population metrics as
    ``population/{name}``."""
    metrics = {f"population/{k}": v for k, v in population.items()}
    for k, network in enumerate(networks):
        metrics.update(
            {f"net{k}/{name}": v for name, v in network.items() if isinstance(v, int | float)}
        )
    return metrics


def browse_command(tracking_uri: str) -> str:
    """The command that shows these runs in the MLflow UI (bound to localhost)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def open_tracker(config: Config, run_id: str = "", parent_run_id: str = "") -> Tracker:
    """The tracker of a population run: a new MLflow run for ``config``, or the stopped run
    ``run_id`` going on."""
    t = config.tracking
    return Tracker(t.tracking_uri, t.experiment, t.run_name, run_id, parent_run_id)


class Tracker:
    """One MLflow run: params, per-round metrics, tables, plots, weights, models, inputs,
    system metrics and a description."""

    enabled = True  # a NullTracker says False: nothing is logged, so nothing is prepared
    monitor = None  # the system metrics sampler, while it runs

    def __init__(
        self,
        tracking_uri: str = "",
        experiment: str = "graftune",
        run_name: str = "",
        run_id: str = "",
        parent_run_id: str = "",
    ):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        if run_id:  # resume: the same run goes on (the caller has read it already)
            self.run_id = run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = None
            if self.tracking_uri.startswith("sqlite:"):  # artifacts beside the SQLite file
                db = Path(self.tracking_uri.split("sqlite:///", 1)[-1])
                location = (db.parent / "mlartifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        tags = {PARENT_TAG: parent_run_id} if parent_run_id else {}
        run = self.client.create_run(experiment_id, run_name=run_name or None, tags=tags)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: int = 0) -> None:
        """``metrics`` at ``step``; ``timestamp`` (ms) when they were measured, else now."""
        now = timestamp or int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_round(
        self, step: int, networks: list[dict[str, Any]], population: dict[str, float]
    ) -> None:
        """:func:`round_metrics`, all at step = round."""
        self.log_metrics(round_metrics(networks, population), step)

    def log_table(self, rows: list[dict[str, Any]], artifact_path: str) -> None:
        """Rows of dicts as one CSV artifact (``artifact_path`` names the file)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_path).name
            with path.open("w", newline="") as f:
                columns = list(rows[0]) if rows else []
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_path).parent))

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_description(self, markdown: str) -> None:
        """The run's description: MLflow shows this tag at the top of the run page."""
        self.set_tag(MLFLOW_RUN_NOTE, markdown)

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        """Data sets as the run's inputs; one already logged (a resumed run) is not repeated.

        Trials that start together insert the same data set into one store at once; the
        loser of that race gets SQLite's UNIQUE error, and its retry finds the row there."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.log_inputs(self.run_id, datasets=datasets)
        except MlflowException as error:
            if "UNIQUE constraint failed: datasets" not in str(error):
                raise
            self.client.log_inputs(self.run_id, datasets=datasets)

    def log_model(
        self,
        name: str,
        module: Any,
        example: Any,
        signature: Any,
        step: int,
        tags: dict[str, str],
        params: dict[str, Any],
        metrics: list[str],
    ) -> str:
        """``module`` as MLflow PyTorch model ``name`` of this run; returns its model id.

        What ``mlflow.pytorch.log_model`` does, through this run's client: that function
        needs the global tracking URI and an active run (else its model lands in the default
        experiment). The model is a ``torch.export`` graph (MLflow 3's safe "pt2" format), so
        loading it needs neither graftune nor unpickling. The run's ``metrics`` (keys) at
        ``step`` are linked to the model as ``log_model`` links them: the same values and
        timestamps, so the run's own history shows each once.
        """
        import mlflow.pytorch  # imports torch: only a driver that logs models pays for it
        from mlflow.models import Model

        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        model = self.client.create_logged_model(
            experiment_id, name, self.run_id, tags, {k: str(v) for k, v in params.items()}
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                # The MLmodel fields that log_model writes, so runs:/ and models:/ URIs resolve.
                info = Model(
                    artifact_path=model.artifact_location,
                    model_uuid=model.model_id,
                    run_id=self.run_id,
                    model_id=model.model_id,
                )
                mlflow.pytorch.save_model(
                    module,
                    Path(tmp) / "model",
                    mlflow_model=info,
                    signature=signature,
                    input_example=example,
                    serialization_format="pt2",
                    # given, not inferred: inferring loads the model in a subprocess (seconds)
                    pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
                )
                self.client.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        linked = [
            Metric(m.key, m.value, m.timestamp, m.step, run_id=self.run_id, model_id=model.model_id)
            for key in metrics
            for m in self.client.get_metric_history(self.run_id, key)
            if m.step == step and m.model_id is None
        ]
        self.client.log_batch(self.run_id, metrics=linked)
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def register_model(self, model_id: str, name: str) -> int:
        """A new version of registered model ``name`` made from a logged model (of this run
        or another, e.g. a search's best trial); returns the version number."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        model = self.client.get_logged_model(model_id)
        # The artifact location, not models:/<id>: for that URI MLflow's registry looks the
        # model up through the global tracking URI, not this client's store. A SQL registry
        # keeps no model id either, so a tag says which logged model (and network) it is.
        version = self.client.create_model_version(
            name,
            model.artifact_location,
            run_id=model.source_run_id,
            tags={"graftune.model_id": model_id, "graftune.network": model.name},
            model_id=model_id,
        )
        return int(version.version)

    def start_system_metrics(self, resume: bool = False) -> None:
        """Sample this node's CPU, memory (and GPU) into ``system/...`` metrics until
        :meth:`finish`; a resumed run continues its steps."""
        try:
            from graftune.tracking.system_metrics import SystemMetrics
        except ImportError as error:  # psutil is missing: train anyway
            warnings.warn(f"graftune: no system metrics ({error})", stacklevel=2)
            return
        self.monitor = SystemMetrics(
            self.run_id, resume_logging=resume, tracking_uri=self.tracking_uri
        )
        self.monitor.start()

    def restart_system_metrics(self) -> None:
        """Sample again, continuing the steps, if the sampling gave up while the tracking
        server was away."""
        if self.monitor is not None and self.monitor.stopped:
            self.monitor = None
            self.start_system_metrics(resume=True)

    def finish(self, status: str = "FINISHED") -> None:
        if self.monitor is not None:  # before the run ends: its last sample still lands
            self.monitor.finish()
            self.monitor = None
        self.client.set_terminated(
            self.run_id, status=RunStatus.to_string(getattr(RunStatus, status))
        )
