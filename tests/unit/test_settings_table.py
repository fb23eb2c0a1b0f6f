"""The settings are defined once, in `carbonspan.config.Settings`: the
keyword arguments' TypedDict, the parsers and the docs' reference table all
follow it."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from carbonspan import config
from carbonspan.config import Settings
from carbonspan.types import InstrumentSettings

ROOT = Path(__file__).resolve().parents[2]


def _hints() -> dict[str, object]:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from carbonspan import IntensityProvider, Measurement, PowerSource

    names = {
        "MeterProvider": MeterProvider,
        "TracerProvider": TracerProvider,
        "Span": Span,
        "IntensityProvider": IntensityProvider,
        "Measurement": Measurement,
        "PowerSource": PowerSource,
    }
    return typing.get_type_hints(InstrumentSettings, localns=names)


def _literals(hint: object) -> set[object]:
    found: set[object] = set()
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is typing.Literal:
            found |= set(typing.get_args(arg))
    return found


def test_the_typed_keyword_arguments_are_the_table_in_its_order() -> None:
    assert tuple(InstrumentSettings.__annotations__) == config.NAMES
    hints = _hints()
    for name in config.NAMES:
        # Every keyword takes None, which counts as not given.
        assert type(None) in typing.get_args(hints[name]), name


@pytest.mark.parametrize(
    ("name", "choices"),
    [
        ("scope", config.SCOPES),
        ("attribution", config.ATTRIBUTIONS),
        ("response_headers_format", config.HEADER_FORMATS),
        ("cloud_provider", ("aws", "azure", "gcp")),
        ("intensity_provider", ("static", "electricitymaps")),
    ],
)
def test_each_literal_names_what_its_parser_accepts(
    name: str, choices: tuple[str, ...]
) -> None:
    assert _literals(_hints()[name]) == set(choices)
    parse = config.PARSERS[name]
    for choice in choices:
        assert parse(name, choice.upper()) == choice


def test_every_text_setting_has_a_parser_and_every_object_none() -> None:
    for f in fields(Settings):
        parse = f.metadata["parse"]
        assert (parse is None) == (f.name in config.OBJECT_SETTINGS), f.name
        assert f.metadata["kind"] and f.metadata["accepted"] and f.metadata["shown"]
    assert set(config.OBJECT_SETTINGS) == {
        "power_source",
        "meter_provider",
        "tracer_provider",
        "measurement_hook",
    }


def test_each_default_is_what_its_own_parser_gives_for_its_text() -> None:
    # The default a row shows is the default the code uses.
    for name, parse in config.PARSERS.items():
        default = next(f.default for f in fields(Settings) if f.name == name)
        if isinstance(default, float):
            assert parse(name, f"{default:g}") == default, name


@pytest.mark.parametrize("name", config.PARSERS)
def test_a_bad_keyword_names_its_setting(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: "):
        Settings.load({name: object()})


def test_the_docs_table_is_written_from_the_table() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_settings.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in config.NAMES:
        assert f"| `{name}` |" in page
