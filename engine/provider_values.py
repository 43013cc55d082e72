"""Typed reads of a provider's JSON values: ids, texts, instants, flags. Pure.

Every read either returns a value the ledger can store (ids of at most 255 characters without
NUL or unpaired surrogates, instants within years 1-9999) or raises the caller's TerminalError
naming the field, whatever the JSON holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from engine.errors import TerminalError

MAX_ID_LENGTH = 255  # the ledger's columns for app_user_ids, product and transaction ids
# The instants the engine can store and show (ISO 8601 needs a four-digit year): years 1-9999.
MIN_INSTANT_MS = -62_135_596_800_000
MAX_INSTANT_MS = 253_402_300_799_999


def storable(text: str) -> bool:
    """Whether ``text`` can be stored as text: PostgreSQL refuses NUL, and a lone surrogate
    has no UTF-8."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# RFC 3339 date-time, and the ISO 8601 forms around it: 'T', 't' or a space between date and
# time; seconds optional; any fraction; 'Z', 'z' or an offset with or without its colon.
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r" ?(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def parse_instant_ms(value: Any) -> int | None:
    """RFC 3339 / ISO 8601 date-time or epoch ms (a number or a string of digits) → epoch ms.

    None and "" stay None. ValueError for anything else: a string that is not a date-time with
    a zone, a boolean, infinity, NaN, or an instant outside years 1-9999. A leap second
    (``23:59:60``) is the first millisecond of the next minute, as POSIX time counts it.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        value = int(value)
    if isinstance(value, int):
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        ms = int(text) if text.isascii() and text.isdigit() else _date_time_ms(text)
    else:
        raise ValueError(f"a {type(value).__name__} is not a time")
    if not MIN_INSTANT_MS <= ms <= MAX_INSTANT_MS:
        raise ValueError("outside years 1-9999")
    return ms


def _date_time_ms(text: str) -> int:
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError("not a date-time with a zone (RFC 3339)")
    groups: tuple[str | None, ...] = match.groups()
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = groups
    if not (year and month and day and hour and minute):  # the pattern requires them
        raise ValueError("not a date-time")
    second_n = int(second or 0)
    if int(hour) > 23 or int(minute) > 59 or second_n > 60 or int(off_h or 0) > 23 or int(off_m or 0) > 59:
        raise ValueError("not a date-time: a field is out of range")
    days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL  # ValueError: no such day
    digits = fraction or "0"
    scale: int = 10 ** len(digits)
    fraction_ms = (int(digits) * 2000 + scale) // (2 * scale)  # rounded half up
    offset_ms = (int(off_h or 0) * 60 + int(off_m or 0)) * 60_000 * (-1 if sign == "-" else 1)
    return (((days * 24 + int(hour)) * 60 + int(minute)) * 60 + second_n) * 1000 + fraction_ms - offset_ms


def shown(value: Any) -> str:
    """A value as a log or dead-letter message may quote it: ASCII, short."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class FieldReader:
    """Reads the fields of one provider body; every problem raises ``error`` naming the field."""

    error: type[TerminalError]

    def fail(self, path: str, problem: str) -> TerminalError:
        return self.error(f"{path}: {problem}")

    def object(self, value: Any, path: str) -> Mapping[str, Any]:
        """A JSON object; null reads as empty."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, not {shown(value)}")
        return value

    def array(self, value: Any, path: str) -> list[Any]:
        """A JSON array; null reads as empty."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"must be an array, not {shown(value)}")
        return value

    def text(self, value: Any, path: str, *, limit: int = MAX_ID_LENGTH) -> str | None:
        """A string the ledger can store (no NUL, valid UTF-8, at most ``limit`` characters)."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, not {shown(value)}")
        if len(value) > limit:
            raise self.fail(path, f"longer than {limit} characters")
        if not storable(value):
            raise self.fail(path, "holds a NUL or an unpaired surrogate")
        return value

    def identifier(self, value: Any, path: str) -> str | None:
        """An id: a non-empty string, or a whole number (``store_transaction_id`` sometimes is)."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = self.text(value, path)
        if text == "":
            raise self.fail(path, "is empty")
        return text

    def identifiers(self, value: Any, path: str) -> tuple[str, ...]:
        """An array of ids (null reads as none), each once."""
        ids: dict[str, None] = {}
        for i, item in enumerate(self.array(value, path)):
            identifier = self.identifier(item, f"{path}[{i}]")
            if identifier is None:
                raise self.fail(f"{path}[{i}]", "must be an id, not null")
            ids[identifier] = None
        return tuple(ids)

    def instant(self, value: Any, path: str) -> int | None:
        try:
            return parse_instant_ms(value)
        except ValueError as exc:
            raise self.fail(path, f"{exc}: {shown(value)}") from None

    def flag(self, value: Any, path: str, *, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, not {shown(value)}")
        return value

    def word(self, value: Any, path: str, *, limit: int) -> str | None:
        """An enumerated value (store, period type, ...), lower-cased; empty reads as absent."""
        text = self.text(value, path, limit=limit)
        return text.lower() if text else None
