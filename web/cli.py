"""Operator commands (``flask --app web.app:create_app <command>``).

Every command runs inside web/cli_boundary.py: a bad input or a broken configuration is one
line and exit status 2 with nothing written; a failed dependency one line and status 1.
"""

from __future__ import annotations

import json
from dataclasses import replace

import click
from flask import Flask, current_app
from sqlalchemy import select

from adapters.revenuecat_v2 import CustomerNotFound
from engine.course_mapping_csv import MappingCsvError, decode_mapping_file
from engine.ports import Cause
from engine.reconcile import Reading
from persistence.audit import drift_examples, drift_report
from persistence.course_mappings import lms_username, set_lms_username
from persistence.database import upgrade_database
from persistence.models import Identity, Subscriber
from persistence.subscribers import all_customer_ids, count_customers, peek_due, select_due
from services.clock import wall_clock_ms
from services.course_mappings import export_course_mappings, import_course_mappings
from services.sweep import reconcile_customers
from web.api import iso_ms
from web.cli_boundary import OperatorInputError, checked_app_user_id, operator_command

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 100 * 365 * 86400  # a window further back than the engine's life is a typo


def parse_duration_s(text: str) -> int:
    """'90s', '15m', '24h', '7d' -> seconds (at most a hundred years)."""
    text = text.strip().lower()
    if text[-1:] in DURATION_UNITS and text[:-1].isdigit():
        seconds = int(text[:-1]) * DURATION_UNITS[text[-1]]
    elif text.isdigit():
        seconds = int(text)
    else:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 24h or 7d")
    if seconds > MAX_DURATION_S:
        raise click.BadParameter(f"{text!r} is more than a hundred years")
    return seconds


def known_customer(factory, app_user_id: str) -> str | None:
    """The customer id the engine knows ``app_user_id`` by, or None if it never saw it."""
    with factory() as session:
        return session.scalar(select(Identity.customer_id).where(Identity.app_user_id == app_user_id)) or (
            session.scalar(select(Subscriber.customer_id).where(Subscriber.customer_id == app_user_id))
        )


def _describe(action) -> str:
    def side(access) -> str:
        if access is None:
            return "-"

        return f"{access.mode} until {iso_ms(access.expires_ms) or 'forever'}"

    return f"{action.kind:<11} {action.resource:<28} {side(action.before)} -> {side(action.after)}"


def _unknown_note(lookup_by: str, purchases: bool) -> str:
    """What reconcile-user says of an id the engine had never seen."""
    listed = "" if purchases else "; the provider lists no purchase for it"
    if lookup_by == "v2":
        return f"unknown to the engine until now; found at the provider with REST API v2 (nothing created){listed}"
    return (
        "unknown to the engine until now; read with v1's GET /subscribers, which creates a customer at RevenueCat "
        f"for an id it does not know, so one exists there now even if there was none before{listed}"
    )


def register(app: Flask) -> None:
    @operator_command(app.cli, "migrate", needs_catalog=False)
    @click.option("--revision", default="head", show_default=True)
    def migrate(revision: str) -> None:
        """Apply the database migrations."""
        upgrade_database(current_app.config["ENGINE_SETTINGS"], revision)
        click.echo(f"database at {revision}")

    @operator_command(app.cli, "reconcile-user")
    @click.argument("app_user_id")
    @click.option(
        "--lookup",
        is_flag=True,
        help="read the provider even for an id the engine never saw; RevenueCat's v1 GET /subscribers "
        "creates the customer there if it does not exist, and the engine then checks it like any other "
        "(needed with v1 only: with REST API v2 configured, an unknown id is looked up without this flag and "
        "nothing is created)",
    )
    def reconcile_one(app_user_id: str, lookup: bool) -> None:
        """Re-read one user from the provider and converge their access now.

        A user the engine never saw (no webhook, sync or import named it) is looked up with REST API
        v2 when it is configured, which creates nothing: an id the provider does not know is said to
        be unknown and nothing is written. Without v2, only with --lookup (v1 creates the customer).
        """
        checked_app_user_id(app_user_id)
        rt = current_app.extensions["engine_wiring"]
        known = known_customer(rt.session_factory, app_user_id) is not None
        lookup_by = None if known else ("v2" if rt.provider_v2 is not None else "v1")
        if lookup_by == "v2":
            pacer = rt.budgeted_provider("sync", max_wait_s=60)
            try:
                read = rt.provider_v2.paced(pacer).read_history(app_user_id, look_up=True)
            except CustomerNotFound:
                raise OperatorInputError(
                    f"{app_user_id!r} is unknown to the provider: RevenueCat has no customer with this id "
                    "(looked up with REST API v2, which creates none; nothing was written)"
                ) from None
            reading = Reading.from_history(app_user_id, read)
        else:
            if lookup_by == "v1" and not lookup:
                raise OperatorInputError(
                    f"{app_user_id!r} is not a user the engine knows (no webhook, sync or import named it); "
                    "check the id, or pass --lookup to read it from the provider (REST API v2 is not configured, "
                    "and v1's GET /subscribers creates the customer at RevenueCat)"
                )
            body = rt.budgeted_provider("sync", max_wait_s=60).get_subscriber(app_user_id)
            reading = Reading.from_provider(app_user_id, body)
        outcome = rt.convergence.reconcile(reading, Cause("operator", "cli"))
        answer: dict[str, object] = {
            "customer_id": outcome.customer_id,
            "changes": [{"action": a.kind, "resource": a.resource} for a in outcome.actions],
            "unknown_products": list(outcome.unknown_products),
        }
        if lookup_by is not None:
            purchases = bool(reading.snapshot and reading.snapshot.observations)
            answer.update(known_to_engine=False, looked_up_with=lookup_by, note=_unknown_note(lookup_by, purchases))
        click.echo(json.dumps(answer, indent=2))

    @operator_command(app.cli, "reconcile-all")
    @click.option(
        "--chunk", default=100, show_default=True, type=click.IntRange(1, 10_000), help="customers per database page"
    )
    def reconcile_all(chunk: int) -> None:
        """Re-read every known customer from the provider (within the budget) and converge."""

        rt = current_app.extensions["engine_wiring"]
        operator_reads = replace(rt.sweep_reads, provider=rt.budgeted_provider("sweep", max_wait_s=120))
        total = count_customers(rt.session_factory)
        summary = {"reconciled": 0, "changed": 0, "failed": 0}
        drift: dict[str, int] = {}
        after = ""
        with click.progressbar(length=total, label="reconciling", show_pos=True) as bar:
            while True:
                ids = all_customer_ids(rt.session_factory, after=after, limit=chunk)
                if not ids:
                    break
                result = reconcile_customers(ids, operator_reads, cause_kind="operator")
                for key in summary:
                    summary[key] += getattr(result, key)
                for kind, n in (result.drift or {}).items():
                    drift[kind] = drift.get(kind, 0) + n
                bar.update(len(ids))
                after = ids[-1]
        click.echo(
            f"{summary['reconciled']} reconciled, {summary['changed']} changed, {summary['failed']} failed; "
            f"drift repaired: {', '.join(f'{k}={v}' for k, v in sorted(drift.items())) or 'none'}"
        )

    @operator_command(app.cli, "drift-report")
    @click.option("--since", "since", default="24h", show_default=True, help="window start, as a duration ago")
    @click.option("--until", "until", default="0s", show_default=True, help="window end, as a duration ago")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    def drift_report_command(since: str, until: str, as_json: bool) -> None:
        """Drift the sweep found and repaired in a time window, by kind, with recent examples."""

        rt = current_app.extensions["engine_wiring"]
        now = wall_clock_ms()
        since_ms, until_ms = now - parse_duration_s(since) * 1000, now - parse_duration_s(until) * 1000
        rows = drift_report(rt.session_factory, since_ms=since_ms, until_ms=until_ms)
        examples = drift_examples(rt.session_factory, since_ms=since_ms, until_ms=until_ms)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "since_ms": since_ms,
                        "until_ms": until_ms,
                        "kinds": [
                            {"drift_kind": r.drift_kind, "repairs": r.repairs, "customers": r.customers} for r in rows
                        ],
                        "examples": [
                            {
                                "at_ms": e.at_ms,
                                "customer_id": e.customer_id,
                                "resource": e.resource,
                                "action": e.action,
                                "drift_kind": e.drift_kind,
                            }
                            for e in examples
                        ],
                    },
                    indent=2,
                )
            )
            return
        click.echo(f"drift repaired between {since} ago and {until} ago")
        if not rows:
            click.echo("  none")
        for r in rows:
            click.echo(f"  {r.drift_kind:<20} {r.repairs:>6} repairs  {r.customers:>6} customers")
        for e in examples:
            click.echo(f"  e.g. {e.customer_id} {e.resource}: {e.action} ({e.drift_kind})")

    @operator_command(app.cli, "sweep")
    @click.option("--dry-run", is_flag=True, help="show what the sweep would change, change nothing")
    @click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
    def sweep_command(dry_run: bool, limit: int) -> None:
        """Run one sweep now: the customers due for a check (dry run: report only)."""

        rt = current_app.extensions["engine_wiring"]
        now = wall_clock_ms()
        if not dry_run:
            ids = select_due(rt.session_factory, now_ms=now, limit=limit, lease_ms=15 * 60 * 1000)
            result = reconcile_customers(ids, rt.sweep_reads)
            click.echo(f"{result.reconciled} reconciled, {result.changed} changed; drift: {result.drift or 'none'}")
            return
        ids = peek_due(rt.session_factory, now_ms=now, limit=limit)
        provider = rt.budgeted_provider("sweep", max_wait_s=60)
        would_change = 0
        dry_run_convergence = rt.convergence.dry_run()
        for customer_id in ids:
            reading = Reading.from_provider(customer_id, provider.get_subscriber(customer_id))
            outcome = dry_run_convergence.reconcile(reading, Cause("sweep"))
            for action in outcome.actions:
                would_change += 1
                click.echo(f"{customer_id}: {_describe(action)} [{action.drift_kind}]")
        click.echo(f"dry run: {len(ids)} customers due, {would_change} changes would be made (none were)")

    @app.cli.group("course-mappings")
    def course_mappings() -> None:
        """Which Open edX course run and paid mode each granted resource maps to (CSV)."""

    @operator_command(course_mappings, "import")
    @click.argument("csv_file", type=click.File("rb"))
    @click.option("--replace", is_flag=True, help="delete mappings the file does not list")
    @click.option("--dry-run", is_flag=True, help="validate and report, write nothing")
    def import_mappings(csv_file, replace: bool, dry_run: bool) -> None:
        """Validate every row, then import all of them in one transaction (or none)."""

        rt = current_app.extensions["engine_wiring"]
        known = {g.resource for product in rt.catalog.products.values() for g in product.grants}
        try:
            result = import_course_mappings(
                rt.session_factory,
                decode_mapping_file(csv_file.read()),
                known_resources=known,
                replace=replace,
                now_ms=wall_clock_ms(),
                dry_run=dry_run,
            )
        except MappingCsvError as exc:
            for problem in exc.problems:
                click.echo(f"{csv_file.name}: {problem}", err=True)
            raise OperatorInputError(f"{len(exc.problems)} problem(s): nothing imported") from None
        prefix = "dry run: would import" if dry_run else "imported"
        click.echo(
            f"{prefix}: {len(result.created)} created, {len(result.updated)} updated, "
            f"{len(result.deleted)} deleted, {result.unchanged} unchanged; "
            f"{result.enqueued} LMS change(s) for existing holders"
        )

    @operator_command(course_mappings, "export")
    @click.argument("csv_file", type=click.File("w", encoding="utf-8", lazy=True), default="-")
    def export_mappings(csv_file) -> None:
        """Write every mapping as CSV (to stdout by default); importing it back changes nothing.
        No cell can be evaluated as a formula by a spreadsheet (see engine/course_mapping_csv.py)."""

        try:
            text = export_course_mappings(current_app.extensions["engine_wiring"].session_factory)
        except ValueError as exc:
            raise OperatorInputError(f"cannot export: {exc}") from None
        csv_file.write(text)  # opened only now: a failed export leaves the file as it was

    @operator_command(app.cli, "lms-username", needs_catalog=False)
    @click.argument("app_user_id")
    @click.argument("username", required=False)
    @click.option("--clear", is_flag=True, help="forget the mapping: the username is the app_user_id again")
    def lms_username_command(app_user_id: str, username: str | None, clear: bool) -> None:
        """Show or set the LMS username of an app_user_id (by default they are equal)."""

        checked_app_user_id(app_user_id)
        if username is not None:
            checked_app_user_id(username, "username")
        rt = current_app.extensions["engine_wiring"]
        with rt.session_factory() as session, session.begin():
            if username or clear:
                set_lms_username(session, app_user_id, None if clear else username)
            customer_id = (
                session.scalar(select(Identity.customer_id).where(Identity.app_user_id == app_user_id)) or app_user_id
            )
            click.echo(f"{app_user_id}: LMS username {lms_username(session, customer_id)!r}")
