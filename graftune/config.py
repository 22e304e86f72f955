"""Every setting of a graftune run, as commented dataclasses, validated in one place.

The same field names are the command-line flags (``num_models`` -> ``--num-models``), the keys
of a YAML config file (flat, or nested by section), the MLflow params (``"graft/A"``) and the
Tune search-space keys, so the four never drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the setting and the fix."""


@dataclass
class ModelConfig:
    model: str = "resnet32"  # a name from graftune.models.list_models(); the paper's main net
    channels_last: bool = True  # NHWC layout: +16% train, +11% eval img/s for resnet20 on CPU
    compile: bool = False  # torch.compile the network; off: resnet20 trains 15% slower with it
    precision: str = "auto"  # auto (bf16 autocast on GPUs that have it, fp32 on CPUs) | bf16 | fp32


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | imagefolder (a dir or .zip) | synthetic
    data_dir: str = "./data"  # torchvision's root, or the image folder / zip with train/, test/
    download: bool = True  # let torchvision fetch CIFAR when it is missing and we are online
    subset: int = 0  # train images to use (a fixed random subset, same for all nets); 0 = all
    test_subset: int = 0  # test images to use; 0 = all
    synthetic_size: int = 512  # train images of the synthetic set (test set is a quarter)
    synthetic_classes: int = 10  # classes of the synthetic set
    # 16 MiB: room for a 2,300 x 2,300 RGB image, far more than a CNN here trains on; a zip or
    # PNG bomb declares more, and is refused from its header before anything is inflated.
    max_image_bytes: int = 16 * 2**20  # bytes: largest image file, and image decoded (W*H*3)


@dataclass
class TrainConfig:
    epochs: int = 200  # the authors' schedule
    batch_size: int = 128  # per network
    lr: float = 0.1  # peak learning rate of the last network (see diff_lr)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine (annealed per step) | step (x step_gamma every step_epochs)
    step_epochs: int = 60
    step_gamma: float = 0.1
    diff_lr: bool = True  # k-th of K nets starts at lr*(1+cos(pi*(K-k)/K))/2: keeps K=2 diverse
    seed: int = 0  # base seed; network k uses seed + k for init, data order and augmentation
    eval_batch_size: int = 256  # bigger batches spill CPU caches (1000: 0.6x speed here)
    # Online distillation: loss += W * T^2 * KL(teacher || student), the teacher being the ring
    # predecessor's trained weights received at the last graft (frozen, eval mode). 0 = off.
    distill_weight: float = 0.0  # W: weight of the distillation loss; 0 = off
    distill_temperature: float = 4.0  # T: softens both outputs before the KL


@dataclass
class GraftConfig:
    source: str = "network"  # network (ring predecessor) | noise (control) | none (baseline)
    level: str = "layer"  # layer (one alpha per unit) | filter (only the invalid filters)
    weighting: str = "adaptive"  # adaptive (Eq. 7) | fixed (alpha = fixed_alpha)
    A: float = 0.4  # Eq. 7 amplitude: alpha lies in (0.5 - A/2, 0.5 + A/2)
    c: float = 500.0  # Eq. 7 slope on the entropy difference (authors' code: 500)
    fixed_alpha: float = 0.5  # alpha of fixed weighting (supplement Table 4)
    bins: int = 10  # histogram bins of the weight entropy
    entropy_form: str = "layer"  # layer (Eq. 6, whole unit at once) | filter_sum (Eq. 5)
    invalid_share: float = 0.2  # filter level: lowest-entropy share of filters that is grafted
    interval_epochs: float = 1.0  # train this many epochs between grafts ...
    interval_steps: int = 0  # ... or this many optimizer steps, when > 0
    start_round: int = 1  # first round that ends with a graft (later = train apart first)
    bn_recalibrate_batches: int = 0  # re-estimate BN statistics on this many batches after a graft
    eval_after_graft: bool = False  # also log net{k}/test_acc_grafted, right after each graft


@dataclass
class PopulationConfig:
    num_models: int = 2  # K, the size of the ring
    placement: str = "PACK"  # PACK | SPREAD: how the placement group lays out the workers
    cpus_per_worker: float = 0.0  # 0 = share the cluster's CPUs evenly among the workers
    gpus_per_worker: float = -1.0  # -1 = a GPU each if there are K, else an even share; 0 = CPU
    checkpoint_every: int = 1  # rounds between checkpoints on disk
    checkpoint_dir: str = "./checkpoints"
    max_failures: int = 3  # worker deaths survived per run before giving up
    resume: str = ""  # MLflow run id of a stopped run to continue
    asynchronous: bool = False  # no barrier: graft from the predecessor's latest snapshot
    max_lead: int = 2  # asynchronous: rounds a network may run ahead of the slowest
    fuse: str = "auto"  # on: a worker per device trains its networks in one step | off | auto


@dataclass
class TrackingConfig:
    tracking_uri: str = ""  # "" = MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "graftune"
    run_name: str = ""
    log_weights: bool = True  # log the final weights of every network as an artifact
    log_models: bool = True  # each final network as an MLflow model net{k}: ~1 s each to export
    register_model: str = ""  # register the best network under this name in the model registry
    system_metrics: bool = True  # MLflow's CPU, memory and GPU metrics of the driver's node


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    graft: GraftConfig = field(default_factory=GraftConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SECTIONS = [f.name for f in dataclasses.fields(Config)]

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("cifar10", "cifar100", "imagefolder", "synthetic"),
    "schedule": ("cosine", "step"),
    "source": ("network", "noise", "none"),
    "level": ("layer", "filter"),
    "weighting": ("adaptive", "fixed"),
    "entropy_form": ("layer", "filter_sum"),
    "placement": ("PACK", "SPREAD"),
    "precision": ("auto", "bf16", "fp32"),
    "fuse": ("auto", "on", "off"),
}


def setting_sections(config: Config | None = None) -> dict[str, str]:
    """Map each setting name to the section that holds it, e.g. ``{"A": "graft", ...}``."""
    config = config or Config()
    return {
        f.name: section
        for section in SECTIONS
        for f in dataclasses.fields(getattr(config, section))
    }


def flag_name(setting: str) -> str:
    """The command-line flag of a setting: ``num_models`` -> ``--num-models``."""
    return "--" + setting.replace("_", "-")


def flatten(config: Config) -> dict[str, Any]:
    """Nested config to flat ``"section/setting"`` keys, for MLflow params and Tune."""
    return {
        f"{section}/{name}": value
        for section in SECTIONS
        for name, value in dataclasses.asdict(getattr(config, section)).items()
    }


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``config`` with settings replaced.

    Keys may be plain setting names (``"A"``), ``"section/setting"`` or a nested
    ``{"graft": {"A": 0.2}}`` mapping, as in a YAML file. Values are coerced to the type of
    the default, so ``"0.2"`` from a file or Tune works for a float setting.
    """
    sections = setting_sections(config)
    changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if sections.get(sub_key) != key:
                    raise ConfigError(f"unknown setting '{key}.{sub_key}' in section '{key}'")
                changes[key][sub_key] = sub_value
            continue
        name = key.split("/", 1)[-1]
        if name not in sections or ("/" in key and key.split("/", 1)[0] != sections[name]):
            raise ConfigError(f"unknown setting '{key}'; see python -m graftune.run --help")
        changes[sections[name]][name] = value
    new_sections = {}
    for section in SECTIONS:
        current = getattr(config, section)
        typed = {k: _coerce(k, v, getattr(current, k)) for k, v in changes[section].items()}
        new_sections[section] = dataclasses.replace(current, **typed)
    return Config(**new_sections)


def from_flat(flat: dict[str, Any]) -> Config:
    """Inverse of :func:`flatten` (values may be strings, as MLflow params come back)."""
    return with_overrides(Config(), flat)


def _coerce(name: str, value: Any, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        wanted = {int: "an integer", float: "a number", bool: "true or false"}.get(
            kind, kind.__name__
        )
        raise ConfigError(f"{flag_name(name)} must be {wanted}, got {value!r}") from None


def validate(config: Config, known_models: list[str] | None = None) -> Config:
    """Check every setting; raise :class:`ConfigError` naming the first bad one.

    Args:
        config: the settings to check.
        known_models: registry names accepted for ``--model`` (skipped when None).
    Returns:
        The same config, so calls can be chained.
    """
    sections = setting_sections(config)
    for name, allowed in CHOICES.items():
        value = getattr(getattr(config, sections[name]), name)
        if value not in allowed:
            raise ConfigError(
                f"{flag_name(name)} must be one of {', '.join(allowed)}; got {value!r}"
            )
    m, d, t, g, p = config.model, config.data, config.train, config.graft, config.population
    if known_models is not None and m.model not in known_models:
        raise ConfigError(
            f"--model '{m.model}' is not registered; choose from: {', '.join(known_models)}"
        )
    checks = [
        (0.0 <= g.A <= 1.0, "A", "must lie in [0, 1]", g.A),
        (g.c > 0, "c", "must be > 0", g.c),
        (0.0 <= g.fixed_alpha <= 1.0, "fixed_alpha", "must lie in [0, 1]", g.fixed_alpha),
        (g.bins >= 2, "bins", "must be >= 2", g.bins),
        (0.0 < g.invalid_share < 1.0, "invalid_share", "must lie in (0, 1)", g.invalid_share),
        (g.interval_epochs > 0, "interval_epochs", "must be > 0", g.interval_epochs),
        (
            g.interval_steps >= 0,
            "interval_steps",
            "must be >= 0 (0 = use epochs)",
            g.interval_steps,
        ),
        (g.start_round >= 1, "start_round", "must be >= 1", g.start_round),
        (
            g.bn_recalibrate_batches >= 0,
            "bn_recalibrate_batches",
            "must be >= 0",
            g.bn_recalibrate_batches,
        ),
        (t.epochs >= 1, "epochs", "must be >= 1", t.epochs),
        (t.batch_size >= 1, "batch_size", "must be >= 1", t.batch_size),
        (t.eval_batch_size >= 1, "eval_batch_size", "must be >= 1", t.eval_batch_size),
        (t.lr > 0, "lr", "must be > 0", t.lr),
        (0.0 <= t.momentum < 1.0, "momentum", "must lie in [0, 1)", t.momentum),
        (t.weight_decay >= 0, "weight_decay", "must be >= 0", t.weight_decay),
        (t.distill_weight >= 0, "distill_weight", "must be >= 0 (0 = off)", t.distill_weight),
        (
            t.distill_temperature > 0,
            "distill_temperature",
            "must be > 0",
            t.distill_temperature,
        ),
        (t.step_epochs >= 1, "step_epochs", "must be >= 1", t.step_epochs),
        (0.0 < t.step_gamma <= 1.0, "step_gamma", "must lie in (0, 1]", t.step_gamma),
        (d.subset >= 0, "subset", "must be >= 0 (0 = all images)", d.subset),
        (d.test_subset >= 0, "test_subset", "must be >= 0 (0 = all images)", d.test_subset),
        (d.synthetic_size >= 8, "synthetic_size", "must be >= 8", d.synthetic_size),
        (d.synthetic_classes >= 2, "synthetic_classes", "must be >= 2", d.synthetic_classes),
        (d.max_image_bytes >= 1, "max_image_bytes", "must be >= 1", d.max_image_bytes),
        (p.num_models >= 1, "num_models", "must be >= 1", p.num_models),
        (p.checkpoint_every >= 1, "checkpoint_every", "must be >= 1", p.checkpoint_every),
        (
            p.cpus_per_worker >= 0,
            "cpus_per_worker",
            "must be >= 0 (0 = share evenly)",
            p.cpus_per_worker,
        ),
        (p.max_failures >= 0, "max_failures", "must be >= 0", p.max_failures),
        (p.max_lead >= 0, "max_lead", "must be >= 0", p.max_lead),
    ]
    for ok, name, rule, value in checks:
        if not ok:
            raise ConfigError(f"{flag_name(name)} {rule}; got {value!r}")
    if p.num_models < 2 and g.source == "network":
        raise ConfigError(
            f"--num-models must be >= 2 when --source is network (a ring needs a predecessor); "
            f"got {p.num_models}. Use --source none to train one network alone."
        )
    if p.fuse == "on":
        unfusable = [
            ("asynchronous", p.asynchronous, "asynchronous rounds run one network per worker"),
            ("compile", m.compile, "--compile applies to unfused workers"),
            ("bn_recalibrate_batches", g.bn_recalibrate_batches > 0, "recalibration is unfused"),
        ]
        for name, on, why in unfusable:
            if on:
                raise ConfigError(f"--fuse on cannot be combined with {flag_name(name)} ({why})")
    if config.tracking.register_model and not config.tracking.log_models:
        raise ConfigError("--register-model needs the MLflow models; drop --no-log-models")
    if d.dataset == "imagefolder" and not d.data_dir:
        raise ConfigError("--data-dir must name the image folder or .zip for --dataset imagefolder")
    return config
