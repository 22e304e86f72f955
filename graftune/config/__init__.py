"""Every setting of a graftune run, as dataclass fields, validated in one place.

The same field names are the command-line flags (``num_models`` -> ``--num-models``), the keys
of a YAML config file (flat, or nested by section), the MLflow params (``"graft/A"``) and the
Tune search-space keys, so the four never drift apart. A field's ``Literal[...]`` annotation
is its list of choices and its ``help`` metadata the text of ``--help``; comments beside a
field give the reasons for a default that do not belong in ``--help``.
"""

from graftune.config.overrides import flatten, from_flat, read_text, read_yaml, with_overrides
from graftune.config.recipes import RECIPES, recipe_defaults, with_recipe
from graftune.config.rules import RULES, one_network_per_worker, validate
from graftune.config.settings import (
    SECTIONS,
    Config,
    ConfigError,
    DataConfig,
    GraftConfig,
    ModelConfig,
    PopulationConfig,
    TrackingConfig,
    TrainConfig,
    flag_name,
    setting,
    setting_choices,
    setting_sections,
)

__all__ = [
    "RECIPES",
    "RULES",
    "SECTIONS",
    "Config",
    "ConfigError",
    "DataConfig",
    "GraftConfig",
    "ModelConfig",
    "PopulationConfig",
    "TrackingConfig",
    "TrainConfig",
    "flag_name",
    "flatten",
    "one_network_per_worker",
    "from_flat",
    "read_text",
    "read_yaml",
    "recipe_defaults",
    "setting",
    "setting_choices",
    "setting_sections",
    "validate",
    "with_overrides",
    "with_recipe",
]
