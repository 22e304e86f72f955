"""How much of the cluster each worker of a search gets, fixed once for the whole search."""

from __future__ import annotations

import math
import os

from graftune.commands.searchspace import SearchSpace
from graftune.commands.trial import DRIVER_BUNDLE, trial_resources
from graftune.config import Config, ConfigError, with_overrides


def fit_workers(config: Config, space: SearchSpace, cluster: dict, where: str) -> Config:
    """Fix each worker's CPU share for the whole search. Unless --cpus-per-worker is given,
    a worker gets one CPU, or less when the largest population in the space would not fit
    beside its driver bundle on this cluster.

    Raises:
        ConfigError: a local Ray (which cannot grow) is too small for the largest trial.
    """
    largest = space.largest("num_models", config.population.num_models)
    cpus = config.population.cpus_per_worker
    if not cpus:
        spare = cluster.get("CPU", 1) - DRIVER_BUNDLE["CPU"]
        cpus = max(0.01, min(1.0, math.floor(spare / largest * 100) / 100))
    config = with_overrides(config, {"cpus_per_worker": cpus})
    needs = trial_resources({"num_models": largest}, config, cluster).required_resources
    short = [k for k, v in needs.items() if v > cluster.get(k, 0) + 1e-9]
    if short and not os.environ.get("RAY_ADDRESS"):  # a local Ray cannot grow: fail now
        have = {k: cluster.get(k, 0) for k in needs}
        raise ConfigError(
            f"a trial with {largest} workers needs {needs} but {where} has {have}; "
            f"lower num_models in the search space or --cpus-per-worker"
        )
    return config
