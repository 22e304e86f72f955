"""One start-up for every command: parse, validate, check the tracking store, load the data.

Bad input (a :class:`~graftune.config.ConfigError` or a :class:`~graftune.data.DataError`,
raised where the input is read) becomes one line and exit code 2 before Ray starts. Any
other exception is a bug, not bad input: it stays a traceback with exit code 1.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from graftune.commands.cli import fail
from graftune.commands.libraries import quiet_libraries
from graftune.config import Config, ConfigError
from graftune.data import DataError, ImageSet, load_dataset
from graftune.tracking.store import open_store, resolve_tracking_uri


@contextmanager
def bad_input_is_one_line() -> Iterator[None]:
    """Turn :class:`ConfigError` and :class:`DataError` (only those) into one line, exit 2."""
    try:
        yield
    except (ConfigError, DataError) as error:
        fail(str(error))


@dataclass
class Startup:
    """What a command holds once its input has been checked.

    Attributes:
        args: the parsed command line.
        config: the validated settings.
        data: the decoded data set.
        extra: whatever the command's own checks produced (a search space, a table, ...).
    """

    args: argparse.Namespace
    config: Config = field(default_factory=Config)
    data: ImageSet | None = None
    extra: Any = None
    _stores: dict[str, MlflowClient | None] = field(default_factory=dict, repr=False)

    def store(self, tracking_uri: str) -> MlflowClient | None:
        """The tracking store, checked once per command without writing to it (a resume
        reads the stopped run from it before the settings are known; the check then reuses
        it); None for a SQLite store that the run will make."""
        resolved = resolve_tracking_uri(tracking_uri)
        if resolved not in self._stores:
            self._stores[resolved] = open_store(resolved)
        return self._stores[resolved]


def check_experiment(client: MlflowClient | None, config: Config) -> None:
    """MLflow refuses to log into a deleted experiment, and would say so only once Ray is up."""
    if client is None:  # a store not made yet holds no experiment
        return
    name = config.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"--experiment {name} was deleted in the tracking store; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or "
            f"pick another name"
        )


def writable_folder(path: str, what: str, is_file: bool = False) -> None:
    """Refuse (ConfigError) a folder that a command will write into only after training: it
    must be a folder, or not exist yet below a folder that can be written. ``is_file``: the
    path names a file the command writes (its parent is checked instead)."""
    target = Path(path).expanduser()
    if is_file:
        if target.is_dir():
            raise ConfigError(f"{what} {path} is a folder; give the path of a file to write")
        target = target.parent
    existing = next(p for p in [target, *target.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} cannot be written")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (a bad flag is one line, exit 2) and quiet the libraries unless
    ``--verbose``."""
    args = parser.parse_args(argv)
    quiet_libraries(verbose=getattr(args, "verbose", False))
    return args


def check(
    args: argparse.Namespace, configure: Callable[[Startup], Config], load_data: bool = True
) -> Startup:
    """Let ``configure`` build and validate the settings, check the tracking store and load
    the data; bad input ends the process with one line and exit code 2.

    Args:
        args: the parsed command line.
        configure: the command's own checks; returns the validated config and may set
            ``startup.extra``. It raises ConfigError or DataError for bad input.
        load_data: False for a command that needs no data.
    """
    startup = Startup(args)
    with bad_input_is_one_line():
        startup.config = configure(startup)
        check_experiment(startup.store(startup.config.tracking.tracking_uri), startup.config)
        writable_folder(startup.config.population.checkpoint_dir, "--checkpoint-dir")
        if load_data:
            startup.data = load_dataset(startup.config.data)
    return startup


def start(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    configure: Callable[[Startup], Config],
    load_data: bool = True,
) -> Startup:
    """:func:`parse`, then :func:`check`: every command's start-up, before Ray starts."""
    return check(parse(parser, argv), configure, load_data)
