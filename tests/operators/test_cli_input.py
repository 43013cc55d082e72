"""The operator CLI never answers bad input with a traceback: one line, exit status 2, nothing
written. Unknown users are not quietly created and polled."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from persistence.models import CourseMappingRow, Identity, LmsUser, Subscriber
from persistence.unit_of_work import unit_of_work

HEADER = "resource,course_run_id,mode,active,expires_at,on_revoke\n"
COURSE = "course-v1:HypnoElp+H01ENB+2024"


@pytest.fixture
def cli(app):
    return app.test_cli_runner()


def count(runtime, model) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def assert_one_line_refusal(result, *phrases: str) -> None:
    """Exit status 2 and one line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def mapping_file(tmp_path, row: str, name: str = "courses.csv"):
    path = tmp_path / name
    path.write_text(HEADER + row + "\n")
    return path


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize(
    ("row", "phrase"),
    [
        # 9999-12-31 at -14:00 is in the year 10000 in UTC: it imported, then no export could run
        (f"course:H01ENB,{COURSE},professional,true,9999-12-31T23:59:59-14:00,audit", "outside 1970-01-01 to 9999"),
        (f"course:H01ENB,course-v1:Org+{'C' * 300}+Run,professional,,,", "course_run_id: 318 characters, at most 255"),
        (f"{'r' * 300},{COURSE},professional,,,", "resource: 300 characters, at most 255"),
    ],
)
def test_rows_the_database_cannot_hold_are_refused_before_any_write(cli, runtime, tmp_path, row, phrase, dry_run):
    result = cli.invoke(args=["course-mappings", "import", *dry_run, str(mapping_file(tmp_path, row))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert phrase in result.stderr and "nothing imported" in result.stderr
    assert count(runtime, CourseMappingRow) == 0
    export = cli.invoke(args=["course-mappings", "export"])
    assert export.exit_code == 0 and export.stdout == HEADER


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ((HEADER + f"course:H01ENB,{COURSE},professional,,,\n").encode("utf-16"), "UTF-16"),
        ((HEADER + f"course:H01ENB,{COURSE},professional,,,\n").encode("utf-16-le"), "UTF-16"),
        (
            HEADER.encode() + b"course:H01ENB,course-v1:Org+Caf\xe9+Run,professional,,,\n",
            "line 2: byte 0xe9 is not UTF-8",
        ),
        (b"\xff\xfe\xfd", "UTF-16"),
    ],
)
def test_files_that_are_not_utf8_are_refused_in_one_line(cli, runtime, tmp_path, content, phrase):
    path = tmp_path / "courses.csv"
    path.write_bytes(content)
    result = cli.invoke(args=["course-mappings", "import", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert phrase in result.stderr and count(runtime, CourseMappingRow) == 0


def test_a_stored_expiry_no_export_can_write_is_named_and_the_file_left_alone(cli, runtime, tmp_path):
    # a row imported before the range check existed
    with runtime.session_factory() as session, session.begin():
        session.add(
            CourseMappingRow(
                resource="course:H01ENB",
                course_run_id=COURSE,
                mode="professional",
                active=True,
                expires_ms=253402300799999 + 14 * 3600 * 1000,
                on_revoke="audit",
                expiry_enqueued=False,
                updated_ms=0,
            )
        )
    out = tmp_path / "out.csv"
    out.write_text("kept")
    assert_one_line_refusal(cli.invoke(args=["course-mappings", "export", str(out)]), "course:H01ENB", "expires_at")
    assert out.read_text() == "kept"


@pytest.mark.parametrize(
    ("app_user_id", "phrase"),
    [
        ("u" * 300, "at most 255 characters"),
        ("bad\x00id", "control characters"),
        ("bad\udc80id", "not valid UTF-8"),  # an undecodable byte in argv
        ("..", "not a user the engine knows"),
        ("never-seen", "not a user the engine knows"),
    ],
)
def test_reconcile_user_refuses_ids_it_cannot_or_should_not_read(cli, runtime, simulator, app_user_id, phrase):
    before = simulator.state.request_count
    assert_one_line_refusal(cli.invoke(args=["reconcile-user", app_user_id]), phrase)
    assert count(runtime, Subscriber) == 0 and count(runtime, Identity) == 0
    assert simulator.state.request_count == before  # nothing asked of the provider either
    assert simulator.state.aliases_of(app_user_id) == []  # v1's GET would have created it there


def test_reconcile_user_reads_an_unknown_id_only_when_asked_to(cli, runtime, simulator):
    assert "creates the customer there" in cli.invoke(args=["reconcile-user", "--help"]).output
    simulator.state.purchase_non_renewing("walk-in", "h01enb")  # a buyer whose webhook never came
    result = cli.invoke(args=["reconcile-user", "--lookup", "walk-in"])
    assert result.exit_code == 0, result.output
    assert '"action": "grant"' in result.stdout
    # known from now on: no flag needed
    assert cli.invoke(args=["reconcile-user", "walk-in"]).exit_code == 0


def test_reconcile_user_of_a_known_user(cli, runtime, simulator):
    simulator.state.purchase_non_renewing("alice", "h01enb")
    with unit_of_work(runtime.session_factory)() as uow:
        uow.ledger.record_identities({"alice": "alice"})
    result = cli.invoke(args=["reconcile-user", "alice"])
    assert result.exit_code == 0 and '"customer_id": "alice"' in result.stdout


@pytest.mark.parametrize(
    "args",
    [["lms-username", "u" * 300], ["lms-username", "bob", "n" * 300], ["lms-username", "bob", "a\tb"]],
)
def test_lms_username_refuses_what_the_database_cannot_hold(cli, runtime, args):
    assert_one_line_refusal(cli.invoke(args=args))
    assert count(runtime, LmsUser) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["drift-report", "--since", "99999999999999999999d"],
        ["sweep", "--dry-run", "--limit", "99999999999999999999"],
        ["reconcile-all", "--chunk", "0"],
    ],
)
def test_numbers_out_of_range_are_usage_errors(cli, runtime, args):
    result = cli.invoke(args=args)
    assert result.exit_code == 2 and "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)


def test_a_broken_catalog_is_one_line_for_every_command(app, settings, tmp_path):
    from web.app import create_app

    broken = tmp_path / "catalog.toml"
    broken.write_text('[products.premium]\nstore_ids = ["p"]\nkind = "subscription"\ngrant = []\n')
    cli = create_app(settings.with_(catalog_path=broken)).test_cli_runner()
    for args in (["reconcile-user", "alice"], ["sweep", "--dry-run"], ["course-mappings", "export"]):
        assert_one_line_refusal(cli.invoke(args=args), "catalog", "unknown key(s) 'grant'")
