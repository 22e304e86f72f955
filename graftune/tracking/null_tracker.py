"""A tracker that records nothing: the same round loop as a tracked run, without MLflow.

Benchmarks and tests hand it to :func:`graftune.tracking.experiment.run_experiment`; the run
then writes no checkpoints either (they belong to an MLflow run, which it has not).
"""

from __future__ import annotations

from typing import Any


class NullTracker:
    """Every method of :class:`~graftune.tracking.tracker.Tracker` that a run calls, doing
    nothing; ``enabled`` is False so the run skips the work done only to be logged (plots,
    exported models)."""

    enabled = False
    run_id = ""
    tracking_uri = ""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: int = 0) -> None:
        pass

    def log_round(self, step: int, networks: list[dict], population: dict[str, float]) -> None:
        pass

    def log_table(self, rows: list[dict[str, Any]], artifact_path: str) -> None:
        pass

    def log_artifacts(self, directory: Any, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_description(self, markdown: str) -> None:
        pass

    def log_inputs(self, datasets: list[Any]) -> None:
        pass

    def start_system_metrics(self, resume: bool = False) -> None:
        pass

    def restart_system_metrics(self) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass
