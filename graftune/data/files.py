"""Image folders and zips (train/<class>/, test/<class>/) read into uint8 arrays, cached.

The one module that reads image files, so every damaged or hostile file is refused here, as
a one-line DataError, before any actor starts.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FOLDER_HINT = "a folder or .zip with train/ and test/ class folders"
_CACHE_VERSION = 1  # bump when the cached layout changes, so old caches are not read

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]


class DataError(ValueError):
    """The data cannot be loaded; the one-line message says what to change."""


def read_image_folder(data_dir: str) -> Arrays:
    """train/<class>/* and test/<class>/* from a folder or a zip, cached once decoded."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"'{data_dir}' does not exist; point --data-dir at {FOLDER_HINT}")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"'{data_dir}' is not a .zip; point --data-dir at {FOLDER_HINT}")
        stat = path.stat()  # a zip changes as a whole: its size and mtime stand for it
        key = f"zip\n{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}"
    else:
        files = sorted(p for split in ("train", "test") for p in (path / split).glob("*/*"))
        names = [p.relative_to(path).as_posix() for p in files]
        stats = [p.stat() for p in files]  # any added, removed or rewritten file: a new key
        listing = [f"{n}\t{s.st_size}\t{s.st_mtime_ns}" for n, s in zip(names, stats)]
        key = "\n".join(["dir", str(path.resolve()), *listing])
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{key}".encode()).hexdigest()[:20]
    cache = _cache_dir() / f"imagefolder-{digest}.npz"
    arrays = _read_cache(cache)
    if arrays is not None:
        return arrays
    if path.is_file():
        with zipfile.ZipFile(path) as archive:  # read member by member, never extracted
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            arrays = _decode_folder(names, lambda n: io.BytesIO(archive.read(n)), data_dir)
    else:
        arrays = _decode_folder(names, lambda n: path / n, data_dir)
    _write_cache(cache, arrays)
    return arrays


def _decode_folder(names: list[str], read: Callable, data_dir: str) -> Arrays:
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for name in names:
        parts = name.split("/")  # zip members may sit under one top folder: take the last 3
        image = parts[-1].lower().endswith(IMAGE_SUFFIXES) and not parts[-1].startswith(".")
        if image and len(parts) >= 3 and parts[-3] in splits and "__MACOSX" not in parts:
            splits[parts[-3]].append((parts[-2], name))
    classes = sorted({c for c, _ in splits["train"]})
    test_classes = sorted({c for c, _ in splits["test"]})
    for split, found in splits.items():
        if not found:
            raise DataError(f"no images in {split}/<class>/ of '{data_dir}'; need {FOLDER_HINT}")
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))[:5]
        only_test = sorted(set(test_classes) - set(classes))[:5]
        raise DataError(
            f"train/ and test/ of '{data_dir}' have different classes "
            f"(only in train: {only_train}, only in test: {only_test})"
        )
    index = {c: i for i, c in enumerate(classes)}
    out = []
    shape: tuple[int, int] | None = None
    for split in ("train", "test"):
        items = sorted(splits[split])  # by class, then file name: a stable order
        images: np.ndarray | None = None
        for i, (_, name) in enumerate(items):
            try:
                with Image.open(read(name)) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as error:
                raise DataError(f"cannot decode '{name}' in '{data_dir}': {error}") from None
            if shape is None:
                shape = pixels.shape[:2]
            if pixels.shape[:2] != shape:
                raise DataError(
                    f"'{name}' in '{data_dir}' is {pixels.shape[1]}x{pixels.shape[0]} but the "
                    f"first image is {shape[1]}x{shape[0]}; all images must have one size"
                )
            if images is None:
                images = np.empty((len(items), *shape, 3), np.uint8)
            images[i] = pixels
        out += [
            np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
            np.array([index[c] for c, _ in items], np.int64),
        ]
    return (*out, classes)


def _cache_dir() -> Path:
    return Path(os.environ.get("GRAFTUNE_CACHE") or Path.home() / ".cache" / "graftune")


def _read_cache(file: Path) -> Arrays | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = [z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")]
            classes = [str(c) for c in z["classes"]]
    except Exception:  # noqa: BLE001 (missing, truncated or foreign: decode it again)
        return None
    if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]):
        return None
    return (*arrays, classes)


def _write_cache(file: Path, arrays: Arrays) -> None:
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # uncompressed: loads in well under a second
            keys = ("train_images", "train_labels", "test_images", "test_labels")
            np.savez(f, **dict(zip(keys, arrays[:4])), classes=np.array(arrays[4]))
        os.replace(tmp, file)  # readers see the old file or the whole new one, never half
    except OSError as error:  # a read-only home must not stop training: decode next time
        warnings.warn(f"graftune: could not write the image cache {file}: {error}", stacklevel=2)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
