"""Search spaces for ``python -m graftune.tune``: a YAML file, checked, turned into Tune domains.

The file maps setting names (the same names as the flags and the MLflow params) to one
distribution each::

    A: {uniform: [0, 1]}
    c: {loguniform: [1, 1000]}
    num_models: {choice: [2, 3, 4]}

and may hold one joint grid, ``grid: [{A: 0.4, c: 1}, {A: 0, c: 100}, ...]``, for settings
that vary together rather than as a full product. ``searchspaces/README.md`` documents it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from graftune.config import (
    Config,
    ConfigError,
    flag_name,
    read_yaml,
    setting_sections,
    validate,
    with_overrides,
)

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")
RANGES = ("uniform", "loguniform", "int")  # [lo, hi]; the others list their values
JOINT_GRID = "grid"  # the top-level key of a grid over combinations of settings
# Settings a trial cannot take from the space: the search fixes them for every trial.
NOT_SEARCHABLE = {
    "resume": "each trial sets it itself",
    "run_name": "each trial's run is named after the trial",
    "tracking_uri": "the search sets it",
    "experiment": "trials are nested runs in the search's experiment; use --experiment",
    "checkpoint_dir": "every trial's population checkpoints go in one folder; use --checkpoint-dir",
    "register_model": "the search registers its best trial's network once; use --register-model",
}
DATA_SECTION = "data"  # loaded once at start-up and shared by every trial
# Searched when --search-space is not given: A, c, lr and K. Package data, so that it is
# there wherever graftune is installed, not only in a clone of the repository.
DEFAULT_SPACE = str(Path(__file__).resolve().parents[1] / "searchspaces" / "default.yaml")


class SearchSpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass
class SearchSpace:
    """A checked search space.

    Attributes:
        path: the file it came from.
        entries: per key, ``(distribution, arguments)``; the joint grid as
            ``("grid", [mapping, ...])`` under :data:`JOINT_GRID`.
    """

    path: str
    entries: dict[str, tuple[str, list[Any]]]

    @property
    def param_space(self) -> dict[str, Any]:
        """The Tune ``param_space`` (trial configs come back in :func:`trial_overrides`)."""
        return {key: to_tune_domain(kind, args) for key, (kind, args) in self.entries.items()}

    @property
    def has_grid(self) -> bool:
        """Grid entries need Tune's BasicVariantGenerator: Optuna cannot enumerate a grid."""
        return any(kind == "grid" for kind, _ in self.entries.values())

    @property
    def grid_size(self) -> int:
        """Trials per sample: the product of the grid lengths (1 without a grid)."""
        return math.prod(len(args) for kind, args in self.entries.values() if kind == "grid")

    @property
    def settings(self) -> list[str]:
        """The setting names the space varies."""
        names = [k for k in self.entries if k != JOINT_GRID]
        for mapping in self.entries.get(JOINT_GRID, ("grid", []))[1]:
            names += [k for k in mapping if k not in names]
        return names

    def largest(self, setting: str, default: Any) -> Any:
        """The largest value ``setting`` can take (``default`` when it is not searched)."""
        values = []
        for key, (_, args) in self.entries.items():
            if key == JOINT_GRID:
                values += [m[setting] for m in args if setting in m]
            elif key == setting:
                values += args
        return max(values, default=default)

    def corners(self, settings: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every combination of the values the space can give ``settings`` that asks the most
        of a trial: each choice and grid value, a range's upper end, each joint-grid point.
        Settings the space does not search are left out (they keep their fixed value)."""
        axes = []
        for key, (kind, args) in self.entries.items():
            if key == JOINT_GRID:
                points = [{k: v for k, v in m.items() if k in settings} for m in args]
            elif key in settings:
                points = [{key: v} for v in ([args[1]] if kind in RANGES else args)]
            else:
                continue
            axes.append([p for i, p in enumerate(points) if p not in points[:i]])
        return [{k: v for p in combo for k, v in p.items()} for combo in itertools.product(*axes)]

    def describe(self) -> dict[str, str]:
        """Each entry as short text, for the MLflow params of the search."""
        return {key: f"{kind} {args}" for key, (kind, args) in self.entries.items()}


def to_tune_domain(kind: str, args: list[Any]) -> Any:
    """One search-space entry as a Tune domain; ``int`` bounds are inclusive in the file
    and Tune's ``randint`` excludes its upper bound, hence ``hi + 1``."""
    if kind == "uniform":
        return tune.uniform(args[0], args[1])
    if kind == "loguniform":
        return tune.loguniform(args[0], args[1])
    if kind == "int":
        return tune.randint(args[0], args[1] + 1)
    if kind == "choice":
        return tune.choice(list(args))
    if kind == "grid":
        return tune.grid_search(list(args))
    raise SearchSpaceError(f"no Tune domain for distribution '{kind}'")


def trial_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Tune config as plain setting overrides (the joint grid's pairs spread out)."""
    overrides = {k: v for k, v in params.items() if k != JOINT_GRID}
    overrides.update(params.get(JOINT_GRID, {}))
    return overrides


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """The settings of one trial: the fixed ones, then the sampled ones."""
    return with_overrides(base, trial_overrides(params))


def load_search_space(
    path: str, base: Config, known_models: list[str] | None = None
) -> SearchSpace:
    """Read and check a search-space file against the fixed settings ``base``.

    Every bound, choice and grid value is checked with :func:`graftune.config.validate`
    in the context of ``base`` (so ``A`` outside [0, 1] or ``num_models: 1`` with a network
    source are refused before any trial starts).

    Raises:
        SearchSpaceError: one line naming the file and the key that is wrong.
    """
    try:
        raw = read_yaml(path, what="--search-space")
    except ConfigError as error:
        raise SearchSpaceError(str(error)) from None
    if not raw:
        raise SearchSpaceError(f"--search-space {path} holds no settings to search")
    entries = {}
    for key, spec in raw.items():
        try:
            if key == JOINT_GRID:
                entries[key] = ("grid", _joint_grid(spec, base, known_models))
            else:
                entries[key] = _entry(str(key), spec, base, known_models)
        except (ConfigError, SearchSpaceError) as error:
            raise SearchSpaceError(f"--search-space {path}: '{key}': {error}") from None
    in_grid = {name for mapping in entries.get(JOINT_GRID, ("grid", []))[1] for name in mapping}
    twice = sorted(in_grid & set(entries))
    if twice:
        raise SearchSpaceError(
            f"--search-space {path}: '{twice[0]}' is both a key and in the joint grid; keep one"
        )
    return SearchSpace(path, entries)


def _entry(
    key: str, spec: Any, base: Config, known_models: list[str] | None
) -> tuple[str, list[Any]]:
    _check_setting(key)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(
            f"must be a mapping with one distribution ({', '.join(DISTRIBUTIONS)}), "
            f"e.g. {{uniform: [0, 1]}}; got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SearchSpaceError(
            f"unknown distribution '{kind}'; use one of {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or not args:
        raise SearchSpaceError(f"{kind} needs a non-empty list, got {args!r}")
    if kind in RANGES:
        _check_range(key, kind, args, base)
    elif any(isinstance(v, dict | list) or v is None for v in args):
        raise SearchSpaceError(f"{kind} values must be plain numbers or words, got {args!r}")
    for value in args:
        validate(with_overrides(base, {key: value}), known_models)
    return kind, list(args)


def _check_range(key: str, kind: str, args: list[Any], base: Config) -> None:
    if len(args) != 2 or not all(_is_number(v) for v in args):
        raise SearchSpaceError(f"{kind} needs [lo, hi] with two numbers, got {args!r}")
    lo, hi = args
    default = getattr(getattr(base, setting_sections()[key]), key)
    if isinstance(default, bool | str):
        raise SearchSpaceError(f"{kind} needs a numeric setting; use choice for '{key}'")
    if kind == "int" and not all(isinstance(v, int) for v in args):
        raise SearchSpaceError(f"int needs whole-number bounds, got {args!r}")
    if kind != "int" and isinstance(default, int):
        raise SearchSpaceError(f"{kind} gives fractions but '{key}' is a whole number; use int")
    if lo >= hi:
        raise SearchSpaceError(f"{kind} needs lo < hi, got {args!r}")
    if kind == "loguniform" and lo <= 0:
        raise SearchSpaceError(f"loguniform needs lo > 0, got {args!r}")


def _joint_grid(spec: Any, base: Config, known_models: list[str] | None) -> list[dict]:
    if not isinstance(spec, list) or not spec:
        raise SearchSpaceError(
            "the joint grid must be a non-empty list of mappings, e.g. [{A: 0.4, c: 1}]"
        )
    for mapping in spec:
        if not isinstance(mapping, dict) or not mapping:
            raise SearchSpaceError(
                f"each grid point must be a mapping of settings, got {mapping!r}"
            )
        for name in mapping:
            _check_setting(str(name))
        validate(with_overrides(base, mapping), known_models)
    return [dict(m) for m in spec]


def _check_setting(key: str) -> None:
    if key not in setting_sections():
        raise SearchSpaceError(
            "not a setting; keys are setting names such as A, c, lr, num_models "
            "(see python -m graftune.tune --help)"
        )
    if key in NOT_SEARCHABLE:
        raise SearchSpaceError(f"cannot be searched: {NOT_SEARCHABLE[key]}")
    if setting_sections()[key] == DATA_SECTION:
        raise SearchSpaceError(
            "cannot be searched: the data is loaded once for all trials; "
            f"use the flag {flag_name(key)} instead"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
