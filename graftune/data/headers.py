"""Image sets listed for streaming: every image named, labelled and its header checked once,
at start-up, without decoding a pixel; the listing is cached beside the decoded arrays.

What the in-memory path refuses is refused here too, by the same code (``files`` lists the
folder or zip, ``decode`` opens each header): non-images are skipped and counted, hostile zip
members, paths outside, bombs and images over ``--max-image-bytes`` stop the start-up with one
line. Only the sizes may differ: a streamed set is resized batch by batch.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from graftune.data.cache import cache_dir, write_arrays
from graftune.data.decode import SPLITS, check_size, open_image
from graftune.data.files import Listing, list_zip, open_zip, read_member, source_key


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
    if listing is None:
        with open_zip(path, data_dir) as archive:
            listing = list_zip(archive, data_dir, max_image_bytes)
            out = _check(listing, lambda n: read_member(archive, n, data_dir), max_image_bytes)
    else:
        out = _check(listing, lambda n: path / n, max_image_bytes)
    result = ImageListing(str(path.resolve()), path.is_file(), *out)
    _write(cache, result)
    return result


def _check(listing: Listing, read, limit: int) -> tuple:
    classes = listing.classes()  # a refusal first: bad input is one line, not a warning too
    listing.report_skipped()
    index = {c: i for i, c in enumerate(classes)}
    names, labels, sizes = {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, as decode does
        for split in SPLITS:
            items = sorted(listing.images[split])  # by class, then file name: a stable order
            wh = np.empty((len(items), 2), np.int32)
            for i, (_, name) in enumerate(items):
                with open_image(read(name), name, listing.data_dir) as image:
                    height, width = check_size(image.size, None, limit, name, listing.data_dir)
                wh[i] = width, height
            names[split] = np.array([n for _, n in items], dtype=str)
            labels[split] = np.array([index[c] for c, _ in items], np.int64)
            sizes[split] = wh
    return classes, names, labels, sizes


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
