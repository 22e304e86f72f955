"""Grafting of state dicts: W_k <- alpha * W_k + (1 - alpha) * W_src, per graft unit.

Pure functions over ``{key: tensor}`` mappings (numpy arrays are accepted too, as they come
out of Ray's object store), so the same code runs inside a worker and in a unit test.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from graftune.core.equations import ENTROPY_FORMS, adaptive_alpha, filter_entropies
from graftune.core.units import GraftUnit

StateLike = Mapping[str, "torch.Tensor | np.ndarray"]


@dataclass(frozen=True)
class GraftPolicy:
    """How one network takes weights from its source; defaults are the authors' settings."""

    source: str = "network"  # network | noise | none | average (no graft: core.average)
    level: str = "layer"  # layer | filter
    weighting: str = "adaptive"  # adaptive (Eq. 7) | fixed
    A: float = 0.4
    c: float = 500.0
    fixed_alpha: float = 0.5
    bins: int = 10
    entropy_form: str = "layer"  # layer (Eq. 6) | filter_sum (Eq. 5)
    invalid_share: float = 0.2  # filter level: share of lowest-entropy filters grafted

    @classmethod
    def from_config(cls, graft_config: Any) -> GraftPolicy:
        """Take the matching fields of a ``GraftConfig`` (or any object with them)."""
        return cls(**{f.name: getattr(graft_config, f.name) for f in fields(cls)})

    def alpha(self, h_self, h_src):
        if self.weighting == "fixed":
            if isinstance(h_self, torch.Tensor):
                return torch.full_like(h_self, self.fixed_alpha)
            return self.fixed_alpha
        return adaptive_alpha(h_self, h_src, self.A, self.c)


def as_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor view of an array without copying; object-store arrays are read-only, and
    we never write into them, so torch's warning about that is noise here."""
    if isinstance(value, torch.Tensor):
        return value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(value)


def noise_source(
    receiver: StateLike, units: Sequence[GraftUnit], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """The paper's control: Gaussian weights with each unit's own weight std; the unit's
    other tensors are the receiver's own, so mixing leaves them unchanged."""
    source = {}
    for unit in units:
        weight = as_tensor(receiver[unit.weight]).float()
        # Drawn by the CPU generator (the same draws on any device), then moved to the weight.
        noise = torch.randn(weight.shape, generator=generator).to(weight.device)
        noise = noise * weight.std(unbiased=False)
        source[unit.weight] = noise.to(weight.dtype)
        source.update({k: as_tensor(receiver[k]) for k in unit.keys[1:]})
    return source


def graft(
    receiver: StateLike,
    source: StateLike | None,
    units: Sequence[GraftUnit],
    policy: GraftPolicy,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Graft ``source`` into ``receiver`` unit by unit.

    Args:
        receiver: the receiving network's tensors (at least every unit key).
        source: the source network's tensors; ignored for the noise and none sources.
        units: from :func:`graftune.core.units.find_graft_units`.
        policy: level, source, weighting and Eq. 7's A and c.
        generator: random source of the noise control.
    Returns:
        The receiver's new tensors (every key of ``receiver``; keys outside the units, such
        as integer buffers, are passed through untouched) and one record per unit with the
        entropies ``h_self``/``h_src``, ``alpha`` (mean over grafted filters at filter level)
        and ``filters``, the number of output filters that were mixed.
    """
    new_state = {k: as_tensor(v) for k, v in receiver.items()}
    if policy.source in ("none", "average"):  # averaging is not a graft: core.average
        return new_state, []
    if policy.source == "noise":
        source = noise_source(receiver, units, generator)
    if source is None:  # survives python -O, unlike an assert
        raise ValueError("graft: a network source needs the source's tensors, got None")
    graft_unit = _graft_filters if policy.level == "filter" else _graft_layer
    records = []
    for unit in units:
        own = [new_state[k] for k in unit.keys]
        theirs = [as_tensor(source[k]) for k in unit.keys]
        mixed, record = graft_unit(own, theirs, policy)
        new_state.update(zip(unit.keys, mixed))
        records.append({"unit": unit.name, **record})
    return new_state, records


def _graft_layer(own, theirs, policy: GraftPolicy):
    entropy = ENTROPY_FORMS[policy.entropy_form]
    h_self, h_src = entropy(own[0], policy.bins), entropy(theirs[0], policy.bins)
    alpha = float(policy.alpha(h_self, h_src))
    mixed = [alpha * a + (1.0 - alpha) * b.to(a.dtype) for a, b in zip(own, theirs)]
    record = {"h_self": h_self, "h_src": h_src, "alpha": alpha, "filters": own[0].shape[0]}
    return mixed, record


def _graft_filters(own, theirs, policy: GraftPolicy):
    """Mix only the receiver's lowest-entropy filters (and their BN channels), each with an
    alpha from the two filters' entropies."""
    h_self_f = filter_entropies(own[0], policy.bins)
    h_src_f = filter_entropies(theirs[0], policy.bins)
    count = max(1, int(policy.invalid_share * own[0].shape[0]))
    invalid = torch.argsort(h_self_f, stable=True)[:count]
    alpha = policy.alpha(h_self_f[invalid], h_src_f[invalid])
    mixed = []
    for a, b in zip(own, theirs):
        if a.shape[0] != own[0].shape[0]:
            raise ValueError(
                f"graft: a unit's tensors must share the filter dimension "
                f"({tuple(a.shape)} against the weight's {tuple(own[0].shape)})"
            )
        weight = alpha.to(a.dtype).reshape(-1, *([1] * (a.dim() - 1)))
        out = a.clone()
        out[invalid] = weight * a[invalid] + (1.0 - weight) * b[invalid].to(a.dtype)
        mixed.append(out)
    entropy = ENTROPY_FORMS[policy.entropy_form]
    record = {
        "h_self": entropy(own[0], policy.bins),
        "h_src": entropy(theirs[0], policy.bins),
        "alpha": float(alpha.mean()),
        "filters": count,
    }
    return mixed, record


def predecessor(k: int, size: int) -> int:
    """Network k's graft source in the ring: k - 1, and the last network for the first."""
    return (k - 1) % size


def ring_graft(
    states: Sequence[StateLike], units: Sequence[GraftUnit], policy: GraftPolicy
) -> list[tuple[dict[str, torch.Tensor], list[dict[str, Any]]]]:
    """One synchronous round: network k grafts from network k-1 (the first from the last),
    all from the snapshots taken before any graft, so the order of work does not matter."""
    size = len(states)
    return [graft(states[k], states[predecessor(k, size)], units, policy) for k in range(size)]
