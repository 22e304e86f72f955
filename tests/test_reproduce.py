"""The reproduce command: every table listed, arms as settings, a markdown table written."""

import pytest

from conftest import ONE_WORKER, build, good_members, refused, smoke_args
from graftune.commands import reproduce
from graftune.commands.startup import Startup
from graftune.config import Config, validate, with_overrides
from graftune.models import create_model


def test_list_names_every_table(capsys):
    assert reproduce.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    names = "baseline table1 table2 table3 table4 table5 population invalid imagenet"
    assert listed == names.split()


def test_every_arm_is_a_valid_setting_and_paper_numbers_match_the_supplement():
    specs = reproduce.table_specs("resnet32", 2)
    for spec in specs.values():
        for arm in spec.arms:
            validate(with_overrides(Config(), arm.overrides))
    fixed, adaptive = specs["table4"].arms
    assert (fixed.paper["cifar10"], adaptive.paper["cifar100"]) == (93.22, 71.28)
    assert len(specs["table5"].arms) == 10
    assert [a.overrides["num_models"] for a in specs["population"].arms][::2] == [2, 3, 4, 6, 8]


def test_table1_shows_the_papers_iou_beside_the_measured_one():
    config = with_overrides(Config(), {"model": "resnet32"})
    spec = reproduce.table_specs("resnet32", 2)["table1"]
    weights = [create_model("resnet32").state_dict() for _ in range(2)]
    outcome = {"final": {"networks": [], "population": {}}, "weights": weights}
    values = reproduce.measure(spec, config, outcome)
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    seeds = [{"values": values, "run_id": "0123456789abcdef"}]
    text = reproduce.markdown("table1", spec, config, [(spec.arms[0], seeds)])
    row = [cell.strip() for cell in text.splitlines()[-1].split("|")]
    assert row[2:6] == ["0.00 / 0.00 / 0.20", *(f"{v:.2f}" for v in values)]


def test_unknown_table_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["table9", *smoke_args(tmp_path)])
    assert exit_info.value.code == 2
    assert "TABLE" in capsys.readouterr().err


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize(
    "extra, named",
    [(["--output", "afile"], "--output"), (["--seeds", "0", str(2**40)], "--seed")],
)
def test_what_would_fail_after_training_is_refused_before(tmp_path, capsys, extra, named):
    (tmp_path / "afile").write_text("")
    extra = [str(tmp_path / e) if e == "afile" else e for e in extra]
    assert named in refused(capsys, reproduce.main, ["invalid", *extra, *smoke_args(tmp_path)])


@pytest.mark.usefixtures("ray_local")
def test_table4_writes_markdown_with_both_arms(tmp_path, capsys):
    out = tmp_path / "tables"
    argv = ["table4", "--output", str(out), *smoke_args(tmp_path, "--epochs", "1", *ONE_WORKER)]
    assert reproduce.main(argv) == 0
    text = (out / "table4.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["fixed weighting", "adaptive weighting"]
    for row in rows:
        accuracy = float(row.split("|")[3].strip())
        assert 0.0 <= accuracy <= 100.0


@pytest.mark.parametrize(
    "model, alone, grafted",
    [("resnet18", 69.15, 71.19), ("resnet34", 72.60, 74.58), ("resnet50", 75.92, 76.76)],
)
def test_imagenet_table_has_the_authors_numbers_beside_their_two_arms(model, alone, grafted):
    step, cosine, graft = reproduce.table_specs(model, 2, epochs=90)["imagenet"].arms
    assert (step.paper["imagenet"], cosine.paper, graft.paper["imagenet"]) == (alone, {}, grafted)
    # their baseline decays x0.1 every 30 of 90 epochs; the grafted networks anneal by a cosine
    assert (step.overrides["schedule"], step.overrides["step_epochs"]) == ("step", 30)
    assert (
        reproduce.table_specs(model, 2, epochs=9)["imagenet"].arms[0].overrides["step_epochs"] == 3
    )
    assert cosine.overrides["num_models"] == 1 and graft.overrides["source"] == "network"


def imagenet_startup(tmp_path, *argv: str) -> Startup:
    startup = Startup(reproduce.build_parser().parse_args(["imagenet", *argv]))
    startup.config = reproduce.configure(startup)
    return startup


def test_imagenet_table_reads_imagenet_with_the_recipe_unless_told_otherwise(tmp_path):
    output = ("--output", str(tmp_path / "tables"))
    data = str(build(tmp_path, "folder", good_members()))
    config = imagenet_startup(tmp_path, "--data-dir", data, *output).config
    assert (config.data.dataset, config.model.model, config.train.epochs) == (
        "imagenet",
        "resnet18",
        90,
    )
    config = imagenet_startup(tmp_path, *output, *smoke_args(tmp_path)).config
    assert (config.data.dataset, config.model.model) == ("synthetic", "tiny_cnn")


def test_imagenet_markdown_puts_the_papers_number_beside_its_arm(tmp_path):
    startup = imagenet_startup(tmp_path, "--output", str(tmp_path / "tables"))
    spec, config = startup.extra, startup.config
    seeds = [{"values": [70.0, 70.0, 70.0], "run_id": "0123456789abcdef"}]
    text = reproduce.markdown("imagenet", spec, config, [(arm, seeds) for arm in spec.arms])
    lines = text.splitlines()
    separator = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    rows = [line.split("|") for line in lines[separator + 1 :]]
    assert [row[2].strip() for row in rows] == ["69.15", "—", "71.19"]
