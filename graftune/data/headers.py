"""Image sets listed for streaming: every image named, labelled and its header checked once,
at start-up, without decoding a pixel; the listing is cached beside the decoded arrays.

What the in-memory path refuses is refused here too, by the same code (``files`` lists the
folder or zip, ``decode`` opens each header): non-images are skipped and counted, hostile zip
members, paths outside, bombs and images over ``--max-image-bytes`` stop the start-up with one
line. Only the sizes may differ: a streamed set is resized batch by batch.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from graftune.data.cache import cache_dir, write_arrays
from graftune.data.decode import SPLITS, check_size, open_image
from graftune.data.files import Listing, list_zip, open_zip, read_member, source_key
from graftune.data.loader import usable_cpus

PARALLEL_FROM = 20_000  # images: below, one process reads the headers (about 0.1 ms each)
CHUNK = 2_048  # headers per task


@dataclass
class ImageListing:
    """The images of a folder or zip: names, labels and (width, height) per split."""

    path: str  # the folder or zip, resolved: what each decoding process opens
    is_zip: bool
    classes: list[str]
    names: dict[str, np.ndarray]  # split: member or file names, sorted by class, then name
    labels: dict[str, np.ndarray]  # split: int64 indices into classes
    sizes: dict[str, np.ndarray]  # split: int32 [N, 2] width, height from each header

    def one_size(self) -> tuple[int, int] | None:
        """(width, height) shared by every image, or None when sizes differ."""
        both = np.concatenate([self.sizes[s] for s in SPLITS])
        return tuple(int(v) for v in both[0]) if (both == both[0]).all() else None

    def digest(self, split: str, keep: np.ndarray | None = None) -> str:
        """16 hex digits over a split's names, labels and sizes (of ``keep`` only, if given):
        a file added, removed, relabelled or resized changes it."""
        keep = np.arange(len(self.labels[split])) if keep is None else keep
        digest = hashlib.blake2b(digest_size=8)
        digest.update("\n".join([*self.classes, *self.names[split][keep]]).encode())
        digest.update(np.ascontiguousarray(self.labels[split][keep]).tobytes())
        digest.update(np.ascontiguousarray(self.sizes[split][keep]).tobytes())
        return digest.hexdigest()


def list_images(data_dir: str, max_image_bytes: int) -> ImageListing:
    """List ``data_dir`` (a folder or .zip with train/ and test/ or val/ class folders) and
    check every image's header; DataError for anything the in-memory path would refuse
    except differing sizes. Cached: a second start-up on the same files reads no image."""
    path, listing, key = source_key(data_dir, max_image_bytes)
    cache = cache_dir() / f"listing-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    cached = _read(cache, str(path.resolve()), path.is_file())
    if cached is not None:
        return cached
    with open_zip(path, data_dir) if listing is None else nullcontext() as archive:
        if archive is not None:  # a zip: its directory is read once, for both
            listing = list_zip(archive, data_dir, max_image_bytes)
        out = _check(listing, str(path), archive, max_image_bytes)
    result = ImageListing(str(path.resolve()), path.is_file(), *out)
    _write(cache, result)
    return result


def _check(listing: Listing, path: str, archive: zipfile.ZipFile | None, limit: int) -> tuple:
    classes = listing.classes()  # a refusal first: bad input is one line, not a warning too
    listing.report_skipped()
    index = {c: i for i, c in enumerate(classes)}
    items = {split: sorted(listing.images[split]) for split in SPLITS}  # by class, then name
    names = {split: [n for _, n in items[split]] for split in SPLITS}
    every = [n for split in SPLITS for n in names[split]]
    chunks = [every[i : i + CHUNK] for i in range(0, len(every), CHUNK)]
    data_dir = listing.data_dir
    is_zip = archive is not None
    check = partial(header_sizes, path, is_zip, data_dir=data_dir, limit=limit)
    processes = min(len(chunks), usable_cpus())
    if len(every) < PARALLEL_FROM or processes < 2:
        sizes = [check(chunk, archive=archive) for chunk in chunks]
    else:  # a start-up's minutes on ImageNet's 1.28 M files: every core reads headers
        print(
            f"graftune: reading the headers of {len(every):,} images in '{listing.data_dir}' "
            f"with {processes} processes (once: the listing is cached)",
            file=sys.stderr,
            flush=True,
        )
        opens = (_open_archive, (path, data_dir)) if is_zip else (None, ())
        with ProcessPoolExecutor(processes, initializer=opens[0], initargs=opens[1]) as pool:
            sizes = list(pool.map(check, chunks))  # in order: the first bad file is named
    wh = np.concatenate(sizes) if sizes else np.empty((0, 2), np.int32)
    out_names, labels, out_sizes, start = {}, {}, {}, 0
    for split in SPLITS:
        count = len(names[split])
        out_names[split] = np.array(names[split], dtype=str)
        labels[split] = np.array([index[c] for c, _ in items[split]], np.int64)
        out_sizes[split] = wh[start : start + count]
        start += count
    return classes, out_names, labels, out_sizes


def header_sizes(
    path: str, is_zip: bool, names: list[str], data_dir: str, limit: int, archive=None
) -> np.ndarray:
    """int32 [N, 2] (width, height) of each image's header in the folder or zip ``path``
    (``archive``: the zip, open; a header-reading process opened its own), refused
    (DataError) as the in-memory path refuses it."""
    archive = archive if archive is not None or not is_zip else _ARCHIVE
    wh = np.empty((len(names), 2), np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, as decode does
        for i, name in enumerate(names):
            source = read_member(archive, name, data_dir) if is_zip else Path(path) / name
            with open_image(source, name, data_dir) as image:
                height, width = check_size(image.size, None, limit, name, data_dir)
            wh[i] = width, height
    return wh


_ARCHIVE: zipfile.ZipFile | None = None  # a header-reading process's own open zip


def _open_archive(path: str, data_dir: str) -> None:
    """Open the zip once per header-reading process: its directory is read once, not once
    a chunk (ImageNet's has 1.28 M entries)."""
    global _ARCHIVE
    _ARCHIVE = open_zip(Path(path), data_dir)


def _read(file: Path, path: str, is_zip: bool) -> ImageListing | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            parts = [{s: z[f"{kind}_{s}"] for s in SPLITS} for kind in ("names", "labels", "sizes")]
            classes = [str(c) for c in z["classes"]]
    except Exception:  # noqa: BLE001 (missing, truncated or foreign: list it again)
        return None
    return ImageListing(path, is_zip, classes, *parts)


def _write(file: Path, listing: ImageListing) -> None:
    arrays = {"classes": np.array(listing.classes, dtype=str)}
    for kind in ("names", "labels", "sizes"):
        arrays.update({f"{kind}_{s}": getattr(listing, kind)[s] for s in SPLITS})
    write_arrays(file, arrays, "listing cache")
