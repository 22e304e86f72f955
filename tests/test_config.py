"""Configuration: one place validates every setting, with an error that names it."""

import pytest

from graftune.config import Config, ConfigError, flatten, from_flat, validate, with_overrides
from graftune.models import list_models


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"A": -0.1}, "--A"),
        ({"A": 1.01}, "--A"),
        ({"c": 0}, "--c"),
        ({"bins": 1}, "--bins"),
        ({"invalid_share": 0.0}, "--invalid-share"),
        ({"invalid_share": 1.0}, "--invalid-share"),
        ({"num_models": 1}, "--num-models"),
        ({"model": "resnet21"}, "--model"),
        ({"dataset": "svhn"}, "--dataset"),
        ({"lr": 0}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"interval_epochs": 0}, "--interval-epochs"),
        ({"source": "teacher"}, "--source"),
        ({"placement": "STRICT"}, "--placement"),
        ({"distill_weight": float("inf")}, "--distill-weight must be a finite number"),
        ({"lr": float("inf")}, "--lr must be a finite number"),
        ({"distill_temperature": float("nan")}, "--distill-temperature must be a finite number"),
        ({"gpus_per_worker": -5}, "--gpus-per-worker must be -1"),
    ],
)
def test_bad_values_name_the_setting(overrides, named):
    with pytest.raises(ConfigError, match=named):
        validate(with_overrides(Config(), overrides), known_models=list_models())


def test_one_network_is_allowed_without_a_source():
    validate(with_overrides(Config(), {"num_models": 1, "source": "none"}))


def test_wrong_type_and_unknown_setting():
    with pytest.raises(ConfigError, match="--epochs must be an integer"):
        with_overrides(Config(), {"epochs": "many"})
    with pytest.raises(ConfigError, match="unknown setting 'alpha'"):
        with_overrides(Config(), {"alpha": 0.3})


def test_flatten_round_trips_through_strings():
    config = with_overrides(Config(), {"A": 0.25, "diff_lr": False, "num_models": 6})
    flat = flatten(config)
    assert flat["graft/A"] == 0.25 and flat["population/num_models"] == 6
    assert from_flat({k: str(v) for k, v in flat.items()}) == config
