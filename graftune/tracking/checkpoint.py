"""Population checkpoints on disk: written atomically, read with ``weights_only=True``; a
:class:`Resume` is the one form in which a stopped run's checkpoint reaches the experiment."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graftune.config import ConfigError

CHECKPOINT_NAME = "population.pt"


@dataclass
class Resume:
    """A stopped run to continue: its MLflow run, its last checkpoint and where that lives
    (later checkpoints of the run are written there too). ``graftune.run --resume`` reads it
    from the tracking store, a restored Tune trial from its Tune checkpoint."""

    run_id: str
    payload: dict[str, Any]
    path: str

    @property
    def round(self) -> int:
        """The last finished round; the run goes on with the next."""
        return int(self.payload["round"])


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


def read_checkpoint(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A checkpoint a user points at (``what``: the flag that names it): a
    :class:`ConfigError` naming the file when it is damaged or not a graftune checkpoint."""
    try:
        payload = load_checkpoint(path)
    except Exception as error:  # torch raises many types for a file that is not its own
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise ConfigError(f"{what}: checkpoint {path} cannot be read ({reason})") from None
    fields = {"config": dict, "states": list, "round": int, "history": list, "records": list}
    wrong = [
        name
        for name, kind in fields.items()
        if not isinstance(payload, dict) or not isinstance(payload.get(name), kind)
    ]
    if wrong or not all(isinstance(s, dict) for s in payload["states"]):
        raise ConfigError(
            f"{what}: {path} is not a graftune population checkpoint "
            f"(missing or wrong: {', '.join(wrong) or 'states'})"
        )
    return payload


def check_compatible(payload: dict[str, Any], model_name: str, num_models: int) -> None:
    """Refuse a checkpoint of another architecture or population size before any actor
    starts: a :class:`ConfigError`, since the flags (or the run chosen) are what is wrong."""
    saved_model = payload["config"]["model/model"]
    if saved_model != model_name:
        raise ConfigError(
            f"--model {model_name} does not match the checkpoint, which holds {saved_model}; "
            f"resume with --model {saved_model} or start a new run"
        )
    if len(payload["states"]) != num_models:
        raise ConfigError(
            f"--num-models {num_models} does not match the checkpoint's "
            f"{len(payload['states'])} networks"
        )
