"""The Ray Tune Tuner of a search: Optuna (TPE) or a grid, ASHA when asked, each trial a
population in its own placement group; or the stopped search, restored."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from graftune.commands.search_state import SearchState
from graftune.commands.trial import run_trial, trial_resources
from graftune.commands.trial_lines import TrialLines
from graftune.config import Config
from graftune.data import ImageSet


def make_tuner(
    args: argparse.Namespace, config: Config, data: ImageSet, state: SearchState, cluster: dict
) -> tune.Tuner:
    # Tune's new console output prints a banner and tables even at verbose=0, and warns
    # about state snapshots when rounds are short; TrialLines prints what matters instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=config, data=data, parent_run_id=state.parent_run_id),
        functools.partial(trial_resources, base=config, cluster=cluster),
    )
    if state.space is None:  # --resume: Tune restores the space, searcher and scheduler
        return tune.Tuner.restore(
            state.path, trainable, resume_unfinished=True, resume_errored=True
        )
    space = state.space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scheduler = None
    if args.asha:  # trials end after their last round by themselves; ASHA stops them early
        scheduler = ASHAScheduler(
            time_attr="round",
            max_t=10**6,
            grace_period=args.grace_period,
            reduction_factor=args.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=space.param_space,
        tune_config=tune.TuneConfig(
            metric=args.metric,
            mode="max",
            search_alg=None if space.has_grid else OptunaSearch(seed=config.train.seed),  # TPE
            scheduler=scheduler,
            num_samples=state.num_samples,
            max_concurrent_trials=args.max_concurrent_trials or None,
        ),
        run_config=tune.RunConfig(
            name=state.name,
            storage_path=str(Path(state.path).parent),  # absolute: Tune needs it so
            verbose=0,  # one line per finished trial instead (TrialLines)
            callbacks=[TrialLines(config.tracking.tracking_uri)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
