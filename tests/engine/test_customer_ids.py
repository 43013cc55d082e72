"""An operator's list of app_user_ids: one per line, bad lines named by number."""

from __future__ import annotations

import pytest

from engine.customer_ids import id_problem, read_id_lines


def test_ids_one_per_line_with_blanks_comments_and_duplicates():
    data = (
        b"# exported 2024-01-02\nalice\r\n\n   \n  bob  \n#carol\n$RCAnonymousID:ab12\nalice\nd\xc3\xa9j\xc3\xa0 vu\n"
    )
    listed = read_id_lines(data)
    assert listed.ids == ("alice", "bob", "$RCAnonymousID:ab12", "déjà vu")
    assert listed.duplicates == 1 and listed.problems == ()


def test_an_empty_file_lists_nothing():
    assert read_id_lines(b"").ids == () and read_id_lines(b"\n# only a comment\n").ids == ()


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        (b"x" * 256, "256 characters, at most 255"),
        (b"bad\x00id", "NUL"),
        (b"tab\tinside", "control character"),
        (b"\xed\xa0\x80lone", "not valid UTF-8 (byte 1)"),  # a surrogate encoded in UTF-8 is no UTF-8
        (b"caf\xe9", "not valid UTF-8 (byte 4)"),
    ],
)
def test_a_line_that_cannot_be_an_id_is_named_by_its_number(line, phrase):
    listed = read_id_lines(b"alice\n" + line + b"\nbob\n")
    assert listed.ids == ("alice", "bob")
    [problem] = listed.problems
    assert problem.line == 2 and phrase in str(problem) and str(problem).startswith("line 2: ")


def test_the_rules_of_one_id():
    assert id_problem("x" * 255) is None
    assert id_problem("") == "an empty id"
    assert "lone surrogate" in (id_problem("a\udc80b") or "")  # text decoded with surrogateescape
    assert "NUL" in (id_problem("\x00") or "")
