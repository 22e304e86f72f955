"""The grafting algorithm as pure PyTorch: no Ray, no MLflow, no file I/O."""

from graftune.core.analysis import (
    ensemble_accuracy,
    entropy_invalid_filters,
    invalid_iou,
    l1_invalid_counts,
    population_summary,
)
from graftune.core.equations import (
    adaptive_alpha,
    filter_entropies,
    filter_sum_entropy,
    layer_entropy,
)
from graftune.core.graft import GraftPolicy, graft, ring_graft
from graftune.core.units import GraftUnit, find_graft_units, unit_keys

__all__ = [
    "GraftPolicy",
    "GraftUnit",
    "adaptive_alpha",
    "ensemble_accuracy",
    "entropy_invalid_filters",
    "filter_entropies",
    "filter_sum_entropy",
    "find_graft_units",
    "graft",
    "invalid_iou",
    "l1_invalid_counts",
    "layer_entropy",
    "population_summary",
    "ring_graft",
    "unit_keys",
]
