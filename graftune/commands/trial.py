"""One Tune trial: a whole population in the trial's own placement group.

The trial's resources come from its own population size (one bundle for this process, one
per worker); its population checkpoint travels with Tune's checkpoint, so a restored trial
continues the same population and the same MLflow run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from graftune.commands.libraries import quiet_libraries
from graftune.commands.searchspace import trial_config
from graftune.config import Config, with_overrides
from graftune.data import ImageSet
from graftune.population.resources import worker_layout
from graftune.tracking.checkpoint import (
    CHECKPOINT_NAME,
    Resume,
    check_compatible,
    checkpoint_path,
    load_checkpoint,
)

if TYPE_CHECKING:  # torch and plotting are imported only inside trials
    from graftune.tracking.experiment import LoggedRound

TRIAL_FILE = "trial.json"  # beside population.pt in a trial's Tune checkpoint
DRIVER_BUNDLE = {"CPU": 1.0}  # the trial's own process: it waits on its workers most of the time


def trial_resources(params: dict[str, Any], base: Config, cluster: dict):
    """One bundle for the trial's driver, then one per worker of its own population: one
    per network, one per core on CPUs when there are more networks than cores, or one per
    GPU when the networks are fused (:func:`~graftune.population.resources.worker_layout`)."""
    config = trial_config(base, params)
    layout = worker_layout(config, cluster)
    bundles = [dict(DRIVER_BUNDLE)] + [dict(layout.resources) for _ in layout.groups]
    return tune.PlacementGroupFactory(bundles, strategy=config.population.placement)


def run_trial(params: dict[str, Any], base: Config, data: ImageSet, parent_run_id: str) -> None:
    """The Tune trainable: one whole population in the trial's placement group.

    Bundle 0 is this process; workers take bundles 1..K (each at an explicit index: a mix of
    explicit and implicit placement inside a trial's group can hang). The last round is
    reported after the run has logged its final artifacts, so a stop decision at that
    report cannot cut them off.
    """
    from graftune.tracking.experiment import LoggedRound, run_experiment  # only in trials

    quiet_libraries()
    placement = ray.util.get_current_placement_group()
    worker = placement.bundle_specs[1]
    config = with_overrides(
        trial_config(base, params),
        {
            "cpus_per_worker": worker.get("CPU", 0.0),
            "gpus_per_worker": worker.get("GPU", 0.0),
            "run_name": tune.get_context().get_trial_name(),
            "register_model": "",  # the search registers its best trial's network, once
        },
    )
    config, resume = restore_trial(config, tune.get_checkpoint())
    reports = TrialReports(
        {"num_models": config.population.num_models, "bundles": len(placement.bundle_specs)}
    )
    done = run_experiment(
        config,
        data,
        reports.on_round,
        reports.on_start,
        placement=placement,
        bundle_offset=1,
        parent_run_id=parent_run_id,
        resume=resume,
    )
    if reports.last is not None:
        report_round(reports.last, reports.extra)
    elif done.history:  # restored after its last round: nothing was left but the report
        final = done.final
        reports.extra["num_rounds"] = final["round"]
        report_round(
            LoggedRound(final["round"], [], final["population"], run_id=done.run_id), reports.extra
        )


@dataclass
class TrialReports:
    """What a trial reports to Tune, round by round. The last round is held back (in
    ``last``) until the run has logged its final artifacts: a stop decision at that report
    cannot cut them off then."""

    extra: dict[str, Any]  # reported with every round: population size, bundles, rounds
    num_rounds: int = 0
    last: LoggedRound | None = None

    def on_start(self, population: Any, num_rounds: int) -> None:
        self.num_rounds = num_rounds
        self.extra["num_rounds"] = num_rounds

    def on_round(self, result: LoggedRound) -> None:
        if result.round < self.num_rounds:
            report_round(result, self.extra)
        else:
            self.last = result


def restore_trial(config: Config, checkpoint) -> tuple[Config, Resume | None]:
    """A restored trial goes on with the same population and the same MLflow run.

    Tune's copy of the checkpoint is the fallback; the population's own file wins when this
    node has it and it is newer (a round may have ended after the last report)."""
    if checkpoint is None:
        return config, None
    with checkpoint.as_directory() as directory:
        run_id = json.loads((Path(directory) / TRIAL_FILE).read_text())["run_id"]
        payload = load_checkpoint(Path(directory) / CHECKPOINT_NAME)
    path = checkpoint_path(config.population.checkpoint_dir, run_id)
    if path.exists():
        own = load_checkpoint(path)
        payload = own if own["round"] > payload["round"] else payload
    config = with_overrides(config, {"resume": run_id})
    check_compatible(payload, config.model.model, config.population.num_models)
    return config, Resume(run_id, payload, str(path))


def report_round(result: LoggedRound, extra: dict[str, Any]) -> None:
    """Population metrics to Tune; with a copy of the population checkpoint when one was
    written this round (Tune keeps the copy, so a restored trial can go on from it)."""
    metrics = {**result.population, "round": result.round, **extra, "run_id": result.run_id}
    if not result.checkpoint:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        shutil.copy2(result.checkpoint, Path(directory) / CHECKPOINT_NAME)
        info = {"run_id": result.run_id, "round": result.round}
        (Path(directory) / TRIAL_FILE).write_text(json.dumps(info))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
