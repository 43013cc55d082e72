"""Operator commands for customers: ``customers import`` (an operator's own list of app_user_ids)."""

from __future__ import annotations

import getpass
from typing import BinaryIO

import click
from flask import current_app
from flask.cli import AppGroup

from engine.customer_ids import read_id_lines
from services.clock import wall_clock_ms
from services.discovery import import_customers
from web.cli_boundary import OperatorInputError, operator_command

customers_cli = AppGroup("customers", help="Customers the engine knows: register an operator's own list.")

MAX_PROBLEMS_SHOWN = 50  # lines listed one by one; the count says how many more


@operator_command(customers_cli, "import", needs_catalog=False)
@click.argument("id_file", type=click.File("rb"), default="-")
@click.option("--skip-invalid", is_flag=True, help="import the valid ids and list the lines skipped")
@click.option("--actor", default=None, help="who asks (recorded in the operator audit log); default: the OS user")
def import_command(id_file: BinaryIO, skip_invalid: bool, actor: str | None) -> None:
    """Register app_user_ids, one per line, from ID_FILE or stdin ('-'), all due for a check now.

    Blank lines and lines starting with '#' are skipped; surrounding blanks are trimmed. A line that
    cannot be an id (over 255 characters, control characters such as NUL, not UTF-8, a lone
    surrogate) is reported with its number and nothing is imported, unless --skip-invalid.
    """
    name = str(getattr(id_file, "name", "-"))
    name = "stdin" if name in ("-", "<stdin>") else name
    listed = read_id_lines(id_file.read())
    for problem in listed.problems[:MAX_PROBLEMS_SHOWN]:
        click.echo(f"{name}: {problem}", err=True)
    if len(listed.problems) > MAX_PROBLEMS_SHOWN:
        click.echo(f"{name}: … and {len(listed.problems) - MAX_PROBLEMS_SHOWN} more invalid lines", err=True)
    if listed.problems and not skip_invalid:
        raise OperatorInputError(
            f"{len(listed.problems)} invalid line(s) in {name}: nothing imported (fix them, or pass --skip-invalid)"
        )
    if not listed.ids:
        raise OperatorInputError(f"{name} lists no id: nothing imported")
    skipped = [p.line for p in listed.problems]
    result = import_customers(
        current_app.extensions["engine_wiring"].session_factory,
        list(listed.ids),
        actor=actor or f"cli:{getpass.getuser()}",
        source=name,
        detail={
            "duplicates": listed.duplicates,
            "skipped_lines": skipped[:MAX_PROBLEMS_SHOWN],
            "skipped": len(skipped),
        },
        now_ms=wall_clock_ms(),
    )
    click.echo(
        f"imported {len(listed.ids)} id(s): {result.new} new, {result.known} already known; all due for a check now"
        + (f"; {listed.duplicates} duplicate line(s) ignored" if listed.duplicates else "")
    )
    if skipped:
        click.echo(f"skipped {len(skipped)} invalid line(s): {', '.join(map(str, skipped[:20]))}", err=True)
