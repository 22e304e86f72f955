"""The graft snapshot: a network's graft-unit tensors packed into one float32 buffer.

One buffer instead of hundreds of small arrays is what makes the object store fast here:
Ray serialises one contiguous block, and a reader on the same node maps it without copying.
The snapshot reads like a ``{key: array}`` mapping, so the grafting core takes it as is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch


class Snapshot(Mapping):
    """Read-only mapping from state-dict key to a numpy view into one shared buffer."""

    def __init__(self, buffer: np.ndarray, index: dict[str, tuple[int, tuple[int, ...]]]):
        self.buffer = buffer  # float32, every tensor flattened back to back
        self.index = index  # key -> (offset into buffer, shape)

    def __getitem__(self, key: str) -> np.ndarray:
        offset, shape = self.index[key]
        return self.buffer[offset : offset + math.prod(shape)].reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes


def pack(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> Snapshot:
    """Copy the tensors named by ``keys`` into one float32 buffer on the CPU."""
    tensors = [state[k].detach() for k in keys]
    buffer = torch.cat([t.reshape(-1).float() for t in tensors]).cpu().numpy()
    index, offset = {}, 0
    for key, tensor in zip(keys, tensors):
        index[key] = (offset, tuple(tensor.shape))
        offset += tensor.numel()
    return Snapshot(buffer, index)
