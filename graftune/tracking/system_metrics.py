"""MLflow's own system metrics (CPU, memory, disk, network, and GPU with nvidia-ml-py) for a
run, sampled in a thread of the process that calls it: the driver, so the driver's node.

Imported only when a run starts its sampling, because MLflow's monitors need psutil.
"""

from __future__ import annotations

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor


class SystemMetrics(SystemMetricsMonitor):
    """MLflow's monitor, plus one sample when the run ends before the first was logged.

    MLflow logs a sample only after each sampling interval (10 s unless
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise), so a run shorter than that
    would show no system metrics at all. The closing sample averages the CPU use since the
    first one (psutil's ``cpu_percent`` measures since its previous call), so it describes
    the whole short run.
    """

    logged = 0  # samples published so far

    @property
    def stopped(self) -> bool:
        """Whether the sampling thread has ended before :meth:`finish`: MLflow's loop gives
        up for good when a call to the tracking server fails."""
        thread = getattr(self, "_process", None)
        return thread is not None and not thread.is_alive()

    def publish_metrics(self, metrics) -> None:
        super().publish_metrics(metrics)
        self.logged += 1

    def finish(self) -> None:
        super().finish()  # stops and joins the sampling thread: nothing else collects now
        if not self.logged:
            self.collect_metrics()
            self.publish_metrics(self.aggregate_metrics())
            self.mlflow_logger.flush()
