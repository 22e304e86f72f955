"""Images decoded batch by batch in DataLoader worker processes, to fixed-size uint8 canvases.

JPEGs are decoded by TorchCodec into a uint8 tensor and resized there (antialiased bilinear):
1.4x Pillow's images per CPU-second at a 224 crop in BENCHMARKS.md. Where a JPEG is at least
twice the canvas, Pillow's draft mode (the decoder itself scales by 1/2, 1/4 or 1/8) is the
faster one and decodes it; so does Pillow every other format and any JPEG TorchCodec refuses. Evaluation images get torchvision's Resize(size / 0.875) + CenterCrop(size); training
images are squeezed whole onto a square canvas, so that a batch stacks and the random resized
crops (``crops``) can still reach every pixel, with each image's own width and height passed
along to undo the squeeze. Any mode becomes RGB as in the in-memory path.

A file that fails to decode mid-run (truncated or corrupt after its header was checked) does
not stop the run: the collate drops it and names it, and the caller counts it.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import warnings
import weakref
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from graftune.data.decode import SIXTEEN_BIT

EVAL_CROP = 0.875  # Resize(256) + CenterCrop(224): the crop is 7/8 of the resized side


def canvas_side(size: int) -> int:
    """The side training images are squeezed to: the evaluation resize, so a crop of the
    whole image still has about as many pixels as the network's input."""
    return round(size / EVAL_CROP)


class Held:
    """Decoded images alive in this process: each batch counts while its tensor lives. A test
    reads ``peak`` to show that memory follows the batch size and prefetch, not the set."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self._lock = threading.Lock()  # the pin-memory thread and the trainer both count

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        count = len(tensor)
        with self._lock:
            self.now += count
            self.peak = max(self.peak, self.now)
        weakref.finalize(tensor, self._drop, count)
        return tensor

    def _drop(self, count: int) -> None:
        with self._lock:
            self.now -= count

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.now


HELD = Held()


@dataclass
class Batch:
    """Decoded images as uint8 [B, 3, S, S], labels, each image's original (width, height)
    and index in its split, and the names of the images that failed to decode."""

    images: torch.Tensor
    labels: torch.Tensor
    sizes: torch.Tensor
    index: torch.Tensor
    failed: list[str]

    def pin_memory(self) -> Batch:  # called by DataLoader's pin-memory thread
        self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        return self


class DecodedImages(torch.utils.data.Dataset):
    """Item i: image i of a split decoded to a canvas, or its name when it cannot be read."""

    def __init__(
        self,
        path: str,
        is_zip: bool,
        names: Sequence[str],
        labels: np.ndarray,
        size: int,
        train: bool,
        max_image_bytes: int,
    ):
        self.path, self.is_zip, self.names, self.labels = path, is_zip, names, labels
        self.size, self.train, self.limit = size, train, max_image_bytes
        self._zip: tuple[int, zipfile.ZipFile] | None = None  # per process: (pid, archive)

    def __len__(self) -> int:
        return len(self.names)

    def _source(self, name: str):
        if not self.is_zip:
            return os.path.join(self.path, name)
        if self._zip is None or self._zip[0] != os.getpid():  # a forked worker opens its own
            self._zip = (os.getpid(), zipfile.ZipFile(self.path))
        info = self._zip[1].getinfo(name)
        if info.file_size > self.limit:  # the listing checked it; a swapped zip is refused
            raise ValueError(f"{info.file_size} bytes")
        return io.BytesIO(self._zip[1].read(info))

    def __getitem__(self, i: int):
        name = str(self.names[i])
        try:
            pixels, size = self.decode(self._source(name))
        except Exception:  # noqa: BLE001 (any damage mid-run: skipped and counted, not fatal)
            return name
        return pixels, int(self.labels[i]), size, i

    def load(self, i: int) -> np.ndarray:
        """Image i decoded (uint8 3 x S x S for evaluation); a damaged file raises."""
        return self.decode(self._source(str(self.names[i])))[0]

    def decode(self, source) -> tuple[np.ndarray, tuple[int, int]]:
        data = source.getvalue() if isinstance(source, io.BytesIO) else _read(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            with Image.open(io.BytesIO(data)) as image:  # the header only, until a pixel is read
                width, height = image.size
                if width * height * 3 > self.limit:
                    raise ValueError("over --max-image-bytes")
                box = self._box(width, height)
                pixels = _tensor_decode(data, image.format, (width, height), box)
                if pixels is None:
                    image.draft("RGB", box)  # JPEG only: decodes at 1/2, 1/4, 1/8 scale if it can
                    rgb = _rgb(image).resize(box, Image.Resampling.BILINEAR, reducing_gap=None)
                    pixels = torch.from_numpy(np.array(rgb).transpose(2, 0, 1))
        if not self.train:
            top, left = (box[1] - self.size) // 2, (box[0] - self.size) // 2
            pixels = pixels[:, top : top + self.size, left : left + self.size]
        return np.ascontiguousarray(pixels.numpy()), (width, height)

    def _box(self, width: int, height: int) -> tuple[int, int]:
        """The canvas (width, height) an image is resized to before any crop."""
        side = canvas_side(self.size)
        if self.train:
            return side, side
        scale = side / min(width, height)  # shorter side to `side`, then the centre size x size
        return max(side, round(width * scale)), max(side, round(height * scale))


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _tensor_decode(
    data: bytes, image_format: str | None, size: tuple[int, int], box: tuple[int, int]
):
    """A JPEG decoded by TorchCodec and resized on the tensor, or None for Pillow to do it:
    other formats, JPEGs TorchCodec refuses, and JPEGs at least twice the canvas, which Pillow's
    draft decodes at 1/2 to 1/8 scale (faster there in BENCHMARKS.md: 1.15x at a 64 canvas)."""
    if image_format != "JPEG" or min(size[0] / box[0], size[1] / box[1]) >= 2:
        return None
    decode_jpeg = _torchcodec_jpeg()
    if decode_jpeg is None:
        return None
    try:
        pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")
    except RuntimeError:
        return None
    return tvf.resize(pixels, [box[1], box[0]], antialias=True)


@functools.cache
def _torchcodec_jpeg():
    """TorchCodec's JPEG decoder, imported on first use: the in-memory path and the scripts
    that run where only torch is installed (a lent GPU) never need it. A declared dependency,
    so its absence is a hand-made environment: said once, and Pillow decodes instead."""
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError as error:
        warnings.warn(
            f"graftune: TorchCodec is missing ({error}); Pillow decodes JPEGs", stacklevel=2
        )
        return None
    return decode_jpeg


def _rgb(image: Image.Image) -> Image.Image:
    """RGB as the in-memory path makes it: 16-bit grey keeps its top 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT:
        grey = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def collate(items: Iterable) -> Batch:
    """Stack the decoded images; the names of the undecodable ones ride along."""
    good = [item for item in items if not isinstance(item, str)]
    failed = [item for item in items if isinstance(item, str)]
    if good:
        pixels, labels, sizes, index = zip(*good)
        images = torch.from_numpy(np.stack(pixels))
    else:
        images, labels, sizes, index = torch.empty(0, 3, 0, 0, dtype=torch.uint8), (), (), ()
    return Batch(
        images,
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(sizes, dtype=torch.float32).view(-1, 2),
        torch.tensor(index, dtype=torch.int64),
        failed,
    )


def loader_workers(asked: int, cpus: float | None = None) -> int:
    """Decoding processes: ``asked``, or (-1) one per CPU of the share beyond the one that
    trains, so a one-CPU worker decodes in its own process."""
    if asked >= 0:
        return asked
    return max(0, int(usable_cpus() if cpus is None else cpus) - 1)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_loader(
    images: DecodedImages, batches: Sequence[Sequence[int]], workers: int, pin: bool
) -> Iterable[Batch]:
    """The batches of ``batches`` (index lists), decoded ``workers`` at a time, two prefetched
    per worker; the images are counted in :data:`HELD` while the caller holds them."""
    loader = torch.utils.data.DataLoader(
        images,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        prefetch_factor=2 if workers else None,
    )
    for batch in loader:
        HELD.hold(batch.images)
        yield batch
