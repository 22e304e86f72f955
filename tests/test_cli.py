"""Bad input: one line naming the setting, exit code 2, before any actor starts."""

import pytest
import torch

from conftest import build, good_members, png_claiming, refused, smoke_args
from graftune.commands import run

pytestmark = pytest.mark.usefixtures("no_ray")  # conftest: bad input must not start Ray


def bad_input(capsys, argv: list[str]) -> str:
    return refused(capsys, run.main, argv)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--model", "resnet33"], "--model"),
        (["--dataset", "mnist"], "--dataset"),
        (["--A", "1.5"], "--A"),
        (["--c", "0"], "--c"),
        (["--num-models", "1"], "--num-models"),
        (["--bins", "1"], "--bins"),
        (["--invalid-share", "1.0"], "--invalid-share"),
        (["--lr", "fast"], "--lr"),
        (["--level", "channel"], "--level"),
        (["--epochs", "0"], "--epochs"),
        (["--max-lead", "-1"], "--max-lead"),
        (["--no-such-flag", "1"], "--no-such-flag"),
        (["--plot"], "--plot"),  # a prefix of --plots: refused, not guessed
        (["--epoch", "2"], "--epoch"),
        (["--resume", "0123456789abcdef"], "--resume"),
        (["--tracking-uri", "bogus://store"], "--tracking-uri"),
        (["--max-image-bytes", "0"], "--max-image-bytes"),
    ],
)
def test_bad_setting(tmp_path, capsys, extra, named):
    assert named in bad_input(capsys, smoke_args(tmp_path, *extra))


def test_missing_data_directory(tmp_path, capsys):
    argv = smoke_args(tmp_path, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "nope"))
    assert "--data-dir" in bad_input(capsys, argv)


@pytest.mark.parametrize(
    "spoil, extra, problem",
    [
        ("truncate", [], "truncated or damaged .zip"),
        ("bomb", [], "decompression bomb"),
        (None, ["--max-image-bytes", "100"], "over the 100 bytes limit"),
    ],
)
def test_hostile_zip_is_one_line(tmp_path, capsys, monkeypatch, spoil, extra, problem):
    monkeypatch.setenv("GRAFTUNE_CACHE", str(tmp_path / "cache"))
    members = good_members()
    if spoil == "bomb":
        members["train/ant/bomb.png"] = png_claiming(20000, 12000)
    path = build(tmp_path, "zip", members)
    if spoil == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    argv = smoke_args(tmp_path, "--dataset", "imagefolder", "--data-dir", str(path), *extra)
    err = bad_input(capsys, argv)
    assert problem in err and str(path) in err


def test_cifar_offline_names_data_dir(tmp_path, capsys):
    argv = smoke_args(
        tmp_path, "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download"
    )
    assert "--data-dir" in bad_input(capsys, argv)


def test_config_file_that_does_not_parse(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("graft:\n  A: [0.4\n")
    assert "--config" in bad_input(capsys, smoke_args(tmp_path, "--config", str(path)))


def test_config_file_with_unknown_setting(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("graft:\n  alpha_amp: 0.4\n")
    assert "alpha_amp" in bad_input(capsys, smoke_args(tmp_path, "--config", str(path)))


def test_config_file_values_and_flags_override_them(tmp_path):
    from graftune.commands.cli import config_from_args

    path = tmp_path / "settings.yaml"
    path.write_text("graft:\n  A: 0.2\n  c: 100\nnum_models: 6\n")
    args = run.build_parser().parse_args(["--config", str(path), "--c", "50"])
    config = config_from_args(args)
    assert (config.graft.A, config.graft.c, config.population.num_models) == (0.2, 50.0, 6)


def test_help_explains_each_setting_from_the_config_comments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Eq. 7 amplitude" in out and "(default: 0.4)" in out


def test_a_checkpoint_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    argv = smoke_args(tmp_path, "--checkpoint-dir", str(tmp_path / "afile"))
    assert "--checkpoint-dir" in bad_input(capsys, argv)


def test_a_deleted_experiment(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    argv = smoke_args(tmp_path, "--experiment", "gone")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("gone"))
    assert "--experiment gone was deleted" in bad_input(capsys, argv)


def stored_run(tmp_path, checkpoint, status: str = "KILLED") -> str:
    """An MLflow run in the smoke store whose checkpoint tag names ``checkpoint``."""
    from mlflow.tracking import MlflowClient

    from graftune.tracking.tracker import CHECKPOINT_TAG

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("graftune") or client.create_experiment("graftune")
    experiment_id = getattr(experiment, "experiment_id", experiment)
    run_id = client.create_run(experiment_id, tags={CHECKPOINT_TAG: str(checkpoint)}).info.run_id
    client.set_terminated(run_id, status)
    return run_id


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "cannot be read"),
        (b"not a checkpoint", "cannot be read"),
        ("truncated", "cannot be read"),
        (
            {"round": 1, "states": []},
            "not a graftune population checkpoint (missing or wrong: config",
        ),
        (torch.zeros(3), "not a graftune population checkpoint"),
        ("folder", "is not a file"),
    ],
)
def test_resume_of_a_damaged_or_foreign_checkpoint(tmp_path, capsys, content, problem):
    path = tmp_path / "population.pt"
    if content == "folder":
        path.mkdir()
    elif content == "truncated":
        torch.save({"config": {}, "states": [{}], "round": 1}, path)
        path.write_bytes(path.read_bytes()[:100])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    run_id = stored_run(tmp_path, path)
    err = bad_input(capsys, smoke_args(tmp_path, "--resume", run_id))
    assert f"--resume {run_id}" in err and problem in err and str(path) in err
    assert not (tmp_path / "driver.json").exists()  # a refused resume takes no lease


def test_resume_of_a_finished_run_is_refused(tmp_path, capsys):
    run_id = stored_run(tmp_path, tmp_path / "population.pt", status="FINISHED")
    err = bad_input(capsys, smoke_args(tmp_path, "--resume", run_id))
    assert "the run finished, so there is nothing to resume" in err


def test_resume_and_its_store_may_come_from_the_config_file(tmp_path, capsys):
    run_id = stored_run(tmp_path, tmp_path / "population.pt", status="FINISHED")
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"resume: {run_id}\ntracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    argv = [*smoke_args(tmp_path)[:-4], "--config", str(settings)]  # no --tracking-uri flag
    assert "--tracking-uri" not in argv
    assert "the run finished" in bad_input(capsys, argv)


def test_a_folder_link_that_loops(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GRAFTUNE_CACHE", str(tmp_path / "cache"))
    path = build(tmp_path, "dir", good_members())
    (path / "train" / "loop").symlink_to(path / "train" / "loop")
    argv = smoke_args(tmp_path, "--dataset", "imagefolder", "--data-dir", str(path))
    assert "Too many levels of symbolic links" in bad_input(capsys, argv)


def test_workers_larger_than_the_local_ray_are_refused_before_they_wait(monkeypatch):
    import ray

    from graftune.config import Config as Settings
    from graftune.config import ConfigError, validate, with_overrides
    from graftune.population import resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(resources, "largest_node_cpus", lambda: 2.0)
    big = validate(with_overrides(Settings(), {"num_models": 2, "cpus_per_worker": 3}))
    with pytest.raises(ConfigError, match=r"need \{'CPU': 6.0\}, but this machine has"):
        run.fits_local_ray(big)
    run.fits_local_ray(with_overrides(big, {"cpus_per_worker": 1}))  # fits: no error
