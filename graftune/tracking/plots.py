"""PNG plots of a population run: accuracy, per-layer entropy and alpha, invalid filters.

Inputs are plain Python data (the round history and the per-unit graft records the driver
keeps), so this module needs only matplotlib and numpy and can run after the fact.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "accuracy_curves",
    "alpha_heatmaps",
    "entropy_heatmaps",
    "invalid_filter_counts",
    "write_all",
]

PathLike = str | os.PathLike[str]
MAX_LABELLED_LAYERS = 30  # beyond this, unit names overlap and only indices are readable
MAX_MARKED_ROUNDS = 30  # markers help short runs, clutter long ones
DPI = 120


def _save(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as PNG and release it (pyplot keeps every open figure alive)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return out


def _network_count(history: list[dict[str, Any]]) -> int:
    return max((len(h["networks"]) for h in history), default=0)


def _network_series(history: list[dict[str, Any]], key: str, net: int) -> np.ndarray:
    """One network's metric per round; NaN where a round lacks that network."""
    values = [h["networks"][net][key] if net < len(h["networks"]) else math.nan for h in history]
    return np.asarray(values, dtype=float)


def _line_style(n_rounds: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 3} if n_rounds <= MAX_MARKED_ROUNDS else {}


def _net_colour(net: int) -> Any:
    return plt.get_cmap("tab10")(net % 10)


def _plot_networks(ax: Any, history: list[dict[str, Any]], key: str, scale: float) -> None:
    """Thin line per network so population curves drawn on top stay visible."""
    rounds = [h["round"] for h in history]
    style = _line_style(len(rounds))
    for net in range(_network_count(history)):
        values = _network_series(history, key, net) * scale
        ax.plot(
            rounds,
            values,
            lw=1.0,
            alpha=0.8,
            color=_net_colour(net),
            label=f"network {net}",
            **style,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "round 2.5" on short runs


def accuracy_curves(history: list[dict[str, Any]], path: PathLike) -> Path:
    """Test accuracy per network and of the population, and train accuracy per network."""
    fig, (ax_test, ax_train) = plt.subplots(
        1, 2, figsize=(13, 4.8), sharex=True, layout="constrained"
    )
    rounds = [h["round"] for h in history]
    _plot_networks(ax_test, history, "test_acc", 100.0)
    population = [
        ("mean_test_acc", "population mean", "-", "black"),
        ("best_test_acc", "population best", "--", "dimgray"),
        ("ensemble_test_acc", "ensemble", "-.", "crimson"),
    ]
    for key, label, linestyle, colour in population:
        values = [100.0 * h["population"].get(key, math.nan) for h in history]
        ax_test.plot(rounds, values, lw=2.4, ls=linestyle, color=colour, label=label)
    _plot_networks(ax_train, history, "train_acc", 100.0)
    for ax, title in ((ax_test, "Test accuracy"), (ax_train, "Train accuracy")):
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    # One legend for both panels: train curves reuse the test panel's network colours.
    fig.legend(*ax_test.get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    fig.suptitle("Accuracy per round")
    return _save(fig, path)


def invalid_filter_counts(history: list[dict[str, Any]], path: PathLike) -> Path:
    """Filters whose l1 norm is below 0.1 and below 0.01, per network and round."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharex=True, layout="constrained")
    for ax, threshold in zip(axes, ("0.1", "0.01")):
        _plot_networks(ax, history, f"invalid_l1_{threshold}", 1.0)
        ax.set_title(rf"filters with $\ell_1$ norm < {threshold}")
        ax.set_xlabel("round")
        ax.set_ylabel("invalid filters")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    fig.suptitle("Invalid filters per round")
    return _save(fig, path)


def _grids(
    records: list[dict[str, Any]], key: str
) -> tuple[list[int], list[str], list[int], dict[int, np.ndarray]]:
    """Per network a (unit x round) array of ``key``; NaN marks cells without a record."""
    networks = sorted({r["network"] for r in records})
    units = list(dict.fromkeys(r["unit"] for r in records))  # model order, as first seen
    first, last = min(r["round"] for r in records), max(r["round"] for r in records)
    # Contiguous rounds so a round without records shows as a gap rather than vanishing.
    rounds = list(range(first, last + 1))
    row = {u: i for i, u in enumerate(units)}
    grids = {n: np.full((len(units), len(rounds)), math.nan) for n in networks}
    for r in records:
        grids[r["network"]][row[r["unit"]], r["round"] - first] = r[key]
    return networks, units, rounds, grids


def _label_layers(ax: Any, units: list[str]) -> None:
    if len(units) <= MAX_LABELLED_LAYERS:
        ax.set_yticks(range(len(units)), units, fontsize=7)
    else:
        # Names of ~100 layers would overlap; indices with a few ticks still locate a layer.
        ax.yaxis.set_major_locator(MaxNLocator(8, integer=True))


def _heatmaps(
    records: list[dict[str, Any]],
    key: str,
    path: PathLike,
    title: str,
    label: str,
    cmap: Colormap,
    norm_for: Any,
) -> Path | None:
    """One (layer x round) panel per network with a shared colour scale and colour bar."""
    if not records:
        return None
    networks, units, rounds, grids = _grids(records, key)
    cols = min(len(networks), 4)
    rows = math.ceil(len(networks) / cols)
    height = min(2.0 + 0.1 * len(units), 6.0)  # taller panels for deep models, bounded
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.2 * cols + 1.5, height * rows + 0.8),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    norm = norm_for(np.concatenate([g.ravel() for g in grids.values()]))
    extent = (rounds[0] - 0.5, rounds[-1] + 0.5, len(units) - 0.5, -0.5)
    image = None
    for ax, net in zip(axes.flat, networks):
        image = ax.imshow(
            grids[net], aspect="auto", interpolation="nearest", cmap=cmap, norm=norm, extent=extent
        )
        ax.set_title(f"network {net}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(8, integer=True))
    for ax in axes.flat[len(networks) :]:
        ax.set_visible(False)
    _label_layers(axes[0, 0], units)
    for ax in axes[-1, :]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("layer" if len(units) <= MAX_LABELLED_LAYERS else "layer (model order)")
    fig.colorbar(image, ax=axes, label=label, shrink=min(0.9, 3.0 / rows), aspect=30)
    fig.suptitle(title)
    return _save(fig, path)


def _with_bad(name: str) -> Colormap:
    """Colormap that shows missing cells (no grafting that round) in light grey."""
    return plt.get_cmap(name).with_extremes(bad="#e6e6e6")


def _range_norm(values: np.ndarray) -> Normalize:
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(low, high if high > low else low + 1e-6)


def _centred_norm(values: np.ndarray) -> Normalize:
    """Symmetric around 0.5 so equal weight of self and source is the neutral colour."""
    finite = values[np.isfinite(values)]
    half = float(np.abs(finite - 0.5).max()) if finite.size else 0.5
    half = max(half, 1e-3)  # all-0.5 alphas would otherwise give an empty range
    return Normalize(0.5 - half, 0.5 + half)


def entropy_heatmaps(records: list[dict[str, Any]], path: PathLike) -> Path | None:
    """Entropy of each graft unit's weights (h_self) per network, layer and round."""
    return _heatmaps(
        records,
        "h_self",
        path,
        "Weight entropy per layer",
        "entropy h_self",
        _with_bad("viridis"),
        _range_norm,
    )


def alpha_heatmaps(records: list[dict[str, Any]], path: PathLike) -> Path | None:
    """Grafting coefficient alpha (weight kept from self) per network, layer and round."""
    return _heatmaps(
        records,
        "alpha",
        path,
        "Grafting coefficient per layer",
        r"$\alpha$ (weight kept from self)",
        _with_bad("RdBu_r"),
        _centred_norm,
    )


def write_all(
    history: list[dict[str, Any]], records: list[dict[str, Any]], directory: PathLike
) -> list[Path]:
    """Write every plot into ``directory``; heat maps are skipped when there are no records."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        accuracy_curves(history, out / "accuracy.png"),
        entropy_heatmaps(records, out / "entropy_heatmap.png"),
        alpha_heatmaps(records, out / "alpha_heatmap.png"),
        invalid_filter_counts(history, out / "invalid_filters.png"),
    ]
    return [p for p in written if p is not None]
