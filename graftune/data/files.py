"""Image folders and zips (train/<class>/, and test/<class>/ or val/<class>/) read into uint8
arrays, cached.

With ``decode``, the one place that reads image files, so every damaged or hostile file is
refused there, as a one-line DataError, before any actor starts. This module lists and opens
the folder or zip (names, sizes, CRCs, nesting); ``decode`` turns the listed images into
arrays.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from graftune.data.cache import Arrays, cache_dir, read_cache, write_cache
from graftune.data.decode import SPLITS, decode_images, over_limit, size_text
from graftune.data.errors import DataError

__all__ = ["FOLDER_HINT", "DataError", "list_zip", "open_zip", "read_image_folder"]
__all__ += ["read_member", "source_key"]  # for headers, which lists without decoding

# ImageNet names its test split val/: either name is the test split, never both.
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FOLDER_HINT = "a folder or .zip with train/ and test/ (or val/) class folders"
# Bump when the cached layout, or what a folder or zip decodes to, changes: old caches are
# not read. 2: nested folders, empty class folders and stray images are refused, not skipped,
# and 16-bit grey images keep their top 8 bits instead of clipping to white. 3: val/ is read
# as the test split.
_CACHE_VERSION = 3

log = logging.getLogger(__name__)


def read_image_folder(data_dir: str, max_image_bytes: int, listed: bool = False) -> Arrays:
    """train/<class>/* and test/<class>/* from a folder or a zip, cached once decoded.

    Args:
        data_dir: the folder, or the .zip (read member by member, never extracted).
        max_image_bytes: the largest image file to read, and the largest image decoded.
        listed: the start-up listed it already (``headers``) and reported its non-images.
    Returns:
        Train images, train labels, test images, test labels (images uint8 N x 3 x H x W,
        labels int64 indices into the sorted class names), and the class names.
    """
    path, listing, key = source_key(data_dir, max_image_bytes)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    cache = cache_dir() / f"imagefolder-{digest}.npz"
    arrays = read_cache(cache)
    if arrays is not None:
        return arrays
    if listing is None:
        with open_zip(path, data_dir) as archive:
            listing = list_zip(archive, data_dir, max_image_bytes)
            read = lambda n: read_member(archive, n, data_dir)  # noqa: E731
            arrays = _decode(listing, read, max_image_bytes, listed)
    else:
        arrays = _decode(listing, lambda n: path / n, max_image_bytes, listed)
    write_cache(cache, arrays)
    return arrays


def source_key(data_dir: str, max_image_bytes: int) -> tuple[Path, Listing | None, str]:
    """The folder or zip, its listing (a folder's; None for a zip, which is listed only when
    needed) and a key that changes whenever an image, or the limit, does."""
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
    # The limit is part of the key: a cache decoded under a looser one is not reused.
    return path, listing, f"v{_CACHE_VERSION}\nlimit {max_image_bytes}\n{key}"


def _decode(listing: Listing, read: Callable, limit: int, listed: bool) -> Arrays:
    classes = listing.classes()  # a refusal first: bad input is one line, not a warning too
    if not listed:
        listing.report_skipped()
    return decode_images(listing.images, classes, read, limit, listing.data_dir)


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"  # .DS_Store, ._x.png, editor leftovers


@dataclass
class Listing:
    """The entries of a folder or zip, sorted into images, class folders and the rest."""

    data_dir: str
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split: (class, name)
    folders: dict[str, dict[str, str]] = field(default_factory=dict)  # split: {class: its path}
    skipped: list[str] = field(default_factory=list)  # files that are not images to read
    names: dict[str, str] = field(default_factory=dict)  # split: its folder's name (val/)

    def __post_init__(self) -> None:
        self.images = {split: [] for split in SPLITS}
        self.folders = {split: {} for split in SPLITS}
        self.names = {split: split for split in SPLITS}

    def _split(self, folder: str) -> str:
        """The split a top folder holds; a set with both test/ and val/ is refused."""
        split = SPLIT_FOLDERS[folder]
        if self.folders[split] and self.names[split] != folder:
            raise DataError(
                f"'{self.data_dir}' holds both {self.names[split]}/ and {folder}/; keep one "
                f"of them as the test split"
            )
        self.names[split] = folder
        return split

    def add(self, name: str, is_dir: bool) -> bool:
        """Sort one entry, a path with / separators; True when it is an image to read."""
        parts = [part for part in name.split("/") if part]
        image = not is_dir and parts[-1].lower().endswith(IMAGE_SUFFIXES)
        # A zip may hold train/ and test/ under a top folder: the first split name counts.
        at = next((i for i, part in enumerate(parts) if part in SPLIT_FOLDERS), None)
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
            split = self._split(parts[at])
            self.folders[split].setdefault(parts[at + 1], "/".join(parts[: at + 2]))
        if depth == 2 and image:
            self.images[SPLIT_FOLDERS[parts[at]]].append((parts[at + 1], name))
            return True
        if not is_dir:
            self.skipped.append(name)
        return False

    def classes(self) -> list[str]:
        """The class names, once every class folder is known to hold images."""
        for split in SPLITS:
            if not self.images[split]:
                raise DataError(
                    f"no images in {self.names[split]}/<class>/ of '{self.data_dir}'"
                    f"{self.skipped_note(split)}; need {FOLDER_HINT}"
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
            test = self.names["test"]
            raise DataError(
                f"train/ and {test}/ of '{self.data_dir}' have different classes "
                f"(only in train: {only_train}, only in {test}: {only_test})"
            )
        return classes

    def shown_skipped(self, split: str | None = None) -> str:
        """The first few of the files that are not images (of one split, if given)."""
        folder = self.names.get(split, split) if split else None
        names = [n for n in self.skipped if folder is None or folder in n.split("/")]
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    def skipped_note(self, split: str) -> str:
        """`` (skipped as not images: a, b, c, ...)`` for a split's refusal, or ""."""
        shown = self.shown_skipped(split)
        return f" (skipped as not images: {shown})" if shown else ""

    def report_skipped(self) -> None:
        """One line for all the files that are not images, however many there are."""
        if self.skipped:
            log.warning(
                "graftune: skipped %d non-image files in '%s' (%s)",
                len(self.skipped),
                self.data_dir,
                self.shown_skipped(),
            )


def _list_folder(path: Path, data_dir: str, limit: int) -> tuple[Listing, list[str]]:
    """The folder's listing, and a line per image (name, size, mtime) for the cache key."""
    listing, files = Listing(data_dir), []
    for split in SPLIT_FOLDERS:
        for top in _scan(path / split, data_dir):
            entries = [top]
            if _is_dir(top, data_dir) and not _hidden(top.name):
                entries += _scan(Path(top.path), data_dir)  # a class folder
            for entry in entries:
                name = Path(entry.path).relative_to(path).as_posix()
                if listing.add(name, _is_dir(entry, data_dir)):
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


def _is_dir(entry: os.DirEntry, data_dir: str) -> bool:
    try:
        return entry.is_dir()
    except OSError as error:  # a link that loops back on itself
        raise DataError(f"cannot read '{entry.path}' of '{data_dir}': {error.strerror}") from None


def _stat(entry: os.DirEntry, name: str, data_dir: str) -> os.stat_result:
    try:
        stat = entry.stat()
    except OSError as error:  # a dangling link, a file that went away
        raise DataError(f"cannot read '{name}' in '{data_dir}': {error.strerror}") from None
    if not entry.is_file():  # a fifo named x.png would block the decoder forever
        raise DataError(f"'{name}' in '{data_dir}' is not a regular file")
    return stat


def open_zip(path: Path, data_dir: str) -> zipfile.ZipFile:
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


def list_zip(archive: zipfile.ZipFile, data_dir: str, limit: int) -> Listing:
    """The zip's listing, with every image member checked from the directory, unread."""
    listing = Listing(data_dir)
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


def read_member(archive: zipfile.ZipFile, name: str, data_dir: str) -> io.BytesIO:
    """A member's bytes; zipfile inflates no more than the size that list_zip checked."""
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
        raise DataError(f"'{name}' in '{data_dir}' is {size_text(size)}, {over_limit(limit)}")
