"""The paper's three equations: weight entropy (Eq. 5 and 6) and adaptive weighting (Eq. 7).

Meng et al., "Filter Grafting for Deep Neural Networks", CVPR 2020.

- Eq. 6 (layer form, the default): H of all values of a layer's weight at once.
- Eq. 5 (filter-sum form): the sum over output filters of H(filter).
- Eq. 7: alpha = (A / pi) * arctan(c * (H_self - H_src)) + 0.5.

H(w) splits [min(w), max(w)] into B equal bins, p_b is the share of values in bin b (max(w)
falls in the last bin) and H = -sum_b p_b ln p_b over non-empty bins; a constant tensor has
H = 0. Both forms are one histogram pass: ``histc`` for a whole layer; for filters, values
become bin indices arithmetically and one ``bincount`` with per-filter offsets counts them.
"""

from __future__ import annotations

import math

import torch


def filter_entropies(weight: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """Entropy of each output filter (row of dim 0) of a weight tensor.

    Args:
        weight: conv weight [out, in, kh, kw], linear weight [out, in] or a vector [out].
        bins: number of equal-width histogram bins between each filter's min and max.
    Returns:
        A float32 tensor [out] of entropies in nats.

    >>> filter_entropies(torch.tensor([[0.0, 1.0], [2.0, 2.0]]), bins=2)
    tensor([0.6931, 0.0000])
    """
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    low = rows.amin(dim=1, keepdim=True)
    span = rows.amax(dim=1, keepdim=True) - low
    # A constant filter puts everything in bin 0 (H = 0) instead of dividing by zero.
    scaled = (rows - low) / torch.where(span > 0, span, torch.ones_like(span))
    index = (scaled * bins).long().clamp_(0, bins - 1)  # the max lands in the last bin
    index += torch.arange(rows.shape[0], device=rows.device).unsqueeze(1) * bins
    counts = torch.bincount(index.flatten(), minlength=rows.shape[0] * bins)
    p = counts.reshape(rows.shape[0], bins).float() / rows.shape[1]
    return torch.special.entr(p).sum(dim=1)  # entr(p) = -p ln p, and 0 for an empty bin


def layer_entropy(weight: torch.Tensor, bins: int = 10) -> float:
    """Eq. 6: the entropy of all values of a layer's weight taken together."""
    # histc bins [min, max] exactly as defined above (max in the last bin) in one kernel;
    # a constant tensor lands in one bin, so H = 0 without a special case.
    counts = torch.histc(weight.detach().float(), bins=bins)
    return float(torch.special.entr(counts / weight.numel()).sum())


def filter_sum_entropy(weight: torch.Tensor, bins: int = 10) -> float:
    """Eq. 5: the sum over output filters of each filter's entropy."""
    return float(filter_entropies(weight, bins).sum())


ENTROPY_FORMS = {"layer": layer_entropy, "filter_sum": filter_sum_entropy}


def adaptive_alpha(h_self, h_src, A: float = 0.4, c: float = 500.0):
    """Eq. 7: the share of its own weights a network keeps when grafted.

    More information (entropy) than the source -> alpha above 0.5, bounded by 0.5 +/- A/2.
    Works on floats and elementwise on tensors (one alpha per filter at filter level).

    >>> round(adaptive_alpha(2.0, 1.0, A=0.4, c=500.0), 4)
    0.6997
    """
    if isinstance(h_self, torch.Tensor) or isinstance(h_src, torch.Tensor):
        return (A / math.pi) * torch.atan(c * (h_self - h_src)) + 0.5
    return (A / math.pi) * math.atan(c * (h_self - h_src)) + 0.5
