"""Dataset recipes: --dataset imagenet brings the authors' ImageNet settings as defaults, and
every value the user gives (a flag, a --config file) still wins over them."""

import numpy as np
import pytest

from conftest import build, good_members
from graftune.commands import run
from graftune.commands.cli import config_from_args
from graftune.config import RECIPES, Config, ConfigError, validate, with_overrides
from graftune.data import load_dataset
from graftune.models import list_models

# The paper's ImageNet recipe, as their training script's defaults set it.
AUTHORS_IMAGENET = {
    ("model", "model"): "resnet18",
    ("train", "epochs"): 90,
    ("train", "batch_size"): 256,
    ("train", "lr"): 0.1,
    ("train", "schedule"): "cosine",
    ("train", "momentum"): 0.9,
    ("train", "weight_decay"): 1e-4,
    ("train", "diff_lr"): False,
    ("graft", "A"): 0.4,
    ("graft", "c"): 500.0,
    ("population", "num_models"): 2,
}


def configured(*argv: str, base: Config | None = None, dataset: str = "") -> Config:
    return config_from_args(run.build_parser().parse_args(list(argv)), base, dataset=dataset)


def value(config: Config, key: tuple[str, str]):
    return getattr(getattr(config, key[0]), key[1])


def test_imagenet_gets_the_authors_recipe_where_nothing_was_given():
    config = configured("--dataset", "imagenet")
    assert {key: value(config, key) for key in AUTHORS_IMAGENET} == AUTHORS_IMAGENET
    # the recipe differs from graftune's own defaults, or this test would prove nothing
    assert Config().train.weight_decay != 1e-4 and Config().model.model != "resnet18"
    validate(config, known_models=list_models())


def test_other_datasets_keep_graftunes_defaults():
    assert configured("--dataset", "cifar100") == with_overrides(Config(), {"dataset": "cifar100"})
    assert configured() == Config()


def test_a_flag_wins_over_the_recipe():
    config = configured(
        "--dataset", "imagenet", "--epochs", "3", "--diff-lr", "--model", "tiny_cnn"
    )
    assert (config.train.epochs, config.train.diff_lr, config.model.model) == (3, True, "tiny_cnn")
    assert (config.train.weight_decay, config.train.batch_size) == (1e-4, 256)  # the rest stays


def test_a_config_file_value_wins_over_the_recipe_and_may_name_the_dataset(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("data:\n  dataset: imagenet\ntrain:\n  weight_decay: 5.0e-4\nc: 10\n")
    config = configured("--config", str(path))
    assert (config.train.weight_decay, config.graft.c) == (5e-4, 10.0)
    assert (config.train.epochs, config.model.model) == (90, "resnet18")
    # and a flag still wins over the file
    assert configured("--config", str(path), "--weight-decay", "0.001").train.weight_decay == 1e-3


def test_a_resumed_runs_settings_are_not_overwritten_by_the_recipe():
    stopped = with_overrides(Config(), {"dataset": "imagenet", "epochs": 3, "model": "tiny_cnn"})
    config = configured("--epochs", "4", base=stopped)
    assert (config.train.epochs, config.model.model) == (4, "tiny_cnn")
    assert config.train.weight_decay == Config().train.weight_decay


def test_a_commands_own_dataset_brings_its_recipe_unless_another_is_named():
    assert configured(dataset="imagenet").model.model == "resnet18"
    assert configured("--dataset", "cifar10", dataset="imagenet") == Config()


def test_every_recipe_is_valid_settings():
    for dataset, recipe in RECIPES.items():
        validate(with_overrides(Config(), {"dataset": dataset, **recipe}), list_models())


def test_imagenet_needs_a_data_dir():
    with pytest.raises(ConfigError, match="--data-dir .* --dataset imagenet"):
        validate(configured("--dataset", "imagenet", "--data-dir", ""))


def test_imagenet_streams_an_image_folder_at_224_unless_told_otherwise(tmp_path):
    path = build(tmp_path, "folder", good_members())
    data = load_dataset(configured("--dataset", "imagenet", "--data-dir", str(path)).data)
    assert data.classes == ["ant", "bee"] and data.streamed and data.image_size == 224
    assert data.train_labels.tolist() == [0, 0, 1, 1] and len(data.test_labels) == 4
    argv = ("--dataset", "imagenet", "--data-dir", str(path), "--data-mode", "memory")
    data = load_dataset(configured(*argv).data)
    assert data.train_images.shape == (4, 3, 8, 8) and data.train_images.dtype == np.uint8
