"""Which stopped run ``--resume`` continues: found once, checked against the new settings,
and claimed (its lease taken) before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from graftune.config import Config, ConfigError, flatten
from graftune.tracking.checkpoint import Resume, check_compatible, read_checkpoint
from graftune.tracking.lease import acquire, lease_path
from graftune.tracking.tracker import CHECKPOINT_TAG, resolve_tracking_uri


def stopped_run(client: MlflowClient, run_id: str) -> Resume:
    """The stopped run ``run_id`` of the store ``client`` reads, with its last checkpoint:
    its settings are the truth. The run is fetched once, here; :func:`claim` it once every
    other setting has been checked."""
    try:
        run = client.get_run(run_id)
    except Exception as error:  # MLflow raises its own types for an unknown run
        raise ConfigError(
            f"--resume {run_id}: no such MLflow run ({type(error).__name__})"
        ) from None
    if run.info.status == "FINISHED":
        raise ConfigError(
            f"--resume {run_id}: the run finished, so there is nothing to resume; "
            f"start a new run (its settings are in the run's config.yaml)"
        )
    path = run.data.tags.get(CHECKPOINT_TAG, "")
    if not path or not Path(path).exists():
        raise ConfigError(f"--resume {run_id}: its checkpoint {path or '(none)'} is missing")
    if not Path(path).is_file():
        raise ConfigError(f"--resume {run_id}: its checkpoint {path} is not a file")
    return Resume(run_id, read_checkpoint(path, f"--resume {run_id}"), path)


def claim(resume: Resume) -> Resume:
    """Take the stopped run's lease before anything starts: one driver per run."""
    acquire(lease_path(resume.path), resume.run_id)
    return resume


def resume_payload(config: Config) -> Resume | None:
    """The stopped run of ``config``'s ``resume`` setting, checked against the config."""
    run_id = config.population.resume
    if not run_id:
        return None
    resume = stopped_run(MlflowClient(resolve_tracking_uri(config.tracking.tracking_uri)), run_id)
    check_compatible(resume.payload, config.model.model, config.population.num_models)
    return claim(resume)


def resume_overrides(config: Config, payload: dict[str, Any]) -> dict[str, Any]:
    """The settings a resume changes against its checkpoint's (``--resume`` itself aside)."""
    saved = payload.get("config", {})
    return {
        k: v
        for k, v in flatten(config).items()
        if k != "population/resume" and k in saved and str(saved[k]) != str(v)
    }
