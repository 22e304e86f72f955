"""Images decoded safely into uint8 arrays: each one's size is checked from its header before
a pixel is decoded, the arrays are allocated only once they fit in memory, and every mode
becomes RGB as torchvision's ImageFolder makes it. ``files`` lists what to decode."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from graftune.data.cache import Arrays
from graftune.data.errors import DataError

SPLITS = ("train", "test")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # grey modes of 16-bit PNGs


def over_limit(limit: int) -> str:
    return (
        f"over the {size_text(limit)} limit for one image; if it is genuine, raise "
        f"--max-image-bytes (now {limit})"
    )


def size_text(size: int) -> str:
    """A size for a message: '16 MiB', '687.7 MiB', '700 bytes'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def decode_images(
    images: dict[str, list[tuple[str, str]]],
    classes: list[str],
    read: Callable[[str], Path | io.BytesIO],
    limit: int,
    data_dir: str,
) -> Arrays:
    """Every listed image as N x 3 x H x W uint8, each one's size checked from its header.

    Args:
        images: per split, ``(class, name)`` of each image.
        classes: the class names, sorted; a label is an index into them.
        read: a name to the file or the bytes to open.
        limit: the largest image, decoded, in bytes.
        data_dir: the folder or zip, for messages.
    """
    index = {c: i for i, c in enumerate(classes)}
    total = sum(len(items) for items in images.values())
    out, shape = [], None
    with warnings.catch_warnings():
        # Pillow warns of images over 89 Mpx and raises over 179 Mpx: both become refusals.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Dropping a palette's transparency is the point of convert("RGB"): no line per image.
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        for split in SPLITS:
            items = sorted(images[split])  # by class, then file name: a stable order
            pixels = None
            for i, (_, name) in enumerate(items):
                source = read(name)
                with open_image(source, name, data_dir) as image:
                    shape = check_size(image.size, shape, limit, name, data_dir)
                    if pixels is None:
                        pixels = _allocate(len(items), total, shape, data_dir)
                    pixels[i] = _rgb(image, name, data_dir).transpose(2, 0, 1)
            out += [pixels, np.array([index[c] for c, _ in items], np.int64)]
    return (*out, classes)


def open_image(source: Path | io.BytesIO, name: str, data_dir: str) -> Image.Image:
    """The image with its header read, its pixels not yet decoded."""
    try:
        return Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = str(error).split(", could be")[0].lower()  # Pillow's sizes, without its alarm
        raise DataError(
            f"'{name}' in '{data_dir}' is refused as a possible decompression bomb: {reason}"
        ) from None
    except Exception as error:  # noqa: BLE001 (Pillow's plugins raise many types for bad files)
        reason = str(error).replace(repr(source), "").strip()  # Pillow names a zip's buffer
        raise DataError(f"cannot decode '{name}' in '{data_dir}': {reason}") from None


def check_size(
    size: tuple[int, int], shape: tuple[int, int] | None, limit: int, name: str, data_dir: str
) -> tuple[int, int]:
    """(height, width) of an image, from its header: checked before a pixel is decoded, so
    neither a bomb nor the first image can size an allocation beyond the limit."""
    width, height = size
    if width * height * 3 > limit:
        raise DataError(
            f"'{name}' in '{data_dir}' is {width}x{height} pixels, {size_text(width * height * 3)} "
            f"decoded, {over_limit(limit)}"
        )
    if shape is not None and (height, width) != shape:
        raise DataError(
            f"'{name}' in '{data_dir}' is {width}x{height} but the first image is "
            f"{shape[1]}x{shape[0]}; all images must have one size in memory "
            f"(--data-mode stream reads any size)"
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
        f"{size_text(need)}, more than this machine's memory"
        + (f" ({size_text(memory)})" if memory else "")
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
        if image.mode in SIXTEEN_BIT:
            grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    except Exception as error:  # noqa: BLE001 (Pillow's decoders raise many types for bad data)
        raise DataError(f"cannot decode '{name}' in '{data_dir}': {error}") from None
