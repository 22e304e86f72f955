"""A search's input, checked before Ray starts: its flags, its search space and its folder.
Every refusal is a :class:`~graftune.config.ConfigError` naming the flag."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ray import tune

from graftune.commands.cli import config_from_args, typed_settings
from graftune.commands.search_report import SOUP_METRIC
from graftune.commands.search_state import STATE_FILE, SearchState
from graftune.commands.searchspace import load_search_space
from graftune.commands.startup import writable_folder
from graftune.config import (
    Config,
    ConfigError,
    flag_name,
    flatten,
    from_flat,
    validate,
    with_overrides,
)
from graftune.models import list_models
from graftune.tracking.tracker import resolve_tracking_uri


def prepare(args: argparse.Namespace) -> tuple[Config, SearchState]:
    """The fixed settings and the search (with its space when it is new, from its folder
    when it is resumed)."""
    if "://" in args.storage_path:  # state and population files are written with pathlib
        raise ConfigError(
            f"--storage-path {args.storage_path}: URIs are not supported yet; use a local "
            "path, or one on a filesystem every node mounts (see cluster/README.md)"
        )
    writable_folder(args.storage_path, "--storage-path")  # Tune and the state file write there
    storage = Path(args.storage_path).expanduser().resolve()
    name = args.name or (Path(args.search_space).stem if args.search_space else "")
    if not name:
        raise ConfigError("--search-space is required (or --name with --resume)")
    path = storage / name
    writable_folder(str(path), "--name")
    check_search_flags(args)
    if args.resume_search:
        return resumed(args, path)
    if not args.search_space:
        raise ConfigError("--search-space is required")
    if tune.Tuner.can_restore(str(path)):
        raise ConfigError(
            f"--name {name}: a search already exists at {path}; "
            f"add --resume to continue it or pick another --name"
        )
    writable_folder(args.output or str(path / "best.json"), "--output", is_file=True)
    config = validate(config_from_args(args), known_models=list_models())
    if args.metric == SOUP_METRIC and config.population.soup != "every_round":
        raise ConfigError(
            f"--metric {SOUP_METRIC} needs --soup every_round (a trial reports it "
            "only in the rounds that make a soup)"
        )
    space = load_search_space(args.search_space, config, list_models())
    fixed = sorted(set(typed_settings(args)) & set(space.settings))
    if fixed:
        raise ConfigError(
            f"{flag_name(fixed[0])} is searched by {args.search_space}; drop the flag or the key"
        )
    return absolute_paths(config, path), SearchState(name, str(path), space=space)


def resumed(args: argparse.Namespace, path: Path) -> tuple[Config, SearchState]:
    """The stopped search at ``path``: its stored settings, checked like new ones. Setting
    flags typed now are checked too (a bad one is still bad input), then ignored with a
    warning: the trials' MLflow runs already hold the stored values as params, and a
    restored trial goes on with the settings it was started with."""
    if not tune.Tuner.can_restore(str(path)) or not (path / STATE_FILE).exists():
        raise ConfigError(f"--resume: no search to continue at {path}; check --name")
    state = SearchState.load(path)
    try:
        stored = validate(from_flat(state.settings), known_models=list_models())
    except ConfigError as error:
        raise ConfigError(
            f"--resume: {state.file} holds settings that are not valid: {error}"
        ) from None
    if args.output:
        state.output = str(Path(args.output).resolve())
    writable_folder(state.output, "--output", is_file=True)
    ignored = ignored_flags(args, stored, state)
    if ignored:
        print(
            f"graftune.tune: warning: ignoring {', '.join(ignored)}: a resumed search keeps "
            f"its stored settings (in {state.file})",
            file=sys.stderr,
        )
    return stored, state


def ignored_flags(args: argparse.Namespace, stored: Config, state: SearchState) -> list[str]:
    """The flags (and ``--config`` settings) typed with --resume that differ from the stored
    search, after validating them against it; the same values typed again are not listed."""
    typed = validate(config_from_args(args, stored), known_models=list_models())
    now, then = flatten(absolute_paths(typed, Path(state.path))), flatten(stored)
    ignored = [flag_name(key.split("/", 1)[1]) for key in now if now[key] != then[key]]
    if args.num_samples is not None and args.num_samples != state.num_samples:
        ignored.append("--num-samples")
    return ignored


def check_search_flags(args: argparse.Namespace) -> None:
    rules = [
        (args.num_samples is None or args.num_samples >= 1, "--num-samples", ">= 1"),
        (args.grace_period >= 1, "--grace-period", ">= 1"),
        (args.reduction_factor > 1, "--reduction-factor", "> 1"),
        (args.max_concurrent_trials >= 0, "--max-concurrent-trials", ">= 0"),
    ]
    for ok, flag, rule in rules:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise ConfigError(f"{flag} must be {rule}; got {value}")


def absolute_paths(config: Config, path: Path) -> Config:
    """Trials run in their own working directories: give them absolute places to write.
    Population checkpoints default to the search's folder, beside Tune's."""
    checkpoints = config.population.checkpoint_dir
    if checkpoints == Config().population.checkpoint_dir:
        checkpoints = str(path / "populations")
    return with_overrides(
        config,
        {
            "tracking_uri": resolve_tracking_uri(config.tracking.tracking_uri),
            "checkpoint_dir": str(Path(checkpoints).expanduser().resolve()),
            "data_dir": str(Path(config.data.data_dir).expanduser().resolve()),
        },
    )
