"""Settings from outside: flat ``"section/setting"`` keys (MLflow params, Tune) and back,
overrides by name with their values coerced to the setting's type, and YAML files."""

from __future__ import annotations

import dataclasses
import numbers
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from graftune.config.settings import SECTIONS, Config, ConfigError, flag_name, setting_sections


def flatten(config: Config) -> dict[str, Any]:
    """Nested config to flat ``"section/setting"`` keys, for MLflow params and Tune."""
    return {
        f"{section}/{name}": value
        for section in SECTIONS
        for name, value in dataclasses.asdict(getattr(config, section)).items()
    }


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``config`` with settings replaced.

    Keys may be plain setting names (``"A"``), ``"section/setting"`` or a nested
    ``{"graft": {"A": 0.2}}`` mapping, as in a YAML file. Values are coerced to the type of
    the default, so ``"0.2"`` from a file or an MLflow param works for a float setting; a
    value that would only be a guess (``None``, a list, ``true`` for a number, ``2`` for a
    switch, a YAML number for a name) is refused with a :class:`ConfigError`.
    """
    sections = setting_sections(config)
    changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if sections.get(sub_key) != key:
                    raise ConfigError(f"unknown setting '{key}.{sub_key}' in section '{key}'")
                changes[key][sub_key] = sub_value
            continue
        name = key.split("/", 1)[-1]
        if name not in sections or ("/" in key and key.split("/", 1)[0] != sections[name]):
            raise ConfigError(f"unknown setting '{key}'; see python -m graftune.run --help")
        changes[sections[name]][name] = value
    new_sections = {}
    for section in SECTIONS:
        current = getattr(config, section)
        typed = {k: _coerce(k, v, getattr(current, k)) for k, v in changes[section].items()}
        new_sections[section] = dataclasses.replace(current, **typed)
    return Config(**new_sections)


def read_yaml(path: str, what: str = "--config") -> dict[str, Any]:
    """A YAML mapping of settings (flat or by section) from a file; a :class:`ConfigError`
    naming the file when it is not one."""
    text = read_text(path, what)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of settings, not {type(loaded).__name__}"
        )
    _check_keys(loaded, f"{what} {path}")
    return loaded


def read_text(path: str | os.PathLike, what: str) -> str:
    """A settings file's text (YAML, or a search's JSON state); a :class:`ConfigError`
    naming the file (``what``: the flag that led to it) when it cannot be read as text."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # reading a FIFO or a device would wait, or never end
            why = "Is a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ConfigError(f"{what} {path}: cannot read it ({why})")
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot read it ({error.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {error.start})") from None


def _check_keys(mapping: dict, where: str, section: str = "") -> None:
    """YAML reads ``1:``, ``~:`` or ``2024-01-01:`` as a number, null or date key: refuse
    those here, where the file can be named, in a section mapping too."""
    for key, value in mapping.items():
        if not isinstance(key, str):
            inside = f" in section '{section}'" if section else ""
            raise ConfigError(
                f"{where}: key {key!r}{inside} is not a setting name; keys must be setting "
                "names such as A, lr or num_models"
            )
        if not section and key in SECTIONS and isinstance(value, dict):
            _check_keys(value, where, key)


def from_flat(flat: dict[str, Any]) -> Config:
    """Inverse of :func:`flatten` (values may be strings, as MLflow params come back)."""
    return with_overrides(Config(), flat)


# the words a switch takes, in any case: MLflow params come back as "True" and "False"
_SWITCH_WORDS = {
    **dict.fromkeys(("true", "yes", "on", "1"), True),
    **dict.fromkeys(("false", "no", "off", "0"), False),
}


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the setting's ``default``, or a :class:`ConfigError`."""
    kind = type(default)
    try:
        return _CONVERT[kind](value)
    except (TypeError, ValueError, OverflowError):
        quote = " (quote it in a YAML file)" if kind is str and _is_number(value) else ""
        raise ConfigError(
            f"{flag_name(name)} must be {_WANTED[kind]}; got {value!r}{quote}"
        ) from None


def _is_number(value: Any) -> bool:
    """An int or float, Python's or numpy's (Tune samples numpy scalars), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if _is_number(value) and isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)  # as the words "1" and "0" are
    if isinstance(value, str) and value.strip().lower() in _SWITCH_WORDS:
        return _SWITCH_WORDS[value.strip().lower()]
    raise TypeError(value)


def _to_int(value: Any) -> int:
    if _is_number(value) and isinstance(value, numbers.Integral):
        return int(value)
    if _is_number(value) and float(value).is_integer():  # 4.0 from a file or Tune
        return int(value)
    if isinstance(value, str):
        return int(value)
    raise TypeError(value)


def _to_float(value: Any) -> float:
    if _is_number(value) or isinstance(value, str):  # PyYAML reads 1e-3 as a string
        return float(value)
    raise TypeError(value)


def _to_str(value: Any) -> str:
    if isinstance(value, str):  # a YAML number is not taken as its text: 0123 reads as 83
        return str(value)
    raise TypeError(value)


_CONVERT: dict[type, Callable[[Any], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
}
_WANTED = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
