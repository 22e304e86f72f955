import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for all population tests: starting Ray costs seconds on 2 cores."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def smoke_args(tmp_path, *extra: str) -> list[str]:
    """Command-line settings of a population that trains in seconds on a CPU.

    Without MLflow models: exporting them costs seconds a run (test_tracking_models.py turns
    them on with --log-models)."""
    return [
        "--model", "tiny_cnn", "--dataset", "synthetic", "--synthetic-size", "256",
        "--epochs", "2", "--batch-size", "64", "--lr", "0.05",
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--no-log-models",
        *extra,
    ]  # fmt: skip
