"""The pure algorithm: entropy (Eq. 5, 6), weighting (Eq. 7), graft units and grafting."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from graftune.core import (
    GraftPolicy,
    adaptive_alpha,
    ensemble_accuracy,
    filter_entropies,
    filter_sum_entropy,
    find_graft_units,
    graft,
    invalid_iou,
    l1_invalid_counts,
    layer_entropy,
    ring_graft,
)
from graftune.core.graft import noise_source
from graftune.models import create_model, list_models


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 10, 3, padding=1, bias=False),
        nn.BatchNorm2d(10),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(10, 4),
    )


def trained_like_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = small_net()
    with torch.no_grad():  # non-trivial BN tensors, so mixing them is visible
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(seed + 7)
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- entropy ---------------------------------------------------------------------------


def test_entropy_uniform_spread_is_ln_bins():
    w = torch.arange(100, dtype=torch.float32)  # 10 values in each of 10 bins
    assert layer_entropy(w, bins=10) == pytest.approx(math.log(10), abs=1e-6)


def test_entropy_two_valued_tensor():
    w = torch.tensor([0.0, 0.0, 0.0, 1.0])  # p = 3/4 (first bin), 1/4 (last bin)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert layer_entropy(w, bins=10) == pytest.approx(expected, abs=1e-6)


def test_entropy_constant_tensor_is_zero():
    assert layer_entropy(torch.full((5, 3, 3, 3), 0.7)) == 0.0
    assert filter_sum_entropy(torch.full((5, 3, 3, 3), 0.7)) == 0.0


def test_entropy_matches_a_per_bin_reference():
    w = torch.randn(16, 8, 3, 3)
    low, high = float(w.min()), float(w.max())
    edges = [low + (high - low) * b / 10 for b in range(11)]
    counts = [((w >= edges[b]) & (w < edges[b + 1])).sum().item() for b in range(10)]
    counts[-1] += int((w == high).sum())
    p = np.array(counts, dtype=np.float64) / w.numel()
    expected = -sum(x * math.log(x) for x in p if x > 0)
    assert layer_entropy(w) == pytest.approx(expected, rel=1e-3)


def test_filter_sum_is_sum_of_per_filter_layer_entropies():
    w = torch.randn(6, 4, 3, 3)
    w[2] = 1.0  # one constant filter
    expected = sum(layer_entropy(w[i]) for i in range(6))
    assert filter_sum_entropy(w) == pytest.approx(expected, rel=1e-5)
    assert filter_entropies(w)[2] == 0.0


# --- weighting -------------------------------------------------------------------------


@pytest.mark.parametrize("A", [0.0, 0.4, 1.0])
def test_alpha_bounds_and_symmetry(A):
    for h_self, h_src in [(2.0, 1.0), (1.0, 2.0), (1.5, 1.5001), (0.0, 3.0)]:
        alpha = adaptive_alpha(h_self, h_src, A=A, c=500.0)
        assert 0.5 - A / 2 <= alpha <= 0.5 + A / 2
        if A > 0 and h_self != h_src:
            assert 0.5 - A / 2 < alpha < 0.5 + A / 2
        assert alpha + adaptive_alpha(h_src, h_self, A=A, c=500.0) == pytest.approx(1.0)
    assert adaptive_alpha(2.0, 1.0, A=0.0) == 0.5
    assert adaptive_alpha(2.0, 1.0) > 0.5 > adaptive_alpha(1.0, 2.0)


# --- graft units -----------------------------------------------------------------------


def test_units_pair_conv_with_its_batchnorm():
    units = find_graft_units(small_net())
    assert [u.name for u in units] == ["0", "3", "8"]
    assert units[1].keys[0] == "3.weight"
    assert set(units[1].keys) == {
        "3.weight",
        "4.weight",
        "4.bias",
        "4.running_mean",
        "4.running_var",
    }


@pytest.mark.parametrize("name", list_models())
def test_units_cover_every_float_tensor_once(name):
    model = create_model(name, num_classes=10)
    units = find_graft_units(model)
    covered = [k for u in units for k in u.keys]
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    assert len(covered) == len(set(covered)), "a tensor lies in two units"
    assert sorted(covered) == sorted(floats)
    assert all(u.kind != "norm" for u in units), "a BatchNorm was left without its conv"


# --- grafting --------------------------------------------------------------------------


def test_layer_graft_mixes_every_unit_tensor_and_leaves_integers():
    a, b = trained_like_state(0), trained_like_state(1)
    units = find_graft_units(small_net())
    new, records = graft(a, b, units, GraftPolicy())
    assert len(records) == len(units)
    for unit, record in zip(units, records):
        alpha = record["alpha"]
        assert 0.3 < alpha < 0.7 and alpha != 0.5
        assert record["h_self"] == pytest.approx(layer_entropy(a[unit.weight]))
        for key in unit.keys:
            torch.testing.assert_close(new[key], alpha * a[key] + (1 - alpha) * b[key])
    for key in a:
        if not a[key].is_floating_point():
            assert torch.equal(new[key], a[key])


def test_graft_accepts_numpy_snapshots():
    a, b = trained_like_state(0), trained_like_state(1)
    units = find_graft_units(small_net())
    b_numpy = {k: v.numpy() for k, v in b.items()}
    new_t, _ = graft(a, b, units, GraftPolicy())
    new_n, _ = graft(a, b_numpy, units, GraftPolicy())
    for key in new_t:
        assert torch.equal(new_t[key], new_n[key])


def test_fixed_weighting_uses_constant_alpha():
    a, b = trained_like_state(0), trained_like_state(1)
    units = find_graft_units(small_net())
    new, records = graft(a, b, units, GraftPolicy(weighting="fixed", fixed_alpha=0.5))
    assert {r["alpha"] for r in records} == {0.5}
    torch.testing.assert_close(new["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)


def test_filter_level_changes_only_lowest_entropy_filters_and_their_bn_channels():
    a, b = trained_like_state(0), trained_like_state(1)
    units = find_graft_units(small_net())
    policy = GraftPolicy(level="filter", invalid_share=0.25)
    new, records = graft(a, b, units, policy)
    conv = units[1]  # 10 filters -> the 2 lowest-entropy ones
    lowest = set(torch.argsort(filter_entropies(a[conv.weight]))[:2].tolist())
    for key in conv.keys:
        changed = {i for i in range(10) if not torch.equal(new[key][i], a[key][i])}
        assert changed == lowest, key
    assert records[1]["filters"] == 2


def test_none_source_changes_nothing_and_noise_source_keeps_bn():
    a = trained_like_state(0)
    units = find_graft_units(small_net())
    new, records = graft(a, None, units, GraftPolicy(source="none"))
    assert records == [] and all(torch.equal(new[k], a[k]) for k in a)
    generator = torch.Generator().manual_seed(0)
    policy = GraftPolicy(source="noise", level="filter")
    new, records = graft(a, None, units, policy, generator)
    assert not torch.equal(new["0.weight"], a["0.weight"])
    torch.testing.assert_close(new["1.running_var"], a["1.running_var"])
    # a fused GPU worker grafts weights on its device with the CPU generator: the noise
    # follows the weights ("meta" stands in for a GPU here)
    on_device = {k: v.to("meta") for k, v in a.items()}
    assert noise_source(on_device, units, generator)["0.weight"].device.type == "meta"


def test_two_network_ring_makes_identical_networks():
    states = [trained_like_state(0), trained_like_state(1)]
    units = find_graft_units(small_net())
    (new_a, _), (new_b, _) = ring_graft(states, units, GraftPolicy())
    for unit in units:
        for key in unit.keys:
            torch.testing.assert_close(new_a[key], new_b[key])


def test_ring_order_is_predecessor():
    states = [trained_like_state(s) for s in range(3)]
    units = find_graft_units(small_net())
    results = ring_graft(states, units, GraftPolicy(weighting="fixed", fixed_alpha=0.0))
    for k, (new, _) in enumerate(results):  # alpha 0 copies the source: network k-1
        assert torch.equal(new["0.weight"], states[k - 1]["0.weight"])


# --- analysis --------------------------------------------------------------------------


def test_l1_counts_and_iou():
    a = trained_like_state(0)
    units = find_graft_units(small_net())
    a["3.weight"][:3] = 0.001  # 3 filters with tiny l1 norm (72 weights * 0.001 = 0.072)
    counts = l1_invalid_counts(a, units, thresholds=(0.1, 0.01))
    assert counts[0.1] == (3, 18) and counts[0.01] == (0, 18)
    iou = invalid_iou(a, a, units)
    assert set(iou) == {"0", "3"} and all(v == 1.0 for v in iou.values())
    b = trained_like_state(1)
    assert all(0.0 <= v <= 1.0 for v in invalid_iou(a, b, units).values())


def test_ensemble_accuracy_averages_probabilities():
    labels = np.array([0, 1, 1])
    p1 = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    p2 = np.array([[0.6, 0.4], [0.1, 0.9], [0.1, 0.9]])
    assert ensemble_accuracy([p1], labels) == pytest.approx(1 / 3)
    assert ensemble_accuracy([p1, p2], labels) == pytest.approx(1.0)


def test_graft_refuses_a_missing_source_without_assert():
    import pytest

    from graftune.core import GraftPolicy, find_graft_units, graft
    from graftune.models import create_model

    model = create_model("tiny_cnn")
    with pytest.raises(ValueError, match="needs the source's tensors"):
        graft(model.state_dict(), None, find_graft_units(model), GraftPolicy())
