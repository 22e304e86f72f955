"""What the command-line tools share: a flag for every setting, help from the settings' own
fields, and bad input as one line with exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn

from graftune.config import (
    SECTIONS,
    Config,
    flag_name,
    read_yaml,
    setting_choices,
    setting_sections,
    with_recipe,
)

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (plus exit code 2), not a usage dump,
    and a prefix of a flag is refused rather than taken as the flag.
    Every command has ``--verbose``, which lets Ray's and MLflow's own messages through."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)  # a typo such as --plot is refused, not guessed
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--verbose", action="store_true", help="show Ray's and MLflow's own messages too"
        )

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr and exit code 2. Only commands call this."""
    print(f"graftune: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def add_setting_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting of :class:`Config`, grouped by section; the help text is the
    field's ``help`` metadata, the choices its ``Literal`` annotation.

    Every default is None so that only flags the user typed override the config file."""
    parser.add_argument("--config", help="YAML file of settings (flat or by section); flags win")
    defaults = Config()
    choices = setting_choices()
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for f in dataclasses.fields(getattr(defaults, section)):
            if f.name in skip:
                continue
            default = getattr(getattr(defaults, section), f.name)
            text = f"{f.metadata.get('help', '')} (default: {default!r})".strip()
            options: dict[str, Any] = {
                "dest": f.name,
                "default": None,
                "help": text.replace("%", "%%"),
            }
            if isinstance(default, bool):
                options["action"] = argparse.BooleanOptionalAction
            else:
                options["type"] = str
            if f.name in choices:  # shown, not enforced here: validate() names the setting
                options["metavar"] = "{" + ",".join(choices[f.name]) + "}"
            group.add_argument(flag_name(f.name), **options)


def config_from_args(
    args: argparse.Namespace, base: Config | None = None, dataset: str = ""
) -> Config:
    """Defaults (or ``base``), then the ``--config`` file, then the flags the user typed.
    Without ``base``, a dataset's recipe (``--dataset imagenet``) replaces the defaults, so
    the file and the flags still win over it; ``dataset``: the one neither names."""
    from_file = read_yaml(args.config) if getattr(args, "config", None) else {}
    return with_recipe(base, from_file, typed_settings(args), dataset=dataset)


def typed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed as flags (not those from files or defaults)."""
    names = setting_sections()
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
