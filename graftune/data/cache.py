"""The decoded arrays of an image folder or zip (and a streamed set's listing), cached as one
.npz each: decoding and header checks are done once."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


def cache_dir() -> Path:
    return Path(os.environ.get("GRAFTUNE_CACHE") or Path.home() / ".cache" / "graftune")


def read_cache(file: Path) -> Arrays | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = [z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")]
            classes = [str(c) for c in z["classes"]]
    except Exception:  # noqa: BLE001 (missing, truncated or foreign: decode it again)
        return None
    if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]):
        return None
    return (*arrays, classes)


def write_cache(file: Path, arrays: Arrays) -> None:
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    write_arrays(file, {**dict(zip(keys, arrays[:4])), "classes": np.array(arrays[4])})


def write_arrays(file: Path, arrays: dict[str, np.ndarray], what: str = "image cache") -> None:
    """Write ``arrays`` as one .npz, atomically; a folder that cannot be written warns."""
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # uncompressed: loads in well under a second
            np.savez(f, **arrays)
        os.replace(tmp, file)  # readers see the old file or the whole new one, never half
    except OSError as error:  # a read-only home must not stop training: decode next time
        warnings.warn(f"graftune: could not write the {what} {file}: {error}", stacklevel=2)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
