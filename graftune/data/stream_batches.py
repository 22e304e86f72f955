"""Training and evaluation batches of a streamed image set, decoded as they are needed.

A worker's networks share one decoded batch (``shared_order``, the default) and each cut
their own crops and flips from it, or each network has its own order and so its own
decoding, as when every network is trained alone. Every random draw is a pure function of a
seed, the epoch and the step (the order of epoch e, the crops of step s), so a state is just
(epoch, position) and a resumed run decodes the same images and cuts the same crops as one
that never stopped, mid-epoch too.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from graftune.data.batches import _normalise, _normaliser
from graftune.data.crops import resized_crops
from graftune.data.loader import Batch, DecodedImages, make_loader

log = logging.getLogger("graftune")


def mixed_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, step), well spread."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class Skipped:
    """The images of one worker that failed to decode mid-run: each named in one warning."""

    def __init__(self, data_dir: str):
        self.data_dir, self.names = data_dir, set()

    def add(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.names:
                self.names.add(name)
                log.warning(
                    "graftune: skipped '%s' in '%s': it cannot be decoded (damaged since "
                    "the start-up check?); the run goes on without it",
                    name,
                    self.data_dir,
                )

    def __len__(self) -> int:
        return len(self.names)


def readable(data) -> None:
    """Refuse to start where the image set is not there: on a cluster every node that runs a
    worker must see it at the path the driver listed (cluster/README.md)."""
    path = data.listing.path
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"the streamed image set '{path}' is not there on {socket.gethostname()}: every "
            f"node that runs a worker must see it at that path (a shared filesystem, or the "
            f"same copy on each node)"
        )


class _Stream:
    """One order over the training images: epoch e is a fixed permutation of seed and e."""

    def __init__(self, images: DecodedImages, seed: int, batch_size: int, workers: int, pin: bool):
        self.images, self.seed, self.workers, self.pin = images, seed, workers, pin
        n = len(images)
        self.batch_size = min(batch_size, n)  # fewer images than a batch: one smaller batch
        self.steps_per_epoch = max(1, n // batch_size)
        self.epoch, self.position = 0, 0
        self._batches: Iterator[Batch] | None = None

    def next(self) -> tuple[Batch, int, int]:
        """The next batch, with the epoch and step it belongs to."""
        if self.position == self.steps_per_epoch:
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        if self._batches is None:
            order = torch.randperm(len(self.images), generator=self._generator())
            b = self.batch_size
            steps = range(self.position, self.steps_per_epoch)
            batches = [order[s * b : (s + 1) * b].tolist() for s in steps]
            self._batches = iter(make_loader(self.images, batches, self.workers, self.pin))
        self.position += 1
        return next(self._batches), self.epoch, self.position - 1

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None


class StreamBatches:
    """Augmented training batches of K networks from a streamed set (K = 1 for a Trainer).

    Args:
        data: the :class:`~graftune.data.stream.StreamSet`.
        seeds: each network's seed: its crops and flips (and its order without a shared one).
        order_seed: the seed of the shared order; None gives every network its own order
            (and its own decoding).
        workers: decoding processes per order.
    """

    def __init__(
        self,
        data,
        seeds: Sequence[int],
        order_seed: int | None,
        batch_size: int,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        workers: int = 0,
        skipped: Skipped | None = None,
    ):
        readable(data)
        self.device, self.seeds, self.size = torch.device(device), list(seeds), data.image_size
        self.crop_scale = data.crop_scale
        self.channels_last = channels_last
        pin = self.device.type == "cuda"
        images = data.decoded("train")
        order_seeds = [order_seed] if order_seed is not None else self.seeds
        self.streams = [_Stream(images, s, batch_size, workers, pin) for s in order_seeds]
        self.steps_per_epoch = self.streams[0].steps_per_epoch
        self.batch_size = self.streams[0].batch_size
        self.scale, self.shift = _normaliser(data.mean, data.std, self.device)
        self.skipped = skipped if skipped is not None else Skipped(data.data_dir)

    def next_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x float [K, B, 3, S, S] normalised, y int64 [K, B], on the device. A damaged
        image is left out of its batch (without a shared order, every network's batch is cut
        to the shortest, so that they stack)."""
        for _ in range(self.steps_per_epoch + 1):
            xs, ys = [], []
            for j, stream in enumerate(self.streams):  # one order, or one per network
                seeds = self.seeds if len(self.streams) == 1 else [self.seeds[j]]
                x, y = self._cropped(stream, seeds)
                xs += x
                ys += [y] * len(x)
            shortest = min(len(y) for y in ys)
            if shortest:  # a batch of nothing but damaged images: take the next one
                x = torch.stack([x[:shortest] for x in xs])
                return x, torch.stack([y[:shortest] for y in ys])
        raise RuntimeError(
            f"no image of '{self.skipped.data_dir}' decoded in a whole epoch on "
            f"{socket.gethostname()}; can this node read the image set?"
        )

    def _cropped(
        self, stream: _Stream, seeds: list[int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The next batch of ``stream``, cropped and normalised once per seed, and its labels."""
        batch, epoch, step = stream.next()
        self.skipped.add(batch.failed)
        labels = batch.labels.to(self.device, non_blocking=True)
        if not len(batch.images):
            return [batch.images[:0].float()] * len(seeds), labels
        gens = [torch.Generator().manual_seed(mixed_seed(s, epoch, step)) for s in seeds]
        canvas = batch.images.to(self.device, non_blocking=True)
        crops = resized_crops(canvas, batch.sizes, gens, self.size, self.crop_scale)
        return [_normalise(c, self.scale, self.shift, self.channels_last) for c in crops], labels

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One network's next batch (K = 1): what a Trainer takes."""
        x, y = self.next_batches()
        return x[0], y[0]

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from where the order stands (BatchNorm recalibration saves and restores
        the state around them)."""
        while True:
            yield self.next_batch()

    def state_dicts(self) -> list[dict]:
        """Per network: the order it follows and where it stands in it."""
        if len(self.streams) == 1:
            return [{"stream": self.streams[0].state_dict()} for _ in self.seeds]
        return [{"stream": s.state_dict()} for s in self.streams]

    def load_state_dicts(self, states: Sequence[dict]) -> None:
        for stream, state in zip(self.streams, states):  # a shared order: the first's
            stream.load_state_dict(state["stream"])

    def state_dict(self) -> dict:
        return self.state_dicts()[0]

    def load_state_dict(self, state: dict) -> None:
        self.load_state_dicts([state])


class StreamEval:
    """The test split in order, resized and centre-cropped: the same pixels every time. A
    damaged image is scored as a black one, so every network's accuracy and the ensemble's
    stay over the same images, and it is counted as skipped."""

    def __init__(
        self,
        data,
        batch_size: int,
        device: torch.device | str,
        workers: int = 0,
        skipped: Skipped | None = None,
    ):
        readable(data)
        self.images, self.device = data.decoded("test"), torch.device(device)
        self.batch_size = batch_size
        self.labels, self.count, self.workers = data.test_labels, len(data.test_labels), workers
        self.scale, self.shift = _normaliser(data.mean, data.std, self.device)
        self.skipped = skipped if skipped is not None else Skipped(data.data_dir)
        self.size = data.image_size

    def batches(self, channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(0, self.count, self.batch_size)
        order = [list(range(s, min(s + self.batch_size, self.count))) for s in starts]
        pin = self.device.type == "cuda"
        for start, batch in zip(starts, make_loader(self.images, order, self.workers, pin)):
            self.skipped.add(batch.failed)
            x = batch.images
            if batch.failed:  # black images where the damaged ones were
                x = torch.zeros(
                    len(order[start // self.batch_size]), 3, self.size, self.size, dtype=torch.uint8
                )
                x[batch.index - start] = batch.images
            y = torch.as_tensor(self.labels[start : start + len(x)])
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, torch.int64, non_blocking=True)
            yield _normalise(x, self.scale, self.shift, channels_last), y
