"""What a finished run logs once at its end: the entropy/alpha table, plots, weights and
its networks (and soup) as MLflow models."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from graftune.config import flatten
from graftune.tracking.logged_models import log_networks, log_soup
from graftune.tracking.tracker import BEST_MODEL_ID_TAG, BEST_MODEL_TAG, REGISTERED_TAG

RECORDS_ARTIFACT = "grafting/entropy_alpha.csv"


def log_final_artifacts(tracker, config, states, history, records, soup=None) -> None:
    tracker.log_table(records, RECORDS_ARTIFACT)
    if config.tracking.plots:
        from graftune.tracking import plots  # matplotlib costs half a second; --no-plots skips it

        with tempfile.TemporaryDirectory() as tmp:
            plots.write_all(history, records, Path(tmp))
            tracker.log_artifacts(tmp, "plots")
    if config.tracking.log_weights:
        with tempfile.TemporaryDirectory() as tmp:
            for k, state in enumerate(states):
                torch.save(state["model"], Path(tmp) / f"net{k}.pt")
            if soup is not None:
                torch.save(soup, Path(tmp) / "soup.pt")
            tracker.log_artifacts(tmp, "weights")


def log_final_networks(tracker, config, data, states, result) -> None:
    """Mark the best network; log every network as an MLflow model and register the best.

    An architecture that ``torch.export`` cannot trace must not fail a finished run: its
    weights and checkpoint are kept, and the run says why it has no models."""
    tracker.set_tag(BEST_MODEL_TAG, f"net{result.best}")
    t = config.tracking
    if not t.log_models:
        return
    try:
        result.model_ids = log_networks(
            tracker, config.model.model, data, states, result.final, flatten(config)
        )
    except Exception as error:  # noqa: BLE001 (torch.export raises many kinds)
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
        tracker.set_tag("graftune.log_models_error", reason)
        warnings.warn(
            f"graftune: the networks were not logged as MLflow models ({reason})", stacklevel=2
        )
        return
    if result.soup is not None:  # not in model_ids: those are net{k}'s, by k
        log_soup(tracker, config.model.model, data, result.soup, result.final, flatten(config))
    best_id = result.model_ids[result.best]
    tracker.set_tag(BEST_MODEL_ID_TAG, best_id)
    if t.register_model:
        version = tracker.register_model(best_id, t.register_model)
        result.registered = f"{t.register_model} version {version}"
        tracker.set_tag(REGISTERED_TAG, f"{t.register_model}/{version}")
