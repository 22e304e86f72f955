"""Weight averaging of a population: the uniform soup (Wortsman et al., ICML 2022) and the
step of population parameter averaging (PAPA, Jolicoeur-Martineau et al., TMLR 2024) that
moves a network part of the way toward it.

Pure functions over ``{key: tensor}`` mappings (numpy arrays are accepted, as they come out
of Ray's object store), so the same code runs in a worker, on the driver and in a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from graftune.core.graft import StateLike, as_tensor


def population_average(states: Sequence[StateLike]) -> dict[str, torch.Tensor]:
    """The uniform mean of every floating-point tensor of ``states``, key by key; integer
    buffers (BatchNorm's ``num_batches_tracked``) cannot be averaged and are the first
    state's. A running mean, in state order: the mean of identical states is each of them
    to the bit, and it rounds alike wherever it runs (driver or device).

    >>> population_average([{"w": torch.ones(2)}, {"w": torch.zeros(2)}])["w"]
    tensor([0.5000, 0.5000])
    """
    if not states:
        raise ValueError("population_average needs at least one state")
    average = {}
    for key, first in states[0].items():
        mean = as_tensor(first).clone()
        if mean.is_floating_point():
            for count, state in enumerate(states[1:], start=2):
                mean.lerp_(as_tensor(state[key]).to(mean.device), 1.0 / count)
        average[key] = mean
    return average


@torch.no_grad()
def move_toward(
    state: Mapping[str, torch.Tensor], target: StateLike, rate: float
) -> Mapping[str, torch.Tensor]:
    """PAPA's step, in place: every floating-point tensor of ``state`` that ``target`` has
    becomes ``(1 - rate) * own + rate * target``. ``torch.lerp_`` computes it so that rate 0
    leaves every bit as it was and rate 1 copies the target exactly (PAPA-all); tensors
    ``target`` lacks, and integer buffers, stay as they are.

    Returns:
        ``state``, for chaining.
    """
    for key, tensor in state.items():
        if key not in target or not tensor.is_floating_point():
            continue
        goal = as_tensor(target[key]).to(tensor.device, tensor.dtype)
        tensor.lerp_(goal, rate)
    return state
