"""Every setting of a graftune run, as dataclass fields: its default, its choices (a
``Literal[...]`` annotation), its ``--help`` text (field metadata), and comments that give the
reasons for a default that do not belong in ``--help``."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A setting has a value that is not allowed; the message names the setting and the fix."""


def setting(default: Any, help: str) -> Any:
    """A dataclass field whose ``help`` (the ``--help`` text of its flag) lives beside it."""
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    model: str = setting("resnet32", "a name from graftune.models.list_models()")
    # NHWC: faster for resnet20 on the CPUs we measured (BENCHMARKS.md)
    channels_last: bool = setting(True, "NHWC memory layout for the network and its batches")
    # off: slower for resnet20 on the machines we measured (BENCHMARKS.md)
    compile: bool = setting(False, "torch.compile the network")
    precision: Literal["auto", "bf16", "fp32"] = setting(
        "auto", "auto = bf16 autocast on GPUs that have it, fp32 on CPUs"
    )


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "cifar100", "imagefolder", "imagenet", "synthetic"] = setting(
        "cifar10", "imagefolder reads --data-dir, a folder or .zip with train/ and test/ (or val/)"
    )
    data_dir: str = setting("./data", "torchvision's root, or the image folder or zip")
    download: bool = setting(True, "let torchvision fetch CIFAR when it is missing")
    subset: int = setting(0, "train images to use (one fixed random subset); 0 = all")
    test_subset: int = setting(0, "test images to use; 0 = all")
    synthetic_size: int = setting(512, "train images of the synthetic set (test set is a quarter)")
    synthetic_classes: int = setting(10, "classes of the synthetic set")
    # 16 MiB: room for a 2,300 x 2,300 RGB image, far more than a CNN here trains on; a zip or
    # PNG bomb declares more, and is refused from its header before anything is inflated.
    max_image_bytes: int = setting(16 * 2**20, "largest image file, and image decoded (W*H*3)")
    # auto: a small set of one image size is decoded into memory once (fastest, and Ray
    # shares the arrays); images of several sizes, or more than --memory-budget, are streamed.
    data_mode: Literal["auto", "memory", "stream"] = setting(
        "auto", "memory (decode all once) | stream (decode batch by batch) | auto"
    )
    # 4 GiB: CIFAR-10 decoded is 180 MiB; ImageNet at 224 pixels would be 190 GiB.
    memory_budget: int = setting(4 * 2**30, "auto streams an image set larger than this, decoded")
    image_size: int = setting(0, "side of the training crops when streaming; 0 = 224")
    # torchvision's (and the authors' ImageNet) 8%; low-resolution images and short schedules
    # often do better with milder crops (timm's --scale, 0.35 for small images).
    crop_scale: float = setting(0.08, "streaming: smallest share of an image a training crop keeps")
    loader_workers: int = setting(-1, "decoding processes per worker; -1 = from its CPU share")
    # One decode serves every network of a fused worker; each still has its own crops and flips.
    shared_order: bool = setting(True, "streaming: a worker's networks see the same image order")


@dataclass
class TrainConfig:
    epochs: int = setting(200, "the authors' schedule")
    batch_size: int = setting(128, "per network")
    lr: float = setting(0.1, "peak learning rate of the last network (see --diff-lr)")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "L2 penalty of SGD")
    schedule: Literal["cosine", "step"] = setting(
        "cosine", "cosine (annealed per step) | step (x step_gamma every step_epochs)"
    )
    step_epochs: int = setting(60, "step schedule: epochs between decays")
    step_gamma: float = setting(0.1, "step schedule: factor of each decay")
    diff_lr: bool = setting(
        True, "net k of K starts at lr*(1+cos(pi*(K-k)/K))/2: keeps K=2 diverse"
    )
    seed: int = setting(0, "network k uses seed + k for init, data order and augmentation")
    # bigger batches spill a CPU's caches (slower there) but may suit a GPU: measure first
    eval_batch_size: int = setting(256, "images per evaluation batch")
    # Online distillation: loss += W * T^2 * KL(teacher || student), the teacher being the ring
    # predecessor's trained weights received at the last graft (frozen, eval mode).
    distill_weight: float = setting(0.0, "W: weight of the distillation loss; 0 = off")
    distill_temperature: float = setting(4.0, "T: softens both outputs before the KL")


@dataclass
class GraftConfig:
    source: Literal["network", "noise", "none", "average"] = setting(
        "network",
        "network (ring predecessor) | noise (control) | none (baseline) | average (PAPA: "
        "every network moves toward the population's average weights)",
    )
    level: Literal["layer", "filter"] = setting(
        "layer", "layer (one alpha per unit) | filter (only the invalid filters)"
    )
    weighting: Literal["adaptive", "fixed"] = setting(
        "adaptive", "adaptive (Eq. 7) | fixed (alpha = fixed_alpha)"
    )
    A: float = setting(0.4, "Eq. 7 amplitude: alpha lies in (0.5 - A/2, 0.5 + A/2)")
    c: float = setting(500.0, "Eq. 7 slope on the entropy difference (authors' code: 500)")
    fixed_alpha: float = setting(0.5, "alpha of fixed weighting (supplement Table 4)")
    bins: int = setting(10, "histogram bins of the weight entropy")
    entropy_form: Literal["layer", "filter_sum"] = setting(
        "layer", "layer (Eq. 6, whole unit at once) | filter_sum (Eq. 5)"
    )
    invalid_share: float = setting(0.2, "filter level: lowest-entropy share that is grafted")
    # PAPA's code: w <- 0.99 w + 0.01 average every 10 SGD steps (--interval-steps 10); its
    # README suggests 1 - 0.999 ** steps for other intervals. 1 = PAPA-all (the average).
    average_rate: float = setting(0.01, "--source average: share of the way to the average")
    interval_epochs: float = setting(1.0, "train this many epochs between grafts ...")
    interval_steps: int = setting(0, "... or this many optimizer steps, when > 0")
    start_round: int = setting(1, "first round that ends with a graft (later = train apart first)")
    bn_recalibrate_batches: int = setting(0, "batches that re-estimate BN after a graft")
    eval_after_graft: bool = setting(False, "also log net{k}/test_acc_grafted after each graft")


@dataclass
class PopulationConfig:
    num_models: int = setting(2, "K, the size of the ring")
    placement: Literal["PACK", "SPREAD"] = setting("PACK", "how the workers are laid out")
    cpus_per_worker: float = setting(0.0, "0 = share the cluster's CPUs evenly among the workers")
    gpus_per_worker: float = setting(
        -1.0,
        "-1 = auto (a whole GPU per fused worker; unfused, a GPU each if there are K, else a "
        "share); 0 = CPU only",
    )
    checkpoint_every: int = setting(1, "rounds between checkpoints on disk")
    checkpoint_dir: str = setting("./checkpoints", "where population checkpoints are written")
    max_failures: int = setting(3, "worker deaths survived per run before giving up")
    resume: str = setting("", "MLflow run id of a stopped run to continue")
    asynchronous: bool = setting(False, "no barrier: graft from the predecessor's latest snapshot")
    max_lead: int = setting(2, "asynchronous: rounds a network may run ahead of the slowest")
    fuse: Literal["auto", "on", "off"] = setting(
        "auto", "on: a worker per device trains its networks in one step; auto = on with GPUs"
    )
    # The soup is one network's cost at test time; every_round also tracks it as it trains.
    soup: Literal["end", "every_round", "off"] = setting(
        "end", "evaluate the soup (the networks' average weights) at the end, every round or not"
    )
    soup_bn_batches: int = setting(50, "training batches that re-estimate the soup's BatchNorm")
    fused_step: Literal["grouped", "vmap"] = setting(
        "grouped", "fused networks as one wide network (where it equals vmap), or torch.func.vmap"
    )


@dataclass
class TrackingConfig:
    tracking_uri: str = setting("", '"" = MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here')
    experiment: str = setting("graftune", "MLflow experiment of the run")
    run_name: str = setting("", "MLflow run name (default: MLflow picks one)")
    log_weights: bool = setting(True, "log the final weights of every network as an artifact")
    plots: bool = setting(True, "log PNG plots of accuracy, entropy, alpha and invalid filters")
    log_models: bool = setting(True, "log each final network as an MLflow model net{k}")
    register_model: str = setting("", "register the best network under this name")
    system_metrics: bool = setting(True, "MLflow's CPU, memory and GPU metrics of the driver")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    graft: GraftConfig = field(default_factory=GraftConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SECTIONS = [f.name for f in dataclasses.fields(Config)]


def setting_sections(config: Config | None = None) -> dict[str, str]:
    """Map each setting name to the section that holds it, e.g. ``{"A": "graft", ...}``."""
    config = config or Config()
    return {
        f.name: section
        for section in SECTIONS
        for f in dataclasses.fields(getattr(config, section))
    }


@functools.cache
def setting_choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of each setting annotated ``Literal[...]``, e.g. ``{"level": ("layer",
    "filter"), ...}``: the annotation is the one list of choices."""
    choices = {}
    for section in SECTIONS:
        hints = typing.get_type_hints(type(getattr(Config(), section)))
        for name, hint in hints.items():
            if typing.get_origin(hint) is Literal:
                choices[name] = typing.get_args(hint)
    return choices


def flag_name(setting: str) -> str:
    """The command-line flag of a setting: ``num_models`` -> ``--num-models``."""
    return "--" + setting.replace("_", "-")
