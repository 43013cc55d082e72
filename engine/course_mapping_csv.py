"""The course mapping as CSV: operators export it, edit it, import it. Pure.

Columns (header row required, any order, names case-insensitive)::

    resource,course_run_id,mode,active,expires_at,on_revoke
    course:H01ENB,course-v1:HypnoElp+H01ENB+2024,professional,true,,audit

* ``resource`` (required): the resource a catalog product grants (``grants[].resource``).
* ``course_run_id`` (required): an Open edX course key, ``course-v1:ORG+COURSE+RUN`` (or the
  old ``ORG/COURSE/RUN``). One course run per file: two resources on one run would race.
* ``mode`` (required): the paid mode to enroll in (``professional``, ``no-id-professional``,
  ``verified``…); free modes (``audit``, ``honor``) are refused.
* ``active`` (optional, default true): false keeps the row but makes no LMS call for it.
* ``expires_at`` (optional): ISO 8601 with a timezone (``2026-06-30T00:00:00Z``); paid access
  to the run ends then, even if the grant lasts longer.
* ``on_revoke`` (optional, default ``audit``): ``audit`` downgrades to audit where the run offers
  it (elsewhere deactivates), ``deactivate`` unenrolls.

Every row is checked and every problem reported with its line number; the caller imports
nothing unless there is no problem at all. Files are UTF-8 (a BOM is fine); UTF-16 and
undecodable bytes are refused with the line they are on.

Spreadsheets evaluate a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return as a formula (OWASP, "CSV Injection"). Export writes such a cell with a leading
apostrophe, the spreadsheet's mark for text, and so any cell that starts with one; import
drops one leading apostrophe, so an exported file imports back unchanged.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.enrollment import KNOWN_MODES, PAID_MODES, REVOKE_POLICIES, CourseMapping, RevokePolicy, is_revoke_policy

COLUMNS = ("resource", "course_run_id", "mode", "active", "expires_at", "on_revoke")
REQUIRED = ("resource", "course_run_id", "mode")

# opaque_keys: course-v1 keys are ORG+COURSE+RUN, old ones ORG/COURSE/RUN, of [\w\-~.:] chars.
_KEY_PART = r"[\w\-~.:]+"
COURSE_KEY = re.compile(rf"^(course-v1:{_KEY_PART}\+{_KEY_PART}\+{_KEY_PART}|{_KEY_PART}/{_KEY_PART}/{_KEY_PART})$")
# Column widths of the stored mapping (persistence/models.py CourseMappingRow).
MAX_RESOURCE_LENGTH = 255
MAX_COURSE_RUN_ID_LENGTH = 255
# Instants an expiry may take: Python's datetimes end with year 9999 (in UTC), and an expiry
# before 1970 is a typo.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_INSTANT_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
# Cell starts a spreadsheet evaluates (OWASP); the apostrophe is the escape itself.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n"}


@dataclass(frozen=True)
class CsvProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class MappingCsvError(ValueError):
    """The file has problems; ``problems`` lists every one, in line order."""

    def __init__(self, problems: list[CsvProblem]):
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class MappingRow:
    """A valid row and the line it came from (for errors found later, against stored rows)."""

    line: int
    mapping: CourseMapping


def parse_mapping_csv(text: str, *, known_resources: Collection[str] | None = None) -> list[MappingRow]:
    """Validate a whole file; raise MappingCsvError listing every problem, or return its rows.

    ``known_resources``: the resources the catalog grants (None: not checked).
    """
    problems: list[CsvProblem] = []
    rows: list[MappingRow] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header: list[str] | None = None
    seen_resource: dict[str, int] = {}
    seen_run: dict[str, int] = {}
    for line, fields in _records(reader, problems):
        if not any(f.strip() for f in fields):
            continue  # blank line
        if header is None:
            header = [f.strip().lower() for f in fields]
            missing = [c for c in REQUIRED if c not in header]
            unknown = [c for c in header if c not in COLUMNS]
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if missing:
                problems.append(CsvProblem(line, f"header lacks required column(s): {', '.join(missing)}"))
            if unknown:
                problems.append(
                    CsvProblem(line, f"unknown column(s): {', '.join(unknown)} (expected {', '.join(COLUMNS)})")
                )
            if duplicated:
                problems.append(CsvProblem(line, f"column(s) named twice: {', '.join(duplicated)}"))
            if missing or unknown or duplicated:
                break  # rows cannot be read against a broken header
            continue
        if len(fields) != len(header):
            problems.append(CsvProblem(line, f"expected {len(header)} fields, found {len(fields)}"))
            continue
        values = {name: _from_cell(value) for name, value in zip(header, fields, strict=False)}
        row_problems: list[str] = []
        mapping = _parse_row(values, row_problems, known_resources)
        if mapping is not None:
            earlier = seen_resource.get(mapping.resource)
            if earlier is not None:
                row_problems.append(f"resource {mapping.resource!r} is already mapped on line {earlier}")
            else:
                seen_resource[mapping.resource] = line
            earlier = seen_run.get(mapping.course_run_id)
            if earlier is not None:
                row_problems.append(f"course_run_id {mapping.course_run_id!r} is already mapped on line {earlier}")
            else:
                seen_run[mapping.course_run_id] = line
        problems.extend(CsvProblem(line, message) for message in row_problems)
        if mapping is not None and not row_problems:
            rows.append(MappingRow(line, mapping))
    if header is None and not problems:
        problems.append(CsvProblem(1, "no header row: the file is empty"))
    if problems:
        raise MappingCsvError(sorted(problems, key=lambda p: p.line))
    return rows


def _records(reader: Any, problems: list[CsvProblem]) -> Iterable[tuple[int, list[str]]]:
    """(first physical line, fields) for each record; a CSV syntax error ends the file."""
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(CsvProblem(start, f"unreadable CSV: {exc}"))
            return
        yield start, fields
        start = reader.line_num + 1


def _parse_row(
    values: dict[str, str], problems: list[str], known_resources: Collection[str] | None
) -> CourseMapping | None:
    resource = values.get("resource", "")
    course_run_id = values.get("course_run_id", "")
    mode = values.get("mode", "")
    if not resource:
        problems.append("resource: required")
    elif len(resource) > MAX_RESOURCE_LENGTH:
        problems.append(f"resource: {len(resource)} characters, at most {MAX_RESOURCE_LENGTH}")
    elif known_resources is not None and resource not in known_resources:
        problems.append(f"resource {resource!r} is not granted by any product in the catalog")
    if not course_run_id:
        problems.append("course_run_id: required")
    elif len(course_run_id) > MAX_COURSE_RUN_ID_LENGTH:
        problems.append(f"course_run_id: {len(course_run_id)} characters, at most {MAX_COURSE_RUN_ID_LENGTH}")
    elif not COURSE_KEY.match(course_run_id):
        problems.append(f"course_run_id {course_run_id!r} is not an Open edX course key (course-v1:ORG+COURSE+RUN)")
    if not mode:
        problems.append("mode: required")
    elif mode not in KNOWN_MODES:
        problems.append(f"mode {mode!r} is not an Open edX mode ({', '.join(sorted(PAID_MODES))})")
    elif mode not in PAID_MODES:
        problems.append(
            f"mode {mode!r} is free: a purchase must enroll in a paid mode ({', '.join(sorted(PAID_MODES))})"
        )
    active_text = values.get("active", "").lower()
    active = True
    if active_text in _FALSE:
        active = False
    elif active_text and active_text not in _TRUE:
        problems.append(f"active {values['active']!r} is not true or false")
    expires_ms = None
    expires_text = values.get("expires_at", "")
    if expires_text:
        expires_ms = _parse_instant(expires_text, problems)
    revoke_text = values.get("on_revoke", "").lower() or "audit"
    on_revoke: RevokePolicy = "audit"
    if is_revoke_policy(revoke_text):
        on_revoke = revoke_text
    else:
        problems.append(f"on_revoke {values['on_revoke']!r} is not one of {', '.join(sorted(REVOKE_POLICIES))}")
    if problems:
        return None
    return CourseMapping(resource, course_run_id, mode, active, expires_ms, on_revoke)


def _parse_instant(text: str, problems: list[str]) -> int | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"expires_at {text!r} is not an ISO 8601 date-time (e.g. 2026-06-30T00:00:00Z)")
        return None
    if moment.tzinfo is None:
        problems.append(f"expires_at {text!r} has no timezone (add Z for UTC)")
        return None
    try:
        ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    except OverflowError:
        ms = MAX_INSTANT_MS + 1
    if not 0 <= ms <= MAX_INSTANT_MS:
        problems.append(f"expires_at {text!r} is outside 1970-01-01 to 9999-12-31 (UTC)")
        return None
    return ms


def format_instant(ms: int | None) -> str:
    """``2026-06-30T00:00:00Z`` (milliseconds when there are some); ValueError outside the years
    an import accepts."""
    if ms is None:
        return ""
    if not 0 <= ms <= MAX_INSTANT_MS:
        raise ValueError(f"{ms} ms is outside 1970-01-01 to 9999-12-31 (UTC)")
    moment = _EPOCH + timedelta(milliseconds=ms)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def decode_mapping_file(data: bytes) -> str:
    """The text of a mapping file: UTF-8, with or without a BOM. MappingCsvError for UTF-16 (or
    any file with NUL bytes) and for bytes that are not UTF-8, naming the line."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise MappingCsvError(
            [CsvProblem(1, "the file is UTF-16 (or holds NUL bytes): save it as CSV UTF-8 and import that")]
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MappingCsvError(
            [CsvProblem(line, f"byte 0x{data[exc.start]:02x} is not UTF-8: save the file as CSV UTF-8 and import that")]
        ) from None


def _to_cell(value: str) -> str:
    """A value as a cell no spreadsheet evaluates (a text mark before a formula start)."""
    if value.startswith((*FORMULA_STARTS, TEXT_MARK)) or value.lstrip(" ").startswith(FORMULA_STARTS):
        return TEXT_MARK + value
    return value


def _from_cell(cell: str) -> str:
    """A cell's value: surrounding spaces stripped, then one text mark dropped."""
    value = cell.strip()
    return value[1:] if value.startswith(TEXT_MARK) else value


def format_mapping_csv(mappings: Iterable[CourseMapping]) -> str:
    """The mapping as CSV (sorted by resource); importing it back changes nothing. No cell can
    be evaluated by a spreadsheet. ValueError names a stored row that cannot be written."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # Lines end with "\n", so csv would leave a lone "\r" unquoted, and a reader would break the
    # row there: rows holding one are written with every field quoted.
    quoting_writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(COLUMNS)
    for m in sorted(mappings, key=lambda m: m.resource):
        try:
            expires_at = format_instant(m.expires_ms)
        except ValueError as exc:
            raise ValueError(f"resource {m.resource!r}: expires_at {exc}; import a valid expiry for it") from None
        row = [m.resource, m.course_run_id, m.mode, "true" if m.active else "false", expires_at, m.on_revoke]
        cells = [_to_cell(cell) for cell in row]
        (quoting_writer if any("\r" in cell for cell in cells) else writer).writerow(cells)
    return out.getvalue()
