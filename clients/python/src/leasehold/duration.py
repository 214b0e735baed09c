"""Durations as people write them, with the server's grammar.

``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, or several run together (``"1m30s"``): the
grammar of the server's command line and configuration (README, "The command line" and
"Configuration", "Durations"). A bare number is seconds, as on the command line: an ``int``
or ``float`` (``1.5`` is 1500 ms), or a string of digits (``"30"``). A
``datetime.timedelta`` is taken as it is. Anything else is a :class:`ValueError` naming
what was wrong.
"""

from __future__ import annotations

import datetime
from typing import Union

__all__ = ["Duration", "parse_ms", "MAX_DURATION_CHARS"]

#: What a duration may be given as.
Duration = Union[str, int, float, datetime.timedelta]

#: The longest text looked at, as the server's parser (no real duration is longer).
MAX_DURATION_CHARS = 64

# Longest spelling first, so "ms" is not read as "m" followed by junk.
_UNITS = (("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000))


def parse_ms(value: Duration) -> int:
    """``value`` in whole milliseconds (a fraction of a millisecond is rounded)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, datetime.timedelta):
        return _non_negative(round(value.total_seconds() * 1000), value)
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a duration: {value!r}")
        return _non_negative(round(value * 1000), value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip()
    if not text:
        raise ValueError("no duration given")
    if len(text) > MAX_DURATION_CHARS:
        raise ValueError(f"duration longer than {MAX_DURATION_CHARS} characters")
    if _digits(text):
        return int(text) * 1000
    total = 0
    rest = text
    while rest:
        count_len = _leading(rest, digits=True)
        if count_len == 0:
            raise ValueError(f"not a duration: expected a whole number at {rest!r} (use 500ms, 30s, 5m, 1h or 1m30s)")
        count, after = rest[:count_len], rest[count_len:]
        unit_len = _leading(after, digits=False)
        unit, rest = after[:unit_len], after[unit_len:]
        if not unit:
            raise ValueError(f"not a duration: {count} has no unit (use ms, s, m or h)")
        scale = next((ms for name, ms in _UNITS if name == unit), None)
        if scale is None:
            raise ValueError(f"not a duration: unknown unit {unit!r} (use ms, s, m or h)")
        total += int(count) * scale
    return total


def _digits(text: str) -> bool:
    # str.isdigit() also takes other scripts' digits and superscripts; the server does not.
    return all("0" <= c <= "9" for c in text)


def _leading(text: str, *, digits: bool) -> int:
    """How many characters at the start of ``text`` are ASCII digits (or are not)."""
    n = 0
    while n < len(text) and (("0" <= text[n] <= "9") == digits):
        n += 1
    return n


def _non_negative(ms: int, value: object) -> int:
    if ms < 0:
        raise ValueError(f"not a duration: {value!r} is negative")
    return ms
