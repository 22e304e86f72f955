"""What a search keeps between sessions: the file in its folder that ``--resume`` reads."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftune.commands.searchspace import SearchSpace
from graftune.config import ConfigError, read_text

STATE_FILE = "graftune-search.json"  # in the Tune experiment dir: what --resume needs


@dataclass
class SearchState:
    """One search.

    Attributes:
        name: the search's folder under --storage-path and its MLflow parent run's name.
        path: that folder, absolute.
        searcher, metric, num_samples, trials: how it searches (trials = samples x grid).
        output: the best configuration's JSON file.
        settings: the fixed settings, flat (``"graft/A"`` keys).
        parent_run_id: the MLflow run every trial is nested under.
        space: the search space of a new search; None on --resume, where Tune restores its
            own copy (it is not stored).
    """

    name: str
    path: str
    searcher: str = ""
    metric: str = ""
    num_samples: int = 0
    output: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    trials: int = 0
    parent_run_id: str = ""
    space: SearchSpace | None = field(default=None, compare=False)

    @property
    def file(self) -> Path:
        return Path(self.path) / STATE_FILE

    def as_json(self) -> dict[str, Any]:
        """Everything but the space, as stored."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "space"}

    def save(self) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps(self.as_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> SearchState:
        """The search stored in folder ``path``.

        Raises:
            ConfigError: one line naming the file, when it cannot be read or is not what
                :meth:`save` writes (a truncated or hand-edited file).
        """
        file, types = path / STATE_FILE, _stored_types(cls)
        text = read_text(file, "--resume:")
        try:
            stored = json.loads(text)
        except json.JSONDecodeError as error:
            problem = f"is not valid JSON (line {error.lineno}: {error.msg})"
        else:
            problem = _stored_problem(stored, types)
        if problem:
            raise ConfigError(
                f"--resume: {file} {problem}; it must be the JSON object graftune.tune "
                f"wrote there (restore it, or start a new search under another --name)"
            )
        return cls(**{k: v for k, v in stored.items() if k in types})  # others: newer keys


def _stored_types(cls: type[SearchState]) -> dict[str, type]:
    """Each stored field and its type (``dict`` for ``dict[str, Any]``)."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "space"]
    return {name: typing.get_origin(hints[name]) or hints[name] for name in fields}


def _stored_problem(stored: Any, types: dict[str, type]) -> str:
    """What is wrong with a loaded state file ('' when nothing is)."""
    if not isinstance(stored, dict):
        return f"holds a JSON {type(stored).__name__}, not an object"
    for name, kind in types.items():
        if name not in stored:
            return f"has no '{name}'"
        value = stored[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = {str: "text", int: "a whole number", dict: "a mapping"}.get(kind, kind)
            return f"has '{name}': {repr(value)[:60]}, which is not {wanted}"
    return ""
