"""Operators import and export the course mapping as CSV through the CLI."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from persistence.models import CourseMappingRow, SinkOutboxRow
from tests.sinks.conftest import COURSE, sync

HEADER = "resource,course_run_id,mode,active,expires_at,on_revoke\n"


@pytest.fixture
def cli(lms_settings, lms_runtime):
    from web.app import create_app

    return create_app(lms_settings).test_cli_runner()


def stored(rt) -> list[tuple]:
    with rt.session_factory() as session:
        return [
            (r.resource, r.course_run_id, r.mode, r.active, r.expires_ms, r.on_revoke)
            for r in session.scalars(select(CourseMappingRow).order_by(CourseMappingRow.resource))
        ]


def test_import_then_export_round_trips(cli, lms_runtime, tmp_path):
    path = tmp_path / "courses.csv"
    path.write_text(HEADER + f"course:H01ENB,{COURSE},professional,true,2030-01-01T00:00:00Z,deactivate\n")
    result = cli.invoke(args=["course-mappings", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 created, 0 updated, 0 deleted, 0 unchanged" in result.output
    assert stored(lms_runtime) == [("course:H01ENB", COURSE, "professional", True, 1893456000000, "deactivate")]
    exported = cli.invoke(args=["course-mappings", "export"]).output
    assert exported == HEADER + f"course:H01ENB,{COURSE},professional,true,2030-01-01T00:00:00Z,deactivate\n"
    out = tmp_path / "out.csv"
    assert cli.invoke(args=["course-mappings", "export", str(out)]).exit_code == 0
    path.write_text(out.read_text())
    assert (
        "0 created, 0 updated, 0 deleted, 1 unchanged"
        in cli.invoke(args=["course-mappings", "import", str(path)]).output
    )


def test_every_error_with_its_line_and_nothing_half_imported(cli, lms_runtime, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + f"course:H01ENB,{COURSE},professional,,,\n")
    cli.invoke(args=["course-mappings", "import", str(good)])
    before = stored(lms_runtime)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER
        + f"course:H01ENB,{COURSE},verified,,,\n"  # line 2: valid (would update)
        + "module:algebra,course-v1:A+B+C,audit,,,\n"  # line 3: free mode
        + "course:NOPE,course-v1:A+B+D,verified,,,\n"  # line 4: not in the catalog
        + "course:H01ENB,course-v1:A+B+E,verified,,,\n"  # line 5: mapped twice
    )
    result = cli.invoke(args=["course-mappings", "import", str(bad)])
    assert result.exit_code == 2  # the operator's input: nothing written
    lines = [line for line in result.output.splitlines() if line.startswith(str(bad))]
    assert [line.split(": ", 1)[1].split(":")[0] for line in lines] == ["line 3", "line 4", "line 5"]
    assert (
        "mode 'audit' is free" in lines[0]
        and "not granted by any product" in lines[1]
        and "already mapped on line 2" in lines[2]
    )
    assert "3 problem(s): nothing imported" in result.output
    assert stored(lms_runtime) == before  # line 2 was valid, and still not imported


def test_replace_deletes_unlisted_rows_and_dry_run_writes_nothing(cli, lms_runtime, tmp_path):
    two = tmp_path / "two.csv"
    two.write_text(HEADER + f"course:H01ENB,{COURSE},professional,,,\nmodule:algebra,course-v1:A+B+C,verified,,,\n")
    assert cli.invoke(args=["course-mappings", "import", str(two)]).exit_code == 0
    one = tmp_path / "one.csv"
    one.write_text(HEADER + "module:algebra,course-v1:A+B+C,verified,,,\n")
    dry = cli.invoke(args=["course-mappings", "import", "--replace", "--dry-run", str(one)])
    assert "dry run: would import: 0 created, 0 updated, 1 deleted" in dry.output
    assert len(stored(lms_runtime)) == 2
    assert cli.invoke(args=["course-mappings", "import", "--replace", str(one)]).exit_code == 0
    assert [r[0] for r in stored(lms_runtime)] == ["module:algebra"]


def test_a_course_run_kept_from_before_cannot_be_mapped_twice(cli, tmp_path):
    first = tmp_path / "first.csv"
    first.write_text(HEADER + f"course:H01ENB,{COURSE},professional,,,\n")
    cli.invoke(args=["course-mappings", "import", str(first)])
    second = tmp_path / "second.csv"
    second.write_text(HEADER + f"module:algebra,{COURSE},verified,,,\n")
    result = cli.invoke(args=["course-mappings", "import", str(second)])
    assert result.exit_code == 2 and "line 2: course_run_id" in result.output and "use --replace" in result.output


def test_importing_a_mapping_enqueues_existing_holders(cli, lms_runtime, simulator, tmp_path):
    simulator.state.purchase_non_renewing("bob", "h01enb")
    sync(lms_runtime, "bob")
    path = tmp_path / "courses.csv"
    path.write_text(HEADER + f"course:H01ENB,{COURSE},professional,,,\n")
    assert "1 LMS change(s) for existing holders" in cli.invoke(args=["course-mappings", "import", str(path)]).output
    with lms_runtime.session_factory() as session:
        assert session.scalar(select(SinkOutboxRow.cause_ref)) == "csv-import"


def test_lms_username_command(cli, lms_runtime):
    assert cli.invoke(args=["lms-username", "bob"]).output.strip() == "bob: LMS username 'bob'"
    assert cli.invoke(args=["lms-username", "bob", "b.smith"]).output.strip() == "bob: LMS username 'b.smith'"
    assert cli.invoke(args=["lms-username", "bob", "--clear"]).output.strip() == "bob: LMS username 'bob'"
