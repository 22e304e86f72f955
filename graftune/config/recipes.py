"""Dataset recipes: the settings a dataset is usually trained with, used as the defaults of a
run on it. A recipe only moves defaults: every value the user gives, in a ``--config`` file
or as a flag, still wins over it.

``imagenet`` is the recipe of the paper's ImageNet experiments (Meng et al., CVPR 2020, and
their published training script): torchvision's ResNet-18, 90 epochs, batches of 256, SGD
at lr 0.1 annealed by a cosine every step, momentum 0.9, weight decay 1e-4, two networks
grafted once an epoch with A = 0.4 and c = 500, all at the same learning rate.
"""

from __future__ import annotations

from typing import Any

from graftune.config.overrides import with_overrides
from graftune.config.settings import Config

RECIPES: dict[str, dict[str, Any]] = {
    "imagenet": {
        "model": "resnet18",
        "epochs": 90,
        "batch_size": 256,
        "eval_batch_size": 256,
        "lr": 0.1,
        "schedule": "cosine",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        # the ImageNet script starts every network at the same lr (its CIFAR script has a
        # flag for different ones): graftune's diff_lr would change the recipe
        "diff_lr": False,
        "num_models": 2,
        "source": "network",
        "A": 0.4,
        "c": 500.0,
        "interval_epochs": 1.0,
        "interval_steps": 0,
        # ImageNet's images differ in size and are far more than memory: streamed, cropped
        # to 224 pixels as the authors' loader does
        "data_mode": "stream",
        "image_size": 224,
    },
}


def recipe_defaults(dataset: str) -> Config:
    """The defaults of a run on ``dataset``: graftune's own, with the dataset's recipe (if
    it has one) in their place."""
    return with_overrides(Config(), {"dataset": dataset, **RECIPES.get(dataset, {})})


def with_recipe(base: Config | None, *sources: dict[str, Any], dataset: str = "") -> Config:
    """``base`` (or the defaults) with ``sources`` applied in order (a file's settings, then
    the flags). Without a ``base``, when the settings name a dataset with a recipe (or, if
    they name none, ``dataset`` does), the recipe replaces the defaults under them, so a
    value from any source wins over the recipe.

    Args:
        base: settings to start from instead of the defaults (a resumed run's): a recipe is
            then not applied, as those settings already hold the one it ran with.
        sources: mappings of settings, later ones winning.
        dataset: the dataset when no source names one ("" = graftune's default).
    """
    if base is not None:
        return _applied(base, sources)
    start = with_overrides(Config(), {"dataset": dataset}) if dataset else Config()
    named = _applied(start, sources).data.dataset  # a source may name another dataset
    return _applied(recipe_defaults(named), sources)


def _applied(config: Config, sources: tuple[dict[str, Any], ...]) -> Config:
    for source in sources:
        config = with_overrides(config, source)
    return config
