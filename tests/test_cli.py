"""Bad input: one line naming the setting, exit code 2, before any actor starts."""

import pytest

from conftest import build, good_members, png_claiming, smoke_args
from graftune.commands import run

pytestmark = pytest.mark.usefixtures("no_ray")  # conftest: bad input must not start Ray


def bad_input(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


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
