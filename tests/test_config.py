"""Configuration: one place validates every setting, with an error that names it."""

import json
import os
import re
import threading

import numpy as np
import pytest

from conftest import refused, smoke_args
from graftune.commands import run
from graftune.config import (
    Config,
    ConfigError,
    flag_name,
    flatten,
    from_flat,
    read_yaml,
    setting_choices,
    setting_sections,
    validate,
    with_overrides,
)
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


# --- YAML files: one line naming the file, for any file a user can point --config at ---


def write(tmp_path, data: bytes | str) -> str:
    path = tmp_path / "settings.yaml"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.mark.parametrize(
    "text, key",
    [
        ("1: 2\n", "key 1 "),
        ("~: 2\n", "key None "),
        ("2024-01-01: x\n", "key datetime.date(2024, 1, 1) "),
        ("graft: {1: 2}\n", "key 1 in section 'graft'"),
        ("model: {model: resnet20}\ntrain: {~: 3}\n", "key None in section 'train'"),
    ],
)
def test_yaml_keys_must_be_setting_names(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="keys must be setting names") as error:
        with_overrides(Config(), read_yaml(path))
    assert str(error.value).startswith(f"--config {path}: {key}")


def test_yaml_file_that_is_not_utf8(tmp_path):
    path = write(tmp_path, b"\xff\xfebad: 1")
    with pytest.raises(ConfigError, match=f"--config {re.escape(path)} is not UTF-8 text"):
        read_yaml(path)
    assert read_yaml(write(tmp_path, "\ufeffA: 0.3\n")) == {"A": 0.3}  # a BOM is fine


def test_yaml_path_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome = []

    def read() -> None:
        try:
            outcome.append(read_yaml(str(fifo)))
        except ConfigError as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked in open(): a writer that closes at once lets it go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("reading a FIFO waited for a writer")
    assert str(outcome[0]) == f"--config {fifo}: cannot read it (not a regular file)"
    with pytest.raises(ConfigError, match=r"cannot read it \(Is a directory\)"):
        read_yaml(str(tmp_path))
    with pytest.raises(ConfigError, match=r"cannot read it \(No such file or directory\)"):
        read_yaml(str(tmp_path / "nope.yaml"))


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize(
    "data, named",
    [(b"1: 2\n", "keys must be setting names"), (b"\xff\xfebad: 1", "is not UTF-8 text")],
)
def test_bad_yaml_file_is_one_line_and_exit_2(tmp_path, capsys, data, named):
    path = write(tmp_path, data)
    err = refused(capsys, run.main, smoke_args(tmp_path, "--config", path))
    assert path in err and named in err, err


# --- coercion: what a file, a flag, an MLflow param or Tune gives becomes the setting's type ---


@pytest.mark.parametrize(
    "name, value, wanted",
    [
        ("channels_last", [1], "true or false"),
        ("channels_last", 2, "true or false"),
        ("channels_last", 1.0, "true or false"),
        ("channels_last", "maybe", "true or false"),
        ("download", None, "true or false"),
        ("download", "", "true or false"),
        ("experiment", None, "text"),
        ("data_dir", 5, "text"),
        ("run_name", {"a": 1}, "text"),
        ("run_name", 2024, "text"),
        ("register_model", True, "text"),
        ("precision", 16, "text"),
        ("epochs", True, "an integer"),
        ("epochs", 2.5, "an integer"),
        ("epochs", "2.5", "an integer"),
        ("epochs", float("inf"), "an integer"),
        ("epochs", None, "an integer"),
        ("num_models", np.bool_(True), "an integer"),
        ("A", True, "a number"),
        ("A", np.bool_(False), "a number"),
        ("A", None, "a number"),
        ("A", [0.4], "a number"),
        ("lr", "fast", "a number"),
    ],
)
def test_coercion_refuses_what_would_be_a_guess(name, value, wanted):
    with pytest.raises(ConfigError, match=f"^{flag_name(name)} must be {wanted}; got "):
        with_overrides(Config(), {name: value})


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("channels_last", "OFF", False),
        ("channels_last", " Yes ", True),
        ("compile", "True", True),  # as an MLflow param comes back
        ("download", 0, False),
        ("download", 1, True),
        ("download", np.bool_(False), False),
        ("epochs", 4.0, 4),
        ("epochs", "7", 7),
        ("epochs", np.int64(3), 3),  # Tune samples numpy scalars
        ("epochs", np.float64(5.0), 5),
        ("A", np.float64(0.3), 0.3),  # Optuna
        ("A", "1e-1", 0.1),  # PyYAML reads 1e-1 (no dot) as a string
        ("c", 100, 100.0),
        ("c", np.int64(100), 100.0),
        ("run_name", np.str_("trial_1"), "trial_1"),
        ("run_name", "", ""),
    ],
)
def test_coercion_accepts_the_type_in_any_of_its_spellings(name, value, expected):
    config = with_overrides(Config(), {name: value})
    got = getattr(getattr(config, setting_sections()[name]), name)
    assert got == expected and type(got) is type(expected)


def other_value(name: str, default):
    """A value of every setting that is not its default (and not a round number)."""
    if name in setting_choices():
        return next(c for c in setting_choices()[name] if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default + 0.1
    return f"some {name}"


def test_flatten_round_trips_every_setting():
    defaults = flatten(Config())
    changed = from_flat({k: other_value(k.split("/")[1], v) for k, v in defaults.items()})
    for config in (Config(), changed):
        flat = flatten(config)
        assert all(flat[k] != defaults[k] for k in flat) or config == Config()
        assert from_flat({k: str(v) for k, v in flat.items()}) == config  # MLflow params
        assert from_flat(flat) == config  # a worker's settings
        assert from_flat(json.loads(json.dumps(flat))) == config  # a checkpoint's


# --- rules that a run would otherwise break only inside Ray or MLflow ---


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"seed": 10**23}, "--seed must lie in [0, 4294967294] with --num-models 2"),
        ({"seed": -1}, "--seed must lie in [0, 4294967294] with --num-models 2"),
        ({"seed": 2**32 - 3, "num_models": 4}, "--seed must lie in [0, 4294967292]"),
        ({"num_models": 5 * 10**9}, "--num-models must lie in [1, 1024]"),  # not a seed rule
        ({"synthetic_size": 10**12}, "--synthetic-size must lie in [8, 100000]"),
        ({"synthetic_classes": 10**11}, "--synthetic-classes must lie in [2, 10000]"),
        ({"register_model": "nets/best"}, "--register-model must not be blank, contain '/'"),
        ({"register_model": "best:1"}, "--register-model must not be blank"),
        ({"register_model": "100%"}, "--register-model must not be blank"),
        ({"register_model": "  "}, "--register-model must not be blank"),
        ({"register_model": "."}, "--register-model must not be blank"),
        ({"register_model": "..best"}, "--register-model must not be blank"),
        ({"experiment": ""}, "--experiment must be a name of 1 to 500 characters"),
        ({"experiment": "x" * 501}, "--experiment must be a name of 1 to 500 characters"),
    ],
)
def test_rules_that_ray_or_mlflow_would_break_late(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(with_overrides(Config(), overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"seed": 2**32 - 2},  # networks 0 and 1 use the last two 32-bit seeds
        {"seed": 2**32 - 4, "num_models": 4},
        {"num_models": 1024},
        {"seed": 2**32 - 1, "num_models": 1, "source": "none"},
        {"synthetic_size": 100_000, "synthetic_classes": 10_000},
        {"register_model": "resnet20 best.v1"},
        {"experiment": "x" * 500},
    ],
)
def test_the_limits_themselves_are_allowed(overrides):
    validate(with_overrides(Config(), overrides))


@pytest.mark.usefixtures("no_ray")
def test_huge_seed_is_one_line_and_exit_2(tmp_path, capsys):
    err = refused(capsys, run.main, smoke_args(tmp_path, "--seed", "100000000000000000000000"))
    assert "--seed must lie in [0, 4294967294]" in err, err
