"""Population checkpoints on disk: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "population.pt"


def checkpoint_path(directory: str | os.PathLike, run_id: str) -> Path:
    return Path(directory).resolve() / run_id / CHECKPOINT_NAME


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write to a temporary file in the same directory, then rename over the old checkpoint,
    so a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint; only tensors and plain containers are accepted (no pickled code)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def check_compatible(payload: dict[str, Any], model_name: str, num_models: int) -> None:
    """Refuse a checkpoint of another architecture or population size before any actor starts."""
    saved_model = payload["config"]["model/model"]
    if saved_model != model_name:
        raise ValueError(
            f"--model {model_name} does not match the checkpoint, which holds {saved_model}; "
            f"resume with --model {saved_model} or start a new run"
        )
    if len(payload["states"]) != num_models:
        raise ValueError(
            f"--num-models {num_models} does not match the checkpoint's "
            f"{len(payload['states'])} networks"
        )
