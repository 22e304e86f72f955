"""Search-space files: every distribution, the shipped spaces, and one clear error per bad file."""

from pathlib import Path

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from conftest import smoke_args
from graftune.commands import tune as tune_command
from graftune.commands.searchspace import (
    SearchSpaceError,
    load_search_space,
    trial_config,
    trial_overrides,
)
from graftune.config import Config

SPACES = Path(__file__).resolve().parent.parent / "searchspaces"


pytestmark = pytest.mark.usefixtures("no_ray")  # conftest: bad input must not start Ray


def write(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def test_each_distribution_becomes_its_tune_domain(tmp_path):
    path = write(
        tmp_path,
        "A: {uniform: [0.1, 0.9]}\n"
        "c: {loguniform: [1, 1000]}\n"
        "epochs: {int: [2, 4]}\n"
        "num_models: {choice: [2, 3]}\n"
        "level: {grid: [layer, filter]}\n",
    )
    space = load_search_space(path, Config())
    params = space.param_space
    assert isinstance(params["A"], Float) and (params["A"].lower, params["A"].upper) == (0.1, 0.9)
    assert isinstance(params["c"].get_sampler(), LogUniform)
    # int bounds are inclusive in the file; Tune's randint excludes its upper bound
    assert isinstance(params["epochs"], Integer) and params["epochs"].upper == 5
    assert isinstance(params["num_models"], Categorical)
    assert params["num_models"].categories == [2, 3]
    assert params["level"] == {"grid_search": ["layer", "filter"]}
    assert space.has_grid and space.grid_size == 2
    assert space.largest("num_models", 2) == 3 and space.largest("lr", 0.1) == 0.1


def test_default_space_is_for_optuna():
    space = load_search_space(str(SPACES / "default.yaml"), Config())
    assert set(space.settings) == {"A", "c", "lr", "num_models"}
    assert not space.has_grid
    assert space.entries["num_models"] == ("choice", [2, 3, 4, 6, 8])
    assert space.entries["lr"] == ("loguniform", [0.01, 0.4])


def test_table5_is_a_grid_of_ten_a_c_pairs():
    space = load_search_space(str(SPACES / "table5.yaml"), Config())
    assert space.has_grid and space.grid_size == 10
    (points,) = space.param_space.values()
    pairs = {(p["A"], p["c"]) for p in points["grid_search"]}
    expected = {(0.4, c) for c in (1, 5, 10, 50, 500)} | {
        (a, 100) for a in (0.0, 0.2, 0.4, 0.6, 0.8)
    }
    assert pairs == expected
    config = trial_config(Config(), {"grid": {"A": 0.2, "c": 100}})
    assert (config.graft.A, config.graft.c) == (0.2, 100.0)
    assert trial_overrides({"grid": {"A": 0.2, "c": 100}, "lr": 0.1}) == {
        "A": 0.2,
        "c": 100,
        "lr": 0.1,
    }


@pytest.mark.parametrize(
    "text, named",
    [
        ("A: {uniform: [0, 1]\n", "not valid YAML"),
        ("alpha: {uniform: [0, 1]}\n", "'alpha'"),
        ("A: {uniform: [0.8, 0.2]}\n", "'A'"),
        ("A: {uniform: [0, 1.5]}\n", "--A must lie in [0, 1]"),
        ("c: {loguniform: [0, 10]}\n", "'c'"),
        ("lr: {normal: [0.1, 0.01]}\n", "unknown distribution 'normal'"),
        ("num_models: {choice: []}\n", "'num_models'"),
        ("num_models: {uniform: [2, 4]}\n", "use int"),
        ("num_models: {int: [1, 4]}\n", "--num-models must be >= 2"),
        ("model: {choice: [resnet20, resnet33]}\n", "'model'"),
        ("lr: 0.1\n", "'lr'"),
        ("grid: [{A: 0.4, d: 1}]\n", "'grid'"),
        ("grid: [{A: 0.4}]\nA: {uniform: [0, 1]}\n", "'A' is both"),
        ("resume: {choice: [abc]}\n", "cannot be searched"),
        ("subset: {choice: [4]}\n", "the data is loaded once for all trials"),
        ("synthetic_size: {int: [8, 16]}\n", "use the flag --synthetic-size"),
        ("dataset: {choice: [synthetic]}\n", "'dataset': cannot be searched"),
        ("data_dir: {choice: [a, b]}\n", "'data_dir': cannot be searched"),
        ("download: {choice: [false]}\n", "'download': cannot be searched"),
        ("test_subset: {grid: [0, 8]}\n", "'test_subset': cannot be searched"),
        ("max_image_bytes: {choice: [1000]}\n", "'max_image_bytes': cannot be searched"),
        ("synthetic_classes: {choice: [2]}\n", "'synthetic_classes': cannot be searched"),
        ("grid: [{A: 0.4, subset: 8}]\n", "the data is loaded once"),
        ("checkpoint_dir: {choice: [a]}\n", "use --checkpoint-dir"),
        ("experiment: {choice: [a, b]}\n", "use --experiment"),
        ("register_model: {choice: [m]}\n", "use --register-model"),
        ("run_name: {choice: [a]}\n", "'run_name': cannot be searched"),
        ("tracking_uri: {choice: [a]}\n", "'tracking_uri': cannot be searched"),
        # every value, and both ends of a range, go through the flags' own rules
        ("seed: {int: [0, 100000000000000000000000]}\n", "--seed must lie in"),
        ("seed: {int: [-1, 3]}\n", "--seed must lie in"),
        ("seed: {choice: [1, 4294967296]}\n", "--seed must lie in"),
        ("cpus_per_worker: {choice: [1, -1]}\n", "--cpus-per-worker must be >= 0"),
        ("", "holds no settings"),
    ],
)
def test_bad_file_names_the_key(tmp_path, text, named):
    with pytest.raises(SearchSpaceError, match="--search-space") as error:
        load_search_space(write(tmp_path, text), Config(), known_models=["resnet20", "resnet32"])
    assert named in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_corners_are_the_trials_that_ask_the_most(tmp_path):
    path = write(
        tmp_path,
        "num_models: {int: [2, 4]}\n"
        "cpus_per_worker: {choice: [0.5, 1]}\n"
        "A: {uniform: [0, 1]}\n"
        "grid: [{c: 1, fuse: 'off'}, {c: 5, fuse: 'off'}, {c: 5, fuse: 'on'}]\n",
    )
    space = load_search_space(path, Config())
    corners = space.corners(("num_models", "cpus_per_worker", "fuse"))
    # a range gives its upper end, a choice each value; joint-grid points keep their pairs
    assert corners == [
        {"num_models": 4, "cpus_per_worker": 0.5, "fuse": "off"},
        {"num_models": 4, "cpus_per_worker": 0.5, "fuse": "on"},
        {"num_models": 4, "cpus_per_worker": 1, "fuse": "off"},
        {"num_models": 4, "cpus_per_worker": 1, "fuse": "on"},
    ]
    assert space.corners(("lr",)) == [{}]  # not searched: the fixed value, one trial


def test_command_exits_2_with_one_line_before_ray(tmp_path, capsys):
    path = write(tmp_path, "A: {uniform: [0, 2]}\n")
    argv = smoke_args(tmp_path, "--search-space", path, "--storage-path", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        tune_command.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'A'" in err and "--A must lie in [0, 1]" in err


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--A", "0.3"], "--A is searched"),
        (["--num-samples", "0"], "--num-samples"),
        (["--lr", "fast"], "--lr"),
    ],
)
def test_bad_search_flags(tmp_path, capsys, extra, named):
    path = write(tmp_path, "A: {uniform: [0, 1]}\n")
    argv = smoke_args(tmp_path, "--search-space", path, "--storage-path", str(tmp_path), *extra)
    with pytest.raises(SystemExit) as exit_info:
        tune_command.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


def test_storage_uri_is_refused_with_one_line(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("A: {uniform: [0.1, 0.5]}\n")
    argv = smoke_args(tmp_path, "--search-space", str(path), "--storage-path", "s3://bucket/x")
    with pytest.raises(SystemExit) as exit_info:
        tune_command.main(argv)
    assert exit_info.value.code == 2
    assert "--storage-path" in capsys.readouterr().err


def test_cultivation_space_searches_the_distillation_weight():
    space = load_search_space(str(SPACES / "cultivation.yaml"), Config())
    assert set(space.settings) == {"distill_weight", "distill_temperature", "c"}
    assert space.entries["distill_weight"] == ("uniform", [0, 1])
    config = trial_config(Config(), {"distill_weight": 0.3, "distill_temperature": 2})
    assert (config.train.distill_weight, config.train.distill_temperature) == (0.3, 2.0)
