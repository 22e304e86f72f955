"""Settings from outside: flat ``"section/setting"`` keys (MLflow params, Tune) and back,
overrides by name with their values coerced to the setting's type, and YAML files."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
    the default, so ``"0.2"`` from a file or Tune works for a float setting.
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
    """A YAML mapping from a file; a :class:`ConfigError` naming the file when it is not one."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{what} {path}: cannot read it ({error.strerror})") from None
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
    return loaded


def from_flat(flat: dict[str, Any]) -> Config:
    """Inverse of :func:`flatten` (values may be strings, as MLflow params come back)."""
    return with_overrides(Config(), flat)


def _coerce(name: str, value: Any, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        wanted = {int: "an integer", float: "a number", bool: "true or false"}.get(
            kind, kind.__name__
        )
        raise ConfigError(f"{flag_name(name)} must be {wanted}, got {value!r}") from None
