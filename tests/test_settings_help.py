"""Settings describe themselves: choices are their Literal annotations, help texts their
field metadata, and --help shows both."""

import dataclasses

import pytest

from graftune.commands import run
from graftune.config import (
    SECTIONS,
    Config,
    ConfigError,
    setting_choices,
    validate,
    with_overrides,
)


def test_every_setting_has_a_help_text():
    missing = [
        f.name
        for section in SECTIONS
        for f in dataclasses.fields(getattr(Config(), section))
        if not f.metadata.get("help")
    ]
    assert missing == []


def test_the_literal_annotations_are_the_choices():
    choices = setting_choices()
    assert choices["level"] == ("layer", "filter")
    assert choices["fuse"] == ("auto", "on", "off")
    assert "model" not in choices  # the registry decides, not an annotation


@pytest.mark.parametrize("name", sorted(setting_choices()))
def test_every_choice_is_enforced_and_every_default_allowed(name):
    allowed = setting_choices()[name]
    validate(Config())  # the defaults are among the choices
    with pytest.raises(ConfigError, match=f"must be one of {', '.join(allowed)}"):
        validate(with_overrides(Config(), {name: "no-such-choice"}))


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--level {layer,filter}" in out and "--verbose" in out
