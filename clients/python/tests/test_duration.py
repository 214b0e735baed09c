"""Durations: the server's grammar (README, "The command line" and "Configuration",
"Durations": ``250ms``, ``30s``, ``5m``, ``1h``, run together as ``1m30s``; a bare number
is seconds on the command line), plus numbers of seconds and ``timedelta``."""

from __future__ import annotations

import datetime

import pytest

from leasehold import parse_ms


@pytest.mark.parametrize(
    "text, ms",
    [
        ("250ms", 250),
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("1h1m1s1ms", 3_661_001),
        ("0s", 0),
        (" 5s\n", 5_000),
        ("30", 30_000),
    ],
)
def test_parse_ms_text_follows_the_servers_grammar(text: str, ms: int) -> None:
    assert parse_ms(text) == ms


@pytest.mark.parametrize("value, ms", [(30, 30_000), (1.5, 1_500), (0.25, 250), (0, 0)])
def test_parse_ms_numbers_are_seconds(value: float, ms: int) -> None:
    assert parse_ms(value) == ms


def test_parse_ms_takes_a_timedelta() -> None:
    assert parse_ms(datetime.timedelta(minutes=1, milliseconds=5)) == 60_005


@pytest.mark.parametrize(
    "bad, says",
    [
        ("", "no duration"),
        ("1m30", "has no unit"),
        ("5x", "unknown unit"),
        ("1.5s", "unknown unit"),
        ("-1s", "whole number"),
        ("s", "whole number"),
        ("5 s", "unknown unit"),
        ("1" * 65, "longer than 64"),
        ("٣s", "whole number"),
    ],
)
def test_parse_ms_refuses_what_the_server_refuses(bad: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_ms(bad)


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), True, None, [1]])
def test_parse_ms_refuses_other_values(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_ms(bad)  # type: ignore[arg-type]
