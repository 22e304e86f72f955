"""What a search keeps between sessions: the file in its folder that ``--resume`` reads."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftune.commands.searchspace import SearchSpace

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
        stored = json.loads((path / STATE_FILE).read_text())
        names = {f.name for f in dataclasses.fields(cls)} - {"space"}
        return cls(**{k: v for k, v in stored.items() if k in names})
