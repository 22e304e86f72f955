"""Analysis of a population: invalid filters (by l1 norm and by entropy), their overlap
between networks, and the ensemble of the networks' predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from graftune.core.equations import filter_entropies
from graftune.core.graft import as_tensor
from graftune.core.units import GraftUnit


def conv_units(units: Sequence[GraftUnit], state: Mapping) -> list[GraftUnit]:
    return [u for u in units if u.kind == "conv" and as_tensor(state[u.weight]).dim() == 4]


def l1_invalid_counts(
    state: Mapping, units: Sequence[GraftUnit], thresholds: Sequence[float] = (0.1, 0.01)
) -> dict[float, tuple[int, int]]:
    """Conv filters whose l1 norm is below each threshold, as (invalid, total) per threshold."""
    norms = torch.cat(
        [as_tensor(state[u.weight]).flatten(1).abs().sum(1) for u in conv_units(units, state)]
    )
    return {t: (int((norms < t).sum()), int(norms.numel())) for t in thresholds}


def entropy_invalid_filters(weight, share: float = 0.2, bins: int = 10) -> torch.Tensor:
    """Indices of the lowest-entropy ``share`` of a layer's output filters."""
    entropies = filter_entropies(as_tensor(weight), bins)
    count = max(1, int(share * entropies.numel()))
    return torch.argsort(entropies, stable=True)[:count]


def invalid_iou(
    state_a: Mapping,
    state_b: Mapping,
    units: Sequence[GraftUnit],
    share: float = 0.2,
    bins: int = 10,
) -> dict[str, float]:
    """Per conv layer, IoU of the positions of two networks' invalid filters (Table 1)."""
    result = {}
    for unit in conv_units(units, state_a):
        a = set(entropy_invalid_filters(state_a[unit.weight], share, bins).tolist())
        b = set(entropy_invalid_filters(state_b[unit.weight], share, bins).tolist())
        result[unit.name] = len(a & b) / len(a | b)
    return result


def ensemble_accuracy(probabilities: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of the mean of K networks' softmax outputs."""
    mean = np.mean(np.stack([np.asarray(p, dtype=np.float32) for p in probabilities]), axis=0)
    return float((mean.argmax(axis=1) == np.asarray(labels)).mean())


def population_summary(
    test_accuracies: Sequence[float], probabilities: Sequence[np.ndarray], labels: np.ndarray
) -> dict[str, float]:
    """Mean, best and ensemble test accuracy of a population."""
    return {
        "mean_test_acc": float(np.mean(test_accuracies)),
        "best_test_acc": float(np.max(test_accuracies)),
        "ensemble_test_acc": ensemble_accuracy(probabilities, labels),
    }
