"""Course mapping CSV: every row validated, every problem reported with its line; round trip."""

from __future__ import annotations

import pytest

from engine.course_mapping_csv import MappingCsvError, format_mapping_csv, parse_mapping_csv
from engine.enrollment import CourseMapping

KNOWN = {"course:H01ENB", "course:H02ENB", "course:H03ENB"}
HEADER = "resource,course_run_id,mode,active,expires_at,on_revoke\n"


def problems(text: str, known=KNOWN) -> list[str]:
    with pytest.raises(MappingCsvError) as info:
        parse_mapping_csv(text, known_resources=known)
    return [str(p) for p in info.value.problems]


def test_a_valid_file_with_defaults_and_every_column():
    rows = parse_mapping_csv(
        HEADER
        + "course:H01ENB,course-v1:HypnoElp+H01ENB+2024,professional,,,\n"
        + "\n"
        + "course:H02ENB,HypnoElp/H02ENB/2023,no-id-professional,false,2026-06-30T00:00:00Z,deactivate\n",
        known_resources=KNOWN,
    )
    assert [(r.line, r.mapping) for r in rows] == [
        (2, CourseMapping("course:H01ENB", "course-v1:HypnoElp+H01ENB+2024", "professional", True, None, "audit")),
        (
            4,
            CourseMapping(
                "course:H02ENB", "HypnoElp/H02ENB/2023", "no-id-professional", False, 1782777600000, "deactivate"
            ),
        ),
    ]


def test_columns_in_any_order_only_the_required_ones():
    rows = parse_mapping_csv(
        "Mode, Resource ,COURSE_RUN_ID\r\nverified,course:H01ENB,course-v1:A+B+C\r\n", known_resources=KNOWN
    )
    assert rows[0].mapping == CourseMapping("course:H01ENB", "course-v1:A+B+C", "verified")


def test_every_problem_is_reported_with_its_line_number():
    text = (
        HEADER  # line 1
        + "course:H01ENB,course-v1:HypnoElp+H01ENB+2024,professional,true,,audit\n"  # 2 ok
        + ",course-v1:A+B+C,professional,,,\n"  # 3
        + "course:NOPE,course-v1:A+B+D,professional,,,\n"  # 4
        + "course:H02ENB,not a key,profesional,maybe,yesterday,refund\n"  # 5
        + "course:H03ENB,course-v1:A+B+E,audit,,2026-01-01T00:00:00,\n"  # 6
        + "course:H01ENB,course-v1:HypnoElp+H01ENB+2024,verified,,,\n"  # 7
        + "course:H02ENB,course-v1:X+Y+Z\n"  # 8
    )
    assert problems(text) == [
        "line 3: resource: required",
        "line 4: resource 'course:NOPE' is not granted by any product in the catalog",
        "line 5: course_run_id 'not a key' is not an Open edX course key (course-v1:ORG+COURSE+RUN)",
        "line 5: mode 'profesional' is not an Open edX mode (credit, executive-education, masters, no-id-professional, "
        "paid-bootcamp, paid-executive-education, professional, verified)",
        "line 5: active 'maybe' is not true or false",
        "line 5: expires_at 'yesterday' is not an ISO 8601 date-time (e.g. 2026-06-30T00:00:00Z)",
        "line 5: on_revoke 'refund' is not one of audit, deactivate",
        "line 6: mode 'audit' is free: a purchase must enroll in a paid mode (credit, executive-education, masters, "
        "no-id-professional, paid-bootcamp, paid-executive-education, professional, verified)",
        "line 6: expires_at '2026-01-01T00:00:00' has no timezone (add Z for UTC)",
        "line 7: resource 'course:H01ENB' is already mapped on line 2",
        "line 7: course_run_id 'course-v1:HypnoElp+H01ENB+2024' is already mapped on line 2",
        "line 8: expected 6 fields, found 2",
    ]


def test_header_problems_are_on_line_one():
    assert problems("resource,mode,colour\ncourse:H01ENB,professional,red\n") == [
        "line 1: header lacks required column(s): course_run_id",
        "line 1: unknown column(s): colour (expected resource, course_run_id, mode, active, expires_at, on_revoke)",
    ]
    assert problems("") == ["line 1: no header row: the file is empty"]
    assert problems("resource,resource,course_run_id,mode\n") == ["line 1: column(s) named twice: resource"]


def test_line_numbers_count_physical_lines_through_quoted_newlines_and_blank_lines():
    text = (
        HEADER
        + '"course:H01ENB","course-v1:A+B+C","professional",,,\n\n\n'
        + 'course:H02ENB,"bad\nkey",professional,,,\n'
        + ",x,,,,\n"
    )
    assert problems(text) == [
        "line 5: course_run_id 'bad\\nkey' is not an Open edX course key (course-v1:ORG+COURSE+RUN)",
        "line 7: resource: required",
        "line 7: course_run_id 'x' is not an Open edX course key (course-v1:ORG+COURSE+RUN)",
        "line 7: mode: required",
    ]


def test_catalog_check_is_optional_and_a_byte_order_mark_is_ignored():
    rows = parse_mapping_csv("\ufeff" + HEADER + "anything,course-v1:A+B+C,verified,,,\n", known_resources=None)
    assert rows[0].mapping.resource == "anything"


def test_export_then_import_is_the_identity():
    mappings = [
        CourseMapping("course:H02ENB", "course-v1:A+B+C", "verified", False, 1782777600123, "deactivate"),
        CourseMapping("course:H01ENB", "course-v1:HypnoElp+H01ENB+2024", "professional"),
    ]
    text = format_mapping_csv(mappings)
    assert text.splitlines() == [
        "resource,course_run_id,mode,active,expires_at,on_revoke",
        "course:H01ENB,course-v1:HypnoElp+H01ENB+2024,professional,true,,audit",
        "course:H02ENB,course-v1:A+B+C,verified,false,2026-06-30T00:00:00.123Z,deactivate",
    ]
    assert sorted(
        (r.mapping for r in parse_mapping_csv(text, known_resources=KNOWN)), key=lambda m: m.resource
    ) == sorted(mappings, key=lambda m: m.resource)
