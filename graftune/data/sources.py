"""Where a trainer's batches come from, whichever way the data set is held: decoded in
memory (:class:`~graftune.data.batches.TrainBatches` per network, the images on the device
once) or streamed from files (:class:`~graftune.data.stream_batches.StreamBatches`). Both
give the same calls: ``next_batches`` for K networks, ``next_batch`` for one, per-network
state dicts, and an evaluation source with ``batches`` and ``count``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from graftune.data.batches import TrainBatches, _tensor, eval_batches
from graftune.data.datasets import ImageSet
from graftune.data.stream import StreamSet
from graftune.data.stream_batches import Skipped, StreamBatches, StreamEval


class MemoryBatches:
    """K networks' in-memory batches, each with its own order, crops and flips."""

    def __init__(self, batches: Sequence[TrainBatches]):
        self.networks = list(batches)
        self.steps_per_epoch = self.networks[0].steps_per_epoch
        self.batch_size = self.networks[0].batch_size
        self.skipped: Sequence[str] = ()

    def next_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(batches.next_batch() for batches in self.networks))
        return torch.stack(xs), torch.stack(ys)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.networks[0].next_batch()  # one network's (a Trainer's): unstacked

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.networks[0].epoch()

    def state_dict(self) -> dict:
        return self.networks[0].state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.networks[0].load_state_dict(state)

    def state_dicts(self) -> list[dict]:
        return [b.state_dict() for b in self.networks]

    def load_state_dicts(self, states: Sequence[dict]) -> None:
        for batches, state in zip(self.networks, states):
            batches.load_state_dict(state)


class MemoryEval:
    """The test set on the device as uint8, moved once: no host round trip per batch."""

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device):
        self.images = _tensor(data.test_images).to(device)
        self.labels = _tensor(data.test_labels).to(device)
        self.mean, self.std, self.device, self.batch_size = data.mean, data.std, device, batch_size
        self.count = len(self.labels)

    def batches(self, channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(
            self.images,
            self.labels,
            self.batch_size,
            self.mean,
            self.std,
            self.device,
            channels_last=channels_last,
        )


def train_source(
    data: ImageSet | StreamSet,
    seeds: Sequence[int],
    batch_size: int,
    device: torch.device,
    channels_last: bool,
    order_seed: int | None = None,
    workers: int = 0,
    skipped: Skipped | None = None,
) -> MemoryBatches | StreamBatches:
    """Training batches of the networks ``seeds`` (one seed each) on ``device``.

    ``order_seed``: streamed sets only, the seed of an order the networks share (None: each
    its own). An in-memory set gives every network its own order, as it always has.
    """
    if isinstance(data, StreamSet):
        return StreamBatches(
            data, seeds, order_seed, batch_size, device, channels_last, workers, skipped
        )
    # One uint8 copy on the device, shared by every network's batches.
    images = _tensor(data.train_images).to(device)
    labels = _tensor(data.train_labels).to(device)
    return MemoryBatches(
        [
            TrainBatches(
                images,
                labels,
                batch_size,
                data.mean,
                data.std,
                device=device,
                seed=seed,
                channels_last=channels_last,
            )
            for seed in seeds
        ]
    )


def eval_source(
    data: ImageSet | StreamSet,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    skipped: Skipped | None = None,
) -> MemoryEval | StreamEval:
    """The test set in evaluation batches on ``device``, in order, without augmentation."""
    if isinstance(data, StreamSet):
        return StreamEval(data, batch_size, device, workers, skipped)
    return MemoryEval(data, batch_size, device)


def skipped_count(source: MemoryBatches | StreamBatches) -> int:
    """Images that failed to decode mid-run on this worker (always 0 in memory)."""
    return len(source.skipped)
