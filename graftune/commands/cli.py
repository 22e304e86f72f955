"""What the command-line tools share: a flag for every setting, YAML config files, one-line
errors with exit code 2, and connecting to Ray."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from graftune.config import SECTIONS, Config, flag_name, setting_sections, with_overrides

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (plus exit code 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def quiet_libraries() -> None:
    """Keep MLflow's and Ray's start-up chatter off the terminal; our own lines carry the news."""
    for name in ("mlflow", "alembic", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fail(message: str) -> NoReturn:
    print(f"graftune: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def add_setting_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting of :class:`Config`, grouped by section, help from the defaults.

    Every default is None so that only flags the user typed override the config file."""
    parser.add_argument("--config", help="YAML file of settings (flat or by section); flags win")
    defaults = Config()
    comments = setting_comments()
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(getattr(defaults, section)):
            if f.name in skip:
                continue
            default = getattr(getattr(defaults, section), f.name)
            help_text = f"{comments.get(f.name, '')} (default: {default!r})".strip()
            if isinstance(default, bool):
                group.add_argument(
                    flag_name(f.name), dest=f.name, default=None,
                    action=argparse.BooleanOptionalAction, help=help_text,
                )  # fmt: skip
            else:
                group.add_argument(
                    flag_name(f.name), dest=f.name, default=None, type=str, help=help_text
                )


def setting_comments() -> dict[str, str]:
    """Each setting's comment in config.py, so --help says what the dataclass says."""
    import graftune.config

    source = inspect.getsource(graftune.config)
    found = re.findall(r"^    (\w+): [^=\n]+ = [^#\n]+#\s*(.+)$", source, flags=re.MULTILINE)
    return {name: comment.replace("%", "%%") for name, comment in found}


def read_yaml(path: str, what: str = "--config") -> dict[str, Any]:
    """A YAML mapping from a file, or one clear error naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot read it ({error.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"{what} {path} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{what} {path} must hold a mapping of settings, not {type(loaded).__name__}"
        )
    return loaded


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Defaults (or ``base``), then the ``--config`` file, then the flags the user typed."""
    config = base or Config()
    if getattr(args, "config", None):
        config = with_overrides(config, read_yaml(args.config))
    return with_overrides(config, typed_settings(args))


def typed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed as flags (not those from files or defaults)."""
    names = setting_sections()
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def init_ray(num_cpus: int | None = None) -> str:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``) or start a local
    Ray; returns where we run. The dashboard of a local Ray stays off and on localhost."""
    import ray

    if ray.is_initialized():
        return "already connected"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, logging_level=logging.WARNING)
        return f"cluster at {os.environ['RAY_ADDRESS']}"
    ray.init(
        num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1",
        logging_level=logging.WARNING, log_to_driver=True,
    )  # fmt: skip
    return "local Ray"
