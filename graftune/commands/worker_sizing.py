"""How much of the cluster each worker of a search gets, fixed once for the whole search."""

from __future__ import annotations

import math

from graftune.commands.libraries import beyond_local_ray
from graftune.commands.searchspace import SearchSpace
from graftune.commands.trial import DRIVER_BUNDLE, trial_resources
from graftune.config import Config, ConfigError, with_overrides
from graftune.population.resources import cpu_workers

# What a trial's placement group is sized from (graftune.population.resources.worker_layout
# reads these): the space's largest values of them are the trials that must fit.
SIZING = (
    "num_models",
    "cpus_per_worker",
    "gpus_per_worker",
    "fuse",
    "model",
    "asynchronous",
    "compile",
    "bn_recalibrate_batches",
)


def fit_workers(config: Config, space: SearchSpace, cluster: dict, where: str) -> Config:
    """Fix each worker's CPU share for the whole search. Unless --cpus-per-worker is given,
    a worker gets one CPU, or less when the workers of the largest population in the space
    would not fit beside its driver bundle on this cluster.

    Raises:
        ConfigError: a local Ray (which cannot grow) is too small for a trial the space can
            produce (every choice and grid value, a range's upper end): such a trial would
            wait for resources forever.
    """
    largest = space.largest("num_models", config.population.num_models)
    cpus = config.population.cpus_per_worker
    if not cpus:  # on CPUs a trial has at most a worker per core (cpu_workers)
        asked = config.population.gpus_per_worker
        on_gpus = asked > 0 or (asked < 0 and cluster.get("GPU", 0) > 0)
        workers = largest if on_gpus else min(largest, cpu_workers(cluster))
        spare = cluster.get("CPU", 1) - DRIVER_BUNDLE["CPU"]
        cpus = max(0.01, min(1.0, math.floor(spare / workers * 100) / 100))
    config = with_overrides(config, {"cpus_per_worker": cpus})
    for point in space.corners(SIZING):
        needs = trial_resources(point, config, cluster).required_resources
        if have := beyond_local_ray(needs, cluster):  # it would wait for ever
            workers = len(trial_resources(point, config, cluster).bundles) - 1
            searched = ", ".join(f"{k}={v}" for k, v in point.items() if k != "num_models")
            raise ConfigError(
                f"a trial with {workers} workers{f' ({searched})' if searched else ''} needs "
                f"{needs} but {where} has {have}; lower num_models or cpus_per_worker in the "
                f"search space, or --cpus-per-worker"
            )
    return config
