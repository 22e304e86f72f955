"""The allowed values of every setting, checked in one place before anything starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from graftune.config.settings import (
    Config,
    ConfigError,
    flag_name,
    setting_choices,
    setting_sections,
)


def at_least(bound: int, note: str = "") -> tuple[Callable[[Any], bool], str]:
    """A lower bound, written once: the test and the words the error shows."""
    return (lambda v: v >= bound), f"must be >= {bound}{' ' + note if note else ''}"


def above(bound: int) -> tuple[Callable[[Any], bool], str]:
    """A strict lower bound, written once."""
    return (lambda v: v > bound), f"must be > {bound}"


def between(low: int, high: int, note: str = "") -> tuple[Callable[[Any], bool], str]:
    """A closed range, written once."""
    return (lambda v: low <= v <= high), f"must lie in [{low}, {high}]{' ' + note if note else ''}"


def mlflow_model_name(name: str) -> bool:
    """MLflow 3's rule for a registered model name ('' = do not register), checked before
    the training rather than after it: not blank, no '/' or ':', no '%' (its file store), and
    not a name that resolves to another path ('.', '..x')."""
    bad = name.strip() == "" or any(c in name for c in "/:%") or name == "."
    return name == "" or not (bad or name.startswith(".."))


UNIT_INTERVAL = (lambda v: 0.0 <= v <= 1.0), "must lie in [0, 1]"
MAX_SEED = 2**32 - 1  # numpy's and Optuna's seeds are 32-bit
MAX_NUM_MODELS = 1024  # a worker (a Ray actor) per network, or per GPU
# Generating a synthetic image peaks near 36 kB (float noise), so 100,000 images (twice
# CIFAR-10's train set) need about 4 GB; 10,000 class templates about 1 GB with their test set.
MAX_SYNTHETIC_SIZE = 100_000
MAX_SYNTHETIC_CLASSES = 10_000
MAX_EXPERIMENT_NAME = 500  # MLflow's MAX_EXPERIMENT_NAME_LENGTH

# setting -> (test of its value, the rule as the error states it)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "A": UNIT_INTERVAL,
    "c": above(0),
    "fixed_alpha": UNIT_INTERVAL,
    "bins": at_least(2),
    "invalid_share": (lambda v: 0.0 < v < 1.0, "must lie in (0, 1)"),
    "interval_epochs": above(0),
    "interval_steps": at_least(0, "(0 = use epochs)"),
    "start_round": at_least(1),
    "bn_recalibrate_batches": at_least(0),
    "average_rate": UNIT_INTERVAL,
    "soup_bn_batches": at_least(0, "(0 = keep the averaged BatchNorm statistics)"),
    "epochs": at_least(1),
    "batch_size": at_least(1),
    "eval_batch_size": at_least(1),
    "lr": above(0),
    "momentum": (lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"),
    "weight_decay": at_least(0),
    "distill_weight": at_least(0, "(0 = off)"),
    "distill_temperature": above(0),
    "step_epochs": at_least(1),
    "step_gamma": (lambda v: 0.0 < v <= 1.0, "must lie in (0, 1]"),
    "subset": at_least(0, "(0 = all images)"),
    "test_subset": at_least(0, "(0 = all images)"),
    "synthetic_size": between(8, MAX_SYNTHETIC_SIZE, "(synthetic data is for tests)"),
    "synthetic_classes": between(2, MAX_SYNTHETIC_CLASSES, "(synthetic data is for tests)"),
    "max_image_bytes": at_least(1),
    "memory_budget": at_least(1),
    "image_size": (lambda v: v == 0 or v >= 8, "must be 0 (auto) or >= 8"),
    "crop_scale": (lambda v: 0 < v <= 1, "must be above 0 and at most 1"),
    "loader_workers": at_least(-1, "(-1 = from the worker's CPU share)"),
    "num_models": between(1, MAX_NUM_MODELS),
    "checkpoint_every": at_least(1),
    "cpus_per_worker": at_least(0, "(0 = share evenly)"),
    "max_failures": at_least(0),
    "max_lead": at_least(0),
    "gpus_per_worker": (lambda v: v == -1 or v >= 0, "must be -1 (auto) or >= 0"),
    "experiment": (
        lambda v: 1 <= len(v) <= MAX_EXPERIMENT_NAME,
        f"must be a name of 1 to {MAX_EXPERIMENT_NAME} characters (MLflow's rule)",
    ),
    "register_model": (
        mlflow_model_name,
        "must not be blank, contain '/', ':' or '%', be '.' or start with '..' "
        "(MLflow's rule for model names)",
    ),
}


def one_network_per_worker(config: Config) -> str:
    """The first setting that needs one network per worker, and why ('' if none does)."""
    m, g, p = config.model, config.graft, config.population
    settings = [
        ("asynchronous", p.asynchronous, "asynchronous rounds run one network per worker"),
        ("compile", m.compile, "--compile applies to unfused workers"),
        ("bn_recalibrate_batches", g.bn_recalibrate_batches > 0, "recalibration is unfused"),
    ]
    return next((f"{flag_name(name)} ({why})" for name, on, why in settings if on), "")


def validate(config: Config, known_models: list[str] | None = None) -> Config:
    """Check every setting; raise :class:`ConfigError` naming the first bad one.

    Args:
        config: the settings to check.
        known_models: registry names accepted for ``--model`` (skipped when None).
    Returns:
        The same config, so calls can be chained.
    """
    values = {
        name: getattr(getattr(config, s), name) for name, s in setting_sections(config).items()
    }
    for name, allowed in setting_choices().items():
        if values[name] not in allowed:
            raise ConfigError(
                f"{flag_name(name)} must be one of {', '.join(allowed)}; got {values[name]!r}"
            )
    m, d, g, p = config.model, config.data, config.graft, config.population
    if known_models is not None and m.model not in known_models:
        raise ConfigError(
            f"--model '{m.model}' is not registered; choose from: {', '.join(known_models)}"
        )
    for name, value in values.items():  # inf and nan pass every bound below, or fail it
        if isinstance(value, float) and not math.isfinite(value):  # with a misleading rule
            raise ConfigError(f"{flag_name(name)} must be a finite number; got {value!r}")
    for name, (ok, rule) in RULES.items():
        if not ok(values[name]):
            raise ConfigError(f"{flag_name(name)} {rule}; got {values[name]!r}")
    if not 0 <= config.train.seed <= MAX_SEED - (p.num_models - 1):  # network k: seed + k
        raise ConfigError(
            f"--seed must lie in [0, {MAX_SEED - (p.num_models - 1)}] with --num-models "
            f"{p.num_models} (network k uses seed + k); got {config.train.seed}"
        )
    if p.num_models < 2 and g.source == "network":
        raise ConfigError(
            f"--num-models must be >= 2 when --source is network (a ring needs a predecessor); "
            f"got {p.num_models}. Use --source none to train one network alone."
        )
    if p.asynchronous and (g.source == "average" or p.soup == "every_round"):
        what = "--source average" if g.source == "average" else "--soup every_round"
        raise ConfigError(
            f"{what} needs synchronous rounds (the whole population at once); drop --asynchronous"
        )
    if p.fuse == "on" and (unfused := one_network_per_worker(config)):
        raise ConfigError(f"--fuse on cannot be combined with {unfused}")
    if config.tracking.register_model and not config.tracking.log_models:
        raise ConfigError("--register-model needs the MLflow models; drop --no-log-models")
    if d.data_mode == "stream" and d.dataset == "synthetic":
        raise ConfigError("--data-mode stream reads image files; --dataset synthetic has none")
    if d.dataset in ("imagefolder", "imagenet") and not d.data_dir:
        raise ConfigError(
            f"--data-dir must name the image folder or .zip for --dataset {d.dataset}"
        )
    return config
