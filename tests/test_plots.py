"""Plots of a population run are written as non-blank PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import pytest

from graftune.tracking import plots

NETWORKS = 3
ROUNDS = 4
UNITS = ("conv1", "layer1.0.conv1")
ALL_FILES = ["accuracy.png", "entropy_heatmap.png", "alpha_heatmap.png", "invalid_filters.png"]


def _history() -> list[dict]:
    history = []
    for rnd in range(1, ROUNDS + 1):
        nets = [
            {
                "train_loss": 2.0 / (rnd + n),
                "train_acc": min(0.3 + 0.15 * rnd + 0.02 * n, 1.0),
                "test_loss": 2.2 / (rnd + n),
                "test_acc": 0.25 + 0.12 * rnd + 0.03 * n,
                "lr": 0.1 * 0.5**rnd,
                "invalid_l1_0.1": 10 * rnd + n,
                "invalid_l1_0.01": 3 * rnd + n,
                "restored": n % 2,
            }
            for n in range(NETWORKS)
        ]
        accs = [net["test_acc"] for net in nets]
        population = {
            "mean_test_acc": sum(accs) / len(accs),
            "best_test_acc": max(accs),
            "ensemble_test_acc": max(accs) + 0.02,
        }
        history.append({"round": rnd, "networks": nets, "population": population})
    return history


def _records() -> list[dict]:
    return [
        {
            "round": rnd,
            "network": n,
            "unit": unit,
            "h_self": 3.0 + 0.3 * u + 0.1 * n - 0.05 * rnd,
            "h_src": 3.1 + 0.2 * u,
            "alpha": 0.5 + math.atan(0.1 * n - 0.1 * u + 0.05 * rnd) / math.pi,
            "filters": 16 * (u + 1),
        }
        for rnd in range(2, ROUNDS + 1)
        for n in range(NETWORKS)
        for u, unit in enumerate(UNITS)
    ]


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5_000
    assert matplotlib.image.imread(path).std() > 0


def test_write_all_writes_four_pngs(tmp_path: Path) -> None:
    written = plots.write_all(_history(), _records(), tmp_path / "plots")
    assert [p.name for p in written] == ALL_FILES
    for path in written:
        assert path.parent == tmp_path / "plots"
        _assert_png(path)


def test_without_records_only_history_plots(tmp_path: Path) -> None:
    written = plots.write_all(_history(), [], tmp_path)
    assert [p.name for p in written] == ["accuracy.png", "invalid_filters.png"]
    for path in written:
        _assert_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


@pytest.mark.parametrize("heatmap", [plots.entropy_heatmaps, plots.alpha_heatmaps])
def test_heatmaps_skip_empty_records(tmp_path: Path, heatmap) -> None:
    assert heatmap([], tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_figures_are_closed(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plots.write_all(_history(), _records(), tmp_path)
    assert len(plt.get_fignums()) == before
