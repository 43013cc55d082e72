"""A list of app_user_ids from a file, one per line, checked line by line. Pure.

Lines are split on LF (a CR before it is dropped) and decoded one at a time, so a bad byte is
reported on its own line. Surrounding blanks are trimmed; blank lines and lines starting with
``#`` are skipped. An id must be UTF-8, non-empty, at most 255 characters, without control
characters (NUL included) and without lone surrogates: the rules of an app_user_id everywhere
else in the engine (engine.client_flows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.client_flows import MAX_ID_LENGTH, NO_CONTROL_PATTERN

_NO_CONTROL = re.compile(NO_CONTROL_PATTERN)
_SHOWN = 40  # characters of a bad line shown in its problem


@dataclass(frozen=True)
class LineProblem:
    line: int  # 1-based
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.problem}"


@dataclass(frozen=True)
class IdList:
    ids: tuple[str, ...]  # each once, in the order first listed
    duplicates: int  # lines naming an id listed above them
    problems: tuple[LineProblem, ...]


def id_problem(text: str) -> str | None:
    """Why ``text`` cannot be an app_user_id (None when it can)."""
    if not text:
        return "an empty id"
    if "\x00" in text:
        return "holds a NUL character"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return "holds a lone surrogate (not valid Unicode)"
    if not _NO_CONTROL.match(text):
        return "holds a control character"
    if len(text) > MAX_ID_LENGTH:
        return f"{len(text)} characters, at most {MAX_ID_LENGTH} allowed"
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else f"{text[:_SHOWN]}…")


def read_id_lines(data: bytes) -> IdList:
    """The ids listed in ``data`` and the problem of every line that is not one."""
    ids: dict[str, None] = {}
    duplicates = 0
    problems: list[LineProblem] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(LineProblem(number, f"not valid UTF-8 (byte {exc.start + 1})"))
            continue
        text = text.strip(" \t\r\f\v")
        if not text or text.startswith("#"):
            continue
        problem = id_problem(text)
        if problem is not None:
            problems.append(LineProblem(number, f"{_shown(text)} {problem}"))
        elif text in ids:
            duplicates += 1
        else:
            ids[text] = None
    return IdList(tuple(ids), duplicates, tuple(problems))
