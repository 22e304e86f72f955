"""``python -m graftune.run``: train one grafted population, tracked in MLflow.

python -m graftune.run --num-models 4                      # the authors' settings
python -m graftune.run --num-models 4 --model resnet20 --epochs 3 --subset 5000
python -m graftune.run --resume RUN_ID                     # continue a stopped run
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graftune.commands.cli import OneLineParser, add_setting_flags, config_from_args
from graftune.commands.libraries import beyond_local_ray, init_ray
from graftune.commands.startup import Startup, bad_input_is_one_line, start
from graftune.config import Config, ConfigError, from_flat, validate
from graftune.data import ImageSet, StreamSet, describe
from graftune.models import list_models
from graftune.tracking.checkpoint import Resume, check_compatible
from graftune.tracking.interrupt import EXIT_INTERRUPTED, RunStopped, exit_on_interrupt
from graftune.tracking.store import resolve_tracking_uri
from graftune.tracking.tracker import browse_command

if TYPE_CHECKING:  # the population layer imports torch: a refused run does not wait for it
    from graftune.population.resources import Layout

console = Console(stderr=True)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m graftune.run",
        description="Train a population of CNNs that improve each other by filter grafting.",
    )
    add_setting_flags(parser)
    return parser


def configure(startup: Startup) -> Config:
    """The settings, from the stopped run's checkpoint when resuming, then the flags typed
    now; the stopped run (read once) is kept in ``startup.extra``."""
    from graftune.tracking.resume import stopped_run

    args = startup.args
    typed = config_from_args(args)  # --config and the flags: --resume may come from either
    if typed.population.resume:  # the checkpoint's settings, then the file and the flags
        store = startup.store(typed.tracking.tracking_uri)
        if store is None:
            raise ConfigError(
                f"--resume {typed.population.resume}: no such MLflow run (the store "
                f"{resolve_tracking_uri(typed.tracking.tracking_uri)} does not exist; "
                "check --tracking-uri)"
            )
        startup.extra = stopped_run(store, typed.population.resume)
        typed = config_from_args(args, from_flat(startup.extra.payload["config"]))
    config = validate(typed, known_models=list_models())
    if startup.extra is not None:
        check_compatible(startup.extra.payload, config.model.model, config.population.num_models)
    return config


def checked(argv: list[str] | None) -> Startup:
    """Everything that can be wrong with the input, checked before any actor starts; a
    resumed run's lease is taken last, so a refused resume leaves none behind."""
    from graftune.tracking.resume import claim

    startup = start(build_parser(), argv, configure)
    if startup.extra is not None:
        with bad_input_is_one_line():
            claim(startup.extra)
    return startup


def prepare(argv: list[str] | None) -> tuple[Config, ImageSet | StreamSet, Resume | None]:
    """:func:`checked`, as the settings, the data and the stopped run (or None)."""
    startup = checked(argv)
    return startup.config, startup.data, startup.extra


def main(argv: list[str] | None = None) -> int:
    try:
        return train(argv)
    except KeyboardInterrupt as stop:  # one line and 130, not a traceback through Ray
        line = stop.line if isinstance(stop, RunStopped) else "graftune: stopped before training"
        exit_on_interrupt(line)  # Ray's and MLflow's exit handlers still run: Ctrl-C ends them
        print(line, file=sys.stderr)
        return EXIT_INTERRUPTED


def train(argv: list[str] | None) -> int:
    startup = checked(argv)
    config, data, resume = startup.config, startup.data, startup.extra
    from graftune.population.resources import placement_line
    from graftune.tracking.experiment import run_experiment
    from graftune.tracking.pending import StoreAway

    where = init_ray(verbose=startup.args.verbose)
    with bad_input_is_one_line():
        layout = fits_local_ray(config)
    console.print(
        f"graftune: {config.population.num_models} x {config.model.model} on "
        f"{config.data.dataset} ({len(data.train_labels)} train / {len(data.test_labels)} test "
        f"images, {describe(data)}), {where}"
    )
    console.print(f"graftune: {placement_line(layout)}")
    columns = (TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.description}"), console=console) as progress:
        task = progress.add_task("starting workers", total=None)

        def on_start(population, num_rounds: int) -> None:
            done = resume.round if resume else 0
            progress.update(task, total=num_rounds, completed=done, description="training")

        def on_round(result) -> None:
            p = result.population
            text = (
                f"mean {p['mean_test_acc']:.2%}  best {p['best_test_acc']:.2%}  "
                f"ensemble {p['ensemble_test_acc']:.2%}"
            )
            for event in result.events:
                progress.console.print(f"[yellow]round {result.round}: {event}")
            progress.update(task, completed=result.round, description=text)
            if not console.is_terminal:  # job logs (ray job submit, files) get a line a round
                console.print(f"round {result.round}/{progress.tasks[0].total}: {text}")

        try:
            result = run_experiment(config, data, on_round, on_start, resume=resume)
        except StoreAway as away:  # nothing is lost: the checkpoint holds what waits
            progress.stop()
            print(away.line, file=sys.stderr)
            return 1
    print_summary(result)
    return 0


def fits_local_ray(config: Config) -> Layout:
    """The workers of the run; those that ask for more than a local Ray has would wait for
    ever (a cluster may still grow): refuse them now, naming the settings."""
    import ray

    from graftune.population.resources import largest_node_cpus, worker_layout

    cluster = ray.cluster_resources()
    layout = worker_layout(config, cluster, largest_node_cpus())
    needs = {k: v * len(layout.groups) for k, v in layout.resources.items()}
    if have := beyond_local_ray(needs, cluster):
        raise ConfigError(
            f"{len(layout.groups)} workers of {layout.resources} need {needs}, but this "
            f"machine has {have}; lower --cpus-per-worker, --gpus-per-worker or --num-models"
        )
    return layout


def print_summary(result) -> None:
    final = result.final
    table = Table(title=f"test accuracy after round {final['round']}")
    table.add_column("network")
    table.add_column("test acc", justify="right")
    table.add_column("train loss", justify="right")
    for k, network in enumerate(final["networks"]):
        table.add_row(f"net{k}", f"{network['test_acc']:.2%}", f"{network['train_loss']:.3f}")
    p = final["population"]
    table.add_section()
    table.add_row("mean", f"{p['mean_test_acc']:.2%}", "")
    table.add_row("best", f"{p['best_test_acc']:.2%}", "")
    table.add_row("ensemble", f"{p['ensemble_test_acc']:.2%}", "")
    if "soup_test_acc" in p:  # one network: the average weights, BatchNorm re-estimated
        table.add_row("soup", f"{p['soup_test_acc']:.2%}", "")
    if "best_test_acc_over_rounds" in p:  # the authors' figure; chosen on the test set
        table.add_row("best over rounds*", f"{p['best_test_acc_over_rounds']:.2%}", "")
        table.caption = "* the best of any round, picked on the test set: optimistic"
    Console().print(table)
    if result.streamed:  # a damaged file met mid-run was skipped and named once when met
        print(f"images skipped as damaged: {result.skipped_images}")
    print(f"MLflow run: {result.run_id}")
    if result.model_ids:
        uri = f"runs:/{result.run_id}/net{result.best}"
        registered = f"; registered as {result.registered}" if result.registered else ""
        print(f"best network: net{result.best}, mlflow.pytorch.load_model({uri!r}){registered}")
    if result.soup is not None and result.model_ids:
        print(f"soup: mlflow.pytorch.load_model({f'runs:/{result.run_id}/soup'!r})")
    print(f"browse it:  {browse_command(result.tracking_uri)}")
