"""Image folders and zips (train/<class>/, test/<class>/) read into uint8 arrays, cached.

The one module that reads image files, so every damaged or hostile file is refused here, as
a one-line DataError, before any actor starts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from graftune.data.cache import Arrays, cache_dir, read_cache, write_cache

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FOLDER_HINT = "a folder or .zip with train/ and test/ class folders"
SPLITS = ("train", "test")
# Bump when the cached layout, or what a folder or zip decodes to, changes: old caches are
# not read. 2: nested folders, empty class folders and stray images are refused, not skipped,
# and 16-bit grey images keep their top 8 bits instead of clipping to white.
_CACHE_VERSION = 2
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # grey modes of 16-bit PNGs

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data cannot be loaded; the one-line message says what to change."""


def read_image_folder(data_dir: str, max_image_bytes: int) -> Arrays:
    """train/<class>/* and test/<class>/* from a folder or a zip, cached once decoded.

    Args:
        data_dir: the folder, or the .zip (read member by member, never extracted).
        max_image_bytes: the largest image file to read, and the largest image decoded.
    Returns:
        Train images, train labels, test images, test labels (images uint8 N x 3 x H x W,
        labels int64 indices into the sorted class names), and the class names.
    """
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"'{data_dir}' does not exist; point --data-dir at {FOLDER_HINT}")
    listing = None
    if path.is_file():
        stat = path.stat()  # a zip changes as a whole: its size and mtime stand for it
        key = f"zip\n{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}"
    else:
        listing, files = _list_folder(path, data_dir, max_image_bytes)
        key = "\n".join(["dir", str(path.resolve()), *files])
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{key}".encode()).hexdigest()[:20]
    cache = cache_dir() / f"imagefolder-{digest}.npz"
    arrays = read_cache(cache)
    if arrays is not None:
        return arrays
    if listing is None:
        with _open_zip(path, data_dir) as archive:
            listing = _list_zip(archive, data_dir, max_image_bytes)
            arrays = _decode(listing, lambda n: _read_member(archive, n, data_dir), max_image_bytes)
    else:
        arrays = _decode(listing, lambda n: path / n, max_image_bytes)
    write_cache(cache, arrays)
    return arrays


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"  # .DS_Store, ._x.png, editor leftovers


@dataclass
class _Listing:
    """The entries of a folder or zip, sorted into images, class folders and the rest."""

    data_dir: str
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split: (class, name)
    folders: dict[str, dict[str, str]] = field(default_factory=dict)  # split: {class: its path}
    skipped: list[str] = field(default_factory=list)  # files that are not images to read

    def __post_init__(self) -> None:
        self.images = {split: [] for split in SPLITS}
        self.folders = {split: {} for split in SPLITS}

    def add(self, name: str, is_dir: bool) -> bool:
        """Sort one entry, a path with / separators; True when it is an image to read."""
        parts = [part for part in name.split("/") if part]
        image = not is_dir and parts[-1].lower().endswith(IMAGE_SUFFIXES)
        # A zip may hold train/ and test/ under a top folder: the first split name counts.
        at = next((i for i, part in enumerate(parts) if part in SPLITS), None)
        depth = -1 if at is None or any(map(_hidden, parts)) else len(parts) - at - 1
        if depth > 2 or (depth == 2 and is_dir):
            shown = "/".join(parts) + "/" * is_dir
            raise DataError(
                f"'{shown}' in '{self.data_dir}' is nested too deep: images go directly in "
                f"{parts[at]}/<class>/, without subfolders"
            )
        if depth == 1 and image:
            raise DataError(
                f"'{name}' in '{self.data_dir}' is not in a class folder: images go in "
                f"{parts[at]}/<class>/"
            )
        if depth == 2 or (depth == 1 and is_dir):
            self.folders[parts[at]].setdefault(parts[at + 1], "/".join(parts[: at + 2]))
        if depth == 2 and image:
            self.images[parts[at]].append((parts[at + 1], name))
            return True
        if not is_dir:
            self.skipped.append(name)
        return False

    def classes(self) -> list[str]:
        """The class names, once every class folder is known to hold images."""
        for split in SPLITS:
            if not self.images[split]:
                raise DataError(
                    f"no images in {split}/<class>/ of '{self.data_dir}'; need {FOLDER_HINT}"
                )
            filled = {c for c, _ in self.images[split]}
            for c, folder in sorted(self.folders[split].items()):
                if c not in filled:
                    raise DataError(
                        f"'{folder}/' in '{self.data_dir}' holds no images; add some or "
                        f"remove the folder (every class needs train and test images)"
                    )
        classes, test_classes = sorted(self.folders["train"]), sorted(self.folders["test"])
        if classes != test_classes:
            only_train = sorted(set(classes) - set(test_classes))[:5]
            only_test = sorted(set(test_classes) - set(classes))[:5]
            raise DataError(
                f"train/ and test/ of '{self.data_dir}' have different classes "
                f"(only in train: {only_train}, only in test: {only_test})"
            )
        return classes

    def report_skipped(self) -> None:
        """One line for all the files that are not images, however many there are."""
        if self.skipped:
            shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            log.warning(
                "graftune: skipped %d non-image files in '%s' (%s)",
                len(self.skipped),
                self.data_dir,
                shown,
            )


def _list_folder(path: Path, data_dir: str, limit: int) -> tuple[_Listing, list[str]]:
    """The folder's listing, and a line per image (name, size, mtime) for the cache key."""
    listing, files = _Listing(data_dir), []
    for split in SPLITS:
        for top in _scan(path / split, data_dir):
            entries = [top]
            if top.is_dir() and not _hidden(top.name):
                entries += _scan(Path(top.path), data_dir)  # a class folder
            for entry in entries:
                name = Path(entry.path).relative_to(path).as_posix()
                if listing.add(name, entry.is_dir()):
                    # any added, removed or rewritten image: a new cache key
                    stat = _stat(entry, name, data_dir)
                    _check_file_size(name, stat.st_size, limit, data_dir)
                    files.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return listing, files


def _scan(folder: Path, data_dir: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []  # a missing train/ or test/ is reported as one without images
    except OSError as error:
        raise DataError(f"cannot list '{folder}' of '{data_dir}': {error.strerror}") from None


def _stat(entry: os.DirEntry, name: str, data_dir: str) -> os.stat_result:
    try:
        stat = entry.stat()
    except OSError as error:  # a dangling link, a file that went away
        raise DataError(f"cannot read '{name}' in '{data_dir}': {error.strerror}") from None
    if not entry.is_file():  # a fifo named x.png would block the decoder forever
        raise DataError(f"'{name}' in '{data_dir}' is not a regular file")
    return stat


def _open_zip(path: Path, data_dir: str) -> zipfile.ZipFile:
    try:
        with open(path, "rb") as file:
            looks_like_zip = file.read(4) in (b"PK\x03\x04", b"PK\x05\x06")  # a member, or empty
        return zipfile.ZipFile(path)
    except OSError as error:
        raise DataError(f"cannot read '{data_dir}': {error.strerror}") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        if not looks_like_zip:
            raise DataError(
                f"'{data_dir}' is not a .zip; point --data-dir at {FOLDER_HINT}"
            ) from None
        raise DataError(  # its directory, at the end, is what a cut-off copy loses
            f"'{data_dir}' is a truncated or damaged .zip: its directory cannot be read; "
            f"copy or download it again"
        ) from None


def _list_zip(archive: zipfile.ZipFile, data_dir: str, limit: int) -> _Listing:
    """The zip's listing, with every image member checked from the directory, unread."""
    listing = _Listing(data_dir)
    for info in archive.infolist():
        name = info.filename
        if name.startswith("/") or ".." in name.split("/"):
            # Never extracted, so harmless here, but only a crafted zip holds such a name.
            raise DataError(f"'{name}' in '{data_dir}' points outside the zip; refusing the zip")
        if not listing.add(name, info.is_dir()):
            continue
        if info.flag_bits & 0x1:  # refused before zipfile would ask for a password
            raise DataError(
                f"'{name}' in '{data_dir}' is encrypted; zip the images again without a password"
            )
        _check_file_size(name, info.file_size, limit, data_dir)
    return listing


def _read_member(archive: zipfile.ZipFile, name: str, data_dir: str) -> io.BytesIO:
    """A member's bytes; zipfile inflates no more than the size that _list_zip checked."""
    try:
        return io.BytesIO(archive.read(name))
    except NotImplementedError as error:  # Deflate64, AES...: methods zipfile cannot read
        problem = f"cannot be read ({error}); zip the images again with deflate"
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as error:
        reason = "fails its CRC-32 check" if "CRC" in str(error) else f"cannot be read ({error})"
        problem = f"{reason}: the zip is damaged; copy or download it again"
    raise DataError(f"'{name}' in '{data_dir}' {problem}")


def _check_file_size(name: str, size: int, limit: int, data_dir: str) -> None:
    if size > limit:
        raise DataError(f"'{name}' in '{data_dir}' is {_bytes(size)}, {_over(limit)}")


def _over(limit: int) -> str:
    return (
        f"over the {_bytes(limit)} limit for one image; if it is genuine, raise "
        f"--max-image-bytes (now {limit})"
    )


def _bytes(size: int) -> str:
    """A size for a message: '16 MiB', '687.7 MiB', '700 bytes'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def _decode(listing: _Listing, read: Callable, limit: int) -> Arrays:
    """Every listed image as N x 3 x H x W uint8, each one's size checked from its header."""
    classes, data_dir = listing.classes(), listing.data_dir
    listing.report_skipped()
    index = {c: i for i, c in enumerate(classes)}
    total = sum(len(items) for items in listing.images.values())
    out, shape = [], None
    with warnings.catch_warnings():
        # Pillow warns of images over 89 Mpx and raises over 179 Mpx: both become refusals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Dropping a palette's transparency is the point of convert("RGB"): no line per image.
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        for split in SPLITS:
            items = sorted(listing.images[split])  # by class, then file name: a stable order
            images = None
            for i, (_, name) in enumerate(items):
                source = read(name)
                with _open_image(source, name, data_dir) as image:
                    shape = _check_size(image.size, shape, limit, name, data_dir)
                    if images is None:
                        images = _allocate(len(items), total, shape, data_dir)
                    images[i] = _rgb(image, name, data_dir).transpose(2, 0, 1)
            out += [images, np.array([index[c] for c, _ in items], np.int64)]
    return (*out, classes)


def _open_image(source: Path | io.BytesIO, name: str, data_dir: str) -> Image.Image:
    """The image with its header read, its pixels not yet decoded."""
    try:
        return Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = str(error).split(", could be")[0].lower()  # Pillow's sizes, without its alarm
        raise DataError(
            f"'{name}' in '{data_dir}' is refused as a possible decompression bomb: {reason}"
        ) from None
    except Exception as error:  # noqa: BLE001 (Pillow's plugins raise many types for bad files)
        raise DataError(f"cannot decode '{name}' in '{data_dir}': {error}") from None


def _check_size(
    size: tuple[int, int], shape: tuple[int, int] | None, limit: int, name: str, data_dir: str
) -> tuple[int, int]:
    """(height, width) of an image, from its header: checked before a pixel is decoded, so
    neither a bomb nor the first image can size an allocation beyond the limit."""
    width, height = size
    if width * height * 3 > limit:
        raise DataError(
            f"'{name}' in '{data_dir}' is {width}x{height} pixels, {_bytes(width * height * 3)} "
            f"decoded, {_over(limit)}"
        )
    if shape is not None and (height, width) != shape:
        raise DataError(
            f"'{name}' in '{data_dir}' is {width}x{height} but the first image is "
            f"{shape[1]}x{shape[0]}; all images must have one size"
        )
    return height, width


def _allocate(count: int, total: int, shape: tuple[int, int], data_dir: str) -> np.ndarray:
    """count x 3 x H x W uint8, once the total of both splits is known to fit in memory."""
    height, width = shape
    need, memory = total * 3 * height * width, _memory_bytes()
    try:
        if memory is None or need <= memory:
            return np.empty((count, 3, height, width), np.uint8)
    except MemoryError:
        pass
    raise DataError(
        f"the {total} images of '{data_dir}' are {width}x{height}: as uint8 arrays they need "
        f"{_bytes(need)}, more than this machine's memory"
        + (f" ({_bytes(memory)})" if memory else "")
        + "; make them smaller"
    )


def _memory_bytes() -> int | None:
    """This machine's memory; None where the OS does not say (np.empty's MemoryError guards)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _rgb(image: Image.Image, name: str, data_dir: str) -> np.ndarray:
    """The decoded H x W x 3 uint8 pixels of an image of any mode.

    Grey, palette and RGBA images become RGB as torchvision's ImageFolder loader makes them
    (convert("RGB"): grey repeated, alpha dropped, not blended), so a network sees the same
    pixels here as there. 16-bit grey keeps its top 8 bits: convert("RGB") would clip every
    value above 255 to white.
    """
    try:
        if image.mode == "RGB":
            return np.asarray(image)
        if image.mode in _SIXTEEN_BIT:
            grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    except Exception as error:  # noqa: BLE001 (Pillow's decoders raise many types for bad data)
        raise DataError(f"cannot decode '{name}' in '{data_dir}': {error}") from None
