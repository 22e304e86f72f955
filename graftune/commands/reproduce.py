"""``python -m graftune.reproduce TABLE``: the paper's experiments at a scale you choose.

Each table is a set of arms (settings that differ) run for every seed through the same
tracked population machinery as ``graftune.run``; the result is a markdown table with the
paper's numbers beside the measured ones.

    python -m graftune.reproduce --list
    python -m graftune.reproduce table4 --model resnet20 --data-dir cifar10-jpeg.zip \\
        --epochs 15 --subset 10000 --seeds 0 1
    python -m graftune.reproduce imagenet --data-dir /data/imagenet   # the authors' recipe
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftune.commands import paper_numbers as paper
from graftune.commands.cli import OneLineParser, add_setting_flags, config_from_args
from graftune.commands.libraries import init_ray
from graftune.commands.startup import Startup, check, parse, writable_folder
from graftune.config import Config, ConfigError, validate, with_overrides
from graftune.core import find_graft_units, invalid_iou
from graftune.models import create_model, list_models

DATASETS = ("cifar10", "cifar100")  # the datasets the paper's supplement reports


@dataclass
class Arm:
    label: str
    overrides: dict[str, Any]
    paper: dict[str, float | None] = field(default_factory=dict)  # dataset -> paper top-1 %


@dataclass
class TableSpec:
    title: str
    arms: list[Arm]
    measure: str = "accuracy"  # accuracy | iou | invalid | ensemble


def table_specs(model: str, num_models: int, epochs: int = 90) -> dict[str, TableSpec]:
    """Every table, with arms as setting overrides and the paper's numbers for ``model``
    (``epochs``: the run's, where an arm's schedule follows them)."""
    paper_model = paper.MODELS.get(model, "")
    graft, none = {"source": "network"}, {"source": "none"}
    alone, grafted = paper.IMAGENET.get(paper_model, (None, None))

    def pair(table, labels, overrides):
        arms = []
        for i, (label, o) in enumerate(zip(labels, overrides)):
            numbers = {ds: table.get((paper_model, ds), (None, None))[i] for ds in DATASETS}
            arms.append(Arm(label, o, numbers))
        return arms

    return {
        "baseline": TableSpec(
            "Grafting vs independent training vs one network",
            [
                Arm("one network (lr 0.1)", {**none, "num_models": 1, "diff_lr": False}),
                Arm(f"{num_models} independent networks", none),
                Arm(f"{num_models} grafted networks", graft),
            ],
        ),
        "table1": TableSpec(
            "Supplement Table 1: IoU of invalid-filter positions of two "
            "independently trained networks (conv layers 5, 10, 15)",
            [Arm("two independent networks", {**none, "num_models": 2})],
            measure="iou",
        ),
        "table2": TableSpec(
            "Supplement Table 2: filter level vs layer level",
            pair(
                paper.FILTER_VS_LAYER,
                ("filter level", "layer level"),
                ({**graft, "level": "filter"}, graft),
            ),
        ),
        "table3": TableSpec(
            "Supplement Table 3: Eq. 5 vs Eq. 6",
            pair(
                paper.EQ5_VS_EQ6,
                ("Equation (5)", "Equation (6)"),
                ({**graft, "entropy_form": "filter_sum"}, graft),
            ),
        ),
        "table4": TableSpec(
            "Supplement Table 4: fixed vs adaptive weighting",
            pair(
                paper.FIXED_VS_ADAPTIVE,
                ("fixed weighting", "adaptive weighting"),
                ({**graft, "weighting": "fixed"}, graft),
            ),
        ),
        "table5": TableSpec(
            "Supplement Table 5: A and c (paper: MobileNetV2)",
            [
                Arm(f"A={a}, c={c}", {**graft, "A": a, "c": c}, {"cifar10": p10, "cifar100": p100})
                for a, c, p10, p100 in paper.A_AND_C
            ],
        ),
        "population": TableSpec(
            "Population size: grafting vs an ensemble of as many independent networks",
            [
                Arm(f"K={k} {label}", {**o, "num_models": k})
                for k in (2, 3, 4, 6, 8)
                for label, o in (("grafted", graft), ("independent (ensemble)", none))
            ],
            measure="ensemble",
        ),
        "invalid": TableSpec(
            "Invalid filters (l1 norm below 0.1 and 0.01): baseline vs grafted",
            [Arm("independent", none), Arm("grafted", graft)],
            measure="invalid",
        ),
        "imagenet": TableSpec(
            "ImageNet (the authors' README): one network vs grafted networks, top-1",
            [
                Arm(  # the authors' baseline: x0.1 every 30 of their 90 epochs
                    "one network, lr x0.1 at 1/3 and 2/3 of the epochs (authors' baseline)",
                    {
                        **none,
                        "num_models": 1,
                        "diff_lr": False,
                        "schedule": "step",
                        "step_epochs": max(1, epochs // 3),
                        "step_gamma": 0.1,
                    },
                    {"imagenet": alone},
                ),
                # not in their table: the grafted networks' schedule, which alone may explain
                # part of the gain over a step-decayed baseline
                Arm("one network, cosine lr", {**none, "num_models": 1, "diff_lr": False}),
                Arm(f"{num_models} grafted networks", graft, {"imagenet": grafted}),
            ],
        ),
    }


def run_arm(config: Config, data, seed: int) -> dict[str, Any]:
    """One population for one seed; returns its final round and final weights."""
    from graftune.tracking.experiment import run_experiment

    result = run_experiment(with_overrides(config, {"seed": seed}), data)
    weights = [state["model"] for state in result.states]
    return {"final": result.final, "run_id": result.run_id, "weights": weights}


def measure(spec: TableSpec, config: Config, outcome: dict[str, Any]) -> list[float]:
    """The numbers one run contributes to its row."""
    final = outcome["final"]
    networks, population = final["networks"], final["population"]
    if spec.measure == "iou":
        units = find_graft_units(create_model(config.model.model))
        ious = list(invalid_iou(outcome["weights"][0], outcome["weights"][1], units).values())
        return [ious[i - 1] for i in (5, 10, 15) if i <= len(ious)]
    if spec.measure == "invalid":
        return [statistics.mean(n[f"invalid_l1_{t}"] for n in networks) for t in ("0.1", "0.01")]
    values = [100 * population["mean_test_acc"], 100 * population["best_test_acc"]]
    return values + [100 * population["ensemble_test_acc"]]


COLUMNS = {
    "accuracy": ["mean net %", "best net %", "ensemble %"],
    "ensemble": ["mean net %", "best net %", "ensemble %"],
    "iou": ["IoU layer 5", "IoU layer 10", "IoU layer 15"],
    "invalid": ["invalid filters l1<0.1", "invalid filters l1<0.01"],
}


def markdown(name: str, spec: TableSpec, config: Config, rows: list[tuple[Arm, list]]) -> str:
    dataset = config.data.dataset
    columns = COLUMNS[spec.measure]
    scale = (
        f"{config.model.model}, {dataset}, {config.train.epochs} epochs, "
        f"subset {config.data.subset or 'all'}"
    )
    lines = [f"### {name}: {spec.title}", "", f"Measured: {scale}; one value per seed.", ""]
    lines.append("| arm | paper | " + " | ".join(columns) + " | runs |")
    lines.append("|---|---:|" + "---:|" * len(columns) + "---|")
    for arm, seeds in rows:
        reported: Any = arm.paper.get(dataset)
        if spec.measure == "iou":
            iou = paper.INVALID_IOU.get(paper.MODELS.get(config.model.model, ""))
            reported = " / ".join(f"{v:.2f}" for v in iou) if iou else None
        cells = []
        for i in range(len(columns)):
            values = [s["values"][i] for s in seeds if i < len(s["values"])]
            shown = ", ".join(f"{v:.2f}" for v in values)
            mean = f" (mean {statistics.mean(values):.2f})" if len(values) > 1 else ""
            cells.append(shown + mean)
        runs = ", ".join(s["run_id"][:8] for s in seeds)
        paper_text = "—" if reported is None else str(reported)
        lines.append(f"| {arm.label} | {paper_text} | " + " | ".join(cells) + f" | {runs} |")
    return "\n".join(lines) + "\n"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m graftune.reproduce",
        description="Reproduce the paper's tables at a chosen scale.",
    )
    parser.add_argument("table", nargs="?", help="a table name; see --list")
    parser.add_argument("--list", action="store_true", help="name the tables and exit")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default="reproduce", help="directory for the markdown")
    add_setting_flags(parser, skip=("seed",))
    return parser


def configure(startup: Startup) -> Config:
    """The settings, the table (kept in ``startup.extra``) and every arm's settings, checked
    before the first run."""
    args = startup.args
    # the ImageNet table reads ImageNet (and its recipe) unless another dataset is named
    dataset = "imagenet" if args.table == "imagenet" else ""
    config = validate(config_from_args(args, dataset=dataset), known_models=list_models())
    specs = table_specs(config.model.model, config.population.num_models, config.train.epochs)
    if args.table not in specs:
        raise ConfigError(f"TABLE must be one of {', '.join(specs)}; got {args.table!r}")
    startup.extra = specs[args.table]
    writable_folder(args.output, "--output")  # the table is written after all the training
    for arm in startup.extra.arms:
        for seed in args.seeds:
            validate(with_overrides(config, {**arm.overrides, "seed": seed}))
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if args.list:
        defaults = Config()
        for name, spec in table_specs(defaults.model.model, defaults.population.num_models).items():
            print(f"{name:11s} {spec.title}")
        return 0
    startup = check(args, configure)
    config, data, spec = startup.config, startup.data, startup.extra
    init_ray(verbose=args.verbose)
    rows = []
    for arm in spec.arms:
        arm_config = with_overrides(
            config, {**arm.overrides, "run_name": f"{args.table}: {arm.label}"}
        )
        seeds = []
        for seed in args.seeds:
            outcome = run_arm(arm_config, data, seed)
            seeds.append(
                {"run_id": outcome["run_id"], "values": measure(spec, arm_config, outcome)}
            )
            print(f"{arm.label}, seed {seed}: {seeds[-1]['values']}", flush=True)
        rows.append((arm, seeds))
    text = markdown(args.table, spec, config, rows)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{args.table}.md").write_text(text)
    print(text)
    print(f"written to {output / (args.table + '.md')}")
    return 0
