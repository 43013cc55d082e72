"""Console pages at scale: server time of every page with 1,000,000 inbox rows and 100,000 learners.

    .venv/bin/python -m bench.console [--inbox 1000000] [--learners 100000] [--runs 30]

Seeds a private schema of PostgreSQL (DATABASE_URL, default the local ``test`` database; dropped
at the end unless ``--keep``) with server-side ``generate_series`` inserts: learners with a
transaction, a grant and an identity each; webhooks spread over 30 days (statuses and types in
realistic shares, each naming one learner, each with the audit row of what it caused); drift
repairs; LMS outbox rows; operator actions. Then signs in to the console through the Flask test
client (no network, no browser: server time only) and times each page, printing p50 and p95.
Self-contained on purpose: it shares nothing with the other benchmarks.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text
from werkzeug.security import generate_password_hash

from config.settings import Settings
from persistence.database import upgrade_database

BUDGET_MS = 200.0
DAY_MS = 86_400_000
SPAN_DAYS = 30  # default spread of the webhooks (--days)
PASSWORD = "bench-password-0123"

# (status, share of webhooks) and (event type, share): cumulative thresholds over N % 10000.
STATUSES = [
    ("processed", 9500),
    ("ignored", 9700),
    ("dead", 9750),
    ("degraded", 9800),
    ("retrying", 9820),
    ("malformed", 9840),
    ("received", 9850),
    ("processed", 10000),
]
TYPES = [
    ("RENEWAL", 6000),
    ("INITIAL_PURCHASE", 8000),
    ("CANCELLATION", 9000),
    ("EXPIRATION", 9700),
    ("NON_RENEWING_PURCHASE", 9950),
    ("TRANSFER", 9980),
    ("BILLING_ISSUE", 10000),
]
DRIFT_KINDS = ["missed_grant", "missed_revocation", "wrong_expiry", "wrong_mode", "lms_missing"]


def _case(column: str, table: list[tuple[str, int]], modulo: str) -> str:
    arms = " ".join(f"WHEN {modulo} < {limit} THEN '{value}'" for value, limit in table)
    return f"(CASE {arms} END)"


def seed(engine, *, inbox: int, learners: int, days: int, now_ms: int, log: Callable[[str], None]) -> None:
    span = days * DAY_MS
    statements = [
        (
            "learners",
            f"""INSERT INTO subscribers (customer_id, last_snapshot_ms, snapshot_digest, dirty, next_check_ms,
                    last_checked_ms, read_failures, created_at)
                SELECT 'learner-' || lpad(n::text, 7, '0'), {now_ms} - n * 1000, md5(n::text), n % 500 = 0,
                       {now_ms} + (n % 86400) * 1000, {now_ms} - (n % 86400) * 1000, 0, now()
                FROM generate_series(1::bigint, {learners}) n""",
        ),
        (
            "identities",
            f"""INSERT INTO identities (app_user_id, customer_id)
                SELECT 'learner-' || lpad(n::text, 7, '0'), 'learner-' || lpad(n::text, 7, '0') FROM generate_series(1::bigint, {learners}) n""",
        ),
        (
            "ledger",
            f"""INSERT INTO ledger_transactions (transaction_id, product_id, kind, original_transaction_id, store,
                    is_sandbox, purchased_ms, period_type, ownership, expires_ms, owner, observed)
                SELECT 'tx-' || n, 'premium_monthly', 'subscription', 'tx-' || n, 'app_store', false,
                       {now_ms} - (n % 30) * {DAY_MS}, 'NORMAL', 'PURCHASED', {now_ms} + (n % 30) * {DAY_MS},
                       'learner-' || lpad(n::text, 7, '0'), '{{}}'
                FROM generate_series(1::bigint, {learners}) n""",
        ),
        (
            "grants",
            f"""INSERT INTO grants (customer_id, resource, mode, expires_ms, sources, updated_ms)
                SELECT 'learner-' || lpad(n::text, 7, '0'), 'module:algebra', 'full', {now_ms} + (n % 30) * {DAY_MS},
                       '["tx-' || n || '"]', {now_ms}
                FROM generate_series(1::bigint, {learners}) n""",
        ),
        (
            "webhooks",
            f"""INSERT INTO inbox_events (provider, event_id, event_type, status, attempts, last_error, body,
                    received_at, processed_at, replays)
                SELECT 'revenuecat', 'evt-' || n, {_case("t", TYPES, "(n * 7919) % 10000")},
                       {_case("s", STATUSES, "n % 10000")}, 1,
                       CASE WHEN n % 10000 BETWEEN 9700 AND 9849 THEN 'TerminalError: provider refused GET /v1/subscribers/x: 400' END,
                       convert_to('{{"api_version":"1.0","event":{{"id":"evt-' || n || '","app_user_id":"learner-' || lpad((n % {learners} + 1)::text, 7, '0') || '","product_id":"premium_monthly","store":"APP_STORE"}}}}', 'UTF8'),
                       to_timestamp(({now_ms} - {span} + n::bigint * {span} / {inbox}) / 1000.0),
                       to_timestamp(({now_ms} - {span} + n::bigint * {span} / {inbox} + 900) / 1000.0), 0
                FROM generate_series(1::bigint, {inbox}) n""",
        ),
        (
            "webhook users",
            f"""INSERT INTO inbox_event_users (inbox_id, app_user_id)
                SELECT id, 'learner-' || lpad((substring(event_id from 5)::bigint % {learners} + 1)::text, 7, '0')
                FROM inbox_events""",
        ),
        (
            "audit (what webhooks caused)",
            """INSERT INTO audit_log (at_ms, customer_id, resource, action, before, after, cause_kind, cause_ref)
                SELECT (extract(epoch from received_at) * 1000)::bigint + 400 + (id % 3000), au.app_user_id,
                       'module:algebra', CASE WHEN event_type = 'INITIAL_PURCHASE' THEN 'grant' ELSE 'extend' END,
                       NULL, '{"mode": "full", "expires_ms": null, "sources": []}', 'event', event_type || ':' || event_id
                FROM inbox_events JOIN inbox_event_users au ON au.inbox_id = inbox_events.id
                WHERE status = 'processed' AND event_type IN ('INITIAL_PURCHASE', 'RENEWAL')""",
        ),
        (
            "audit (drift)",
            f"""INSERT INTO audit_log (at_ms, customer_id, resource, action, before, after, cause_kind, cause_ref, drift_kind)
                SELECT {now_ms} - (n::bigint * {span} / 20000), 'learner-' || lpad((n % {learners} + 1)::text, 7, '0'),
                       'module:algebra', 'grant', NULL, '{{"mode": "full", "expires_ms": null, "sources": []}}', 'sweep', 'sweep',
                       (ARRAY{DRIFT_KINDS!r})[1 + n % {len(DRIFT_KINDS)}]
                FROM generate_series(1::bigint, 20000) n""",
        ),
        (
            "LMS outbox",
            f"""INSERT INTO sink_outbox (sink, customer_id, resource, course_run_id, mode, is_active, status, attempts,
                    next_attempt_ms, cause_kind, cause_ref, username, last_error, created_ms, done_ms)
                SELECT 'course', 'learner-' || lpad((n % {learners} + 1)::text, 7, '0'), 'course:C' || (n % 20),
                       'course-v1:Org+C' || (n % 20) || '+2024', 'professional', true,
                       CASE WHEN n % 1000 = 0 THEN 'failed' WHEN n % 997 = 0 THEN 'pending' ELSE 'done' END, 1,
                       {now_ms}, 'event', 'RENEWAL:evt-' || n, 'learner', NULL, {now_ms} - n * 10000, {now_ms} - n * 10000 + 500
                FROM generate_series(1::bigint, 200000) n""",
        ),
        (
            "course mappings",
            f"""INSERT INTO course_mappings (resource, course_run_id, mode, active, on_revoke, expiry_enqueued, updated_ms)
                SELECT 'course:C' || n, 'course-v1:Org+C' || n || '+2024', 'professional', true, 'audit', false, {now_ms}
                FROM generate_series(0, 19) n""",
        ),
        (
            "operator actions",
            f"""INSERT INTO operator_actions (at_ms, actor, action, target, detail)
                SELECT {now_ms} - n * 60000, 'console:ada', 'inbox.replay', n::text, '{{"replayed": 1}}' FROM generate_series(1::bigint, 5000) n""",
        ),
        (
            "unknown products",
            f"""INSERT INTO unknown_products (product_id, first_seen_ms, last_seen_ms, last_customer_id, sightings)
                SELECT 'legacy_' || n, {now_ms} - {DAY_MS}, {now_ms} - n * 1000, 'learner-0000001', n FROM generate_series(1::bigint, 5) n""",
        ),
    ]
    with engine.begin() as conn:
        for what, sql in statements:
            started = time.perf_counter()
            conn.execute(text(sql))
            log(f"  seeded {what} in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    log(f"  VACUUM ANALYZE in {time.perf_counter() - started:.1f} s")


def time_pages(
    client, pages: list[tuple[str, str]], runs: int, *, forget: Callable[[], None]
) -> list[tuple[str, str, float, float, float]]:
    """p50, p95 and max of each page; a name ending in "cold" is timed with the overview's kept
    hourly counts forgotten before each request (its first load after they lapse)."""
    results = []
    for name, path in pages:
        for _ in range(2):  # warm: templates compiled, statements prepared
            assert client.get(path).status_code == 200, path
        samples = []
        for _ in range(runs):
            if name.endswith("cold"):
                forget()
            started = time.perf_counter()
            response = client.get(path)
            if response.is_streamed:
                response.get_data()
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        samples.sort()
        p95 = samples[max(0, int(len(samples) * 0.95 + 0.5) - 1)]
        results.append((name, path, statistics.median(samples), p95, samples[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inbox", type=int, default=1_000_000)
    parser.add_argument("--learners", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--days", type=int, default=SPAN_DAYS, help="the webhooks arrived over this many days")
    parser.add_argument("--keep", action="store_true", help="keep the seeded schema (printed)")
    parser.add_argument("--schema", help="time the pages of a schema seeded before (with --keep), seeding nothing")
    args = parser.parse_args()
    base_url = os.environ.get("DATABASE_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    if not base_url.startswith("postgresql"):
        raise SystemExit("bench.console seeds PostgreSQL: set DATABASE_URL=postgresql+psycopg://...")
    schema = args.schema or f"bench_console_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base_url)
    if not args.schema:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    users = f"ada:admin:{generate_password_hash(PASSWORD, method='pbkdf2:sha256:1000')}"
    settings = Settings.from_env().with_(
        database_url=url, console_users=users, console_secret_key="bench-console-secret-0123456789abcdef"
    )
    try:
        engine = create_engine(url)
        if not args.schema:
            upgrade_database(settings)
            print(f"seeding {args.inbox:,} webhooks over {args.days} days and {args.learners:,} learners into {schema}")
            seed(
                engine,
                inbox=args.inbox,
                learners=args.learners,
                days=args.days,
                now_ms=int(time.time() * 1000),
                log=print,
            )
        with engine.connect() as conn:
            dead_id = int(conn.execute(text("SELECT max(id) FROM inbox_events WHERE status = 'dead'")).scalar_one())
            middle = int(conn.execute(text("SELECT max(id) / 2 FROM inbox_events")).scalar_one())
        engine.dispose()
        report(settings, args.runs, dead_id=dead_id, middle_id=middle, learners=args.learners)
    finally:
        if not (args.keep or args.schema):
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def report(settings: Settings, runs: int, *, dead_id: int, middle_id: int, learners: int) -> None:
    from web.app import create_app

    app = create_app(settings)
    client = app.test_client()
    page = client.get("/console/login").get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the sign-in page"
    token = match.group(1)
    client.post("/console/login", data={"username": "ada", "password": PASSWORD, "csrf_token": token})
    learner = f"learner-{learners // 2:07d}"
    pages = [
        ("overview 1h", "/console/?window=1h"),
        ("overview 24h", "/console/?window=24h"),
        ("overview 7d", "/console/?window=7d"),
        ("overview 24h, cold", "/console/?window=24h"),
        ("overview 7d, cold", "/console/?window=7d"),
        ("inbox", "/console/inbox"),
        ("inbox, an older page", f"/console/inbox?before={middle_id}"),
        ("inbox status=dead", "/console/inbox?status=dead"),
        ("inbox status=retrying", "/console/inbox?status=retrying"),
        ("inbox type=TRANSFER", "/console/inbox?type=TRANSFER"),
        ("inbox user=<learner>", f"/console/inbox?user={learner}"),
        ("inbox within=24h", "/console/inbox?within=24h"),
        ("inbox dead, 7d, a type", "/console/inbox?status=dead&within=7d&type=RENEWAL"),
        ("one webhook", f"/console/inbox/{dead_id}"),
        ("learners", "/console/learners"),
        ("learners from a prefix", "/console/learners?q=learner-005"),
        ("one learner", f"/console/learners/{learner}"),
        ("drift 24h", "/console/drift?window=24h"),
        ("drift 7d, one kind", "/console/drift?window=7d&kind=missed_grant"),
        ("course mappings", "/console/mappings"),
        ("LMS outbox", "/console/outbox"),
        ("LMS outbox status=failed", "/console/outbox?status=failed"),
        ("activity", "/console/activity"),
    ]
    try:
        redis = app.extensions["engine_wiring"].redis

        def forget() -> None:
            kept = redis.keys("console:inbox-hour:*")
            if kept:
                redis.delete(*kept)

        results = time_pages(client, pages, runs, forget=forget)
    finally:
        app.extensions["engine_wiring"].close()
    print(f"\nserver time per page over {runs} requests (Flask test client; budget {BUDGET_MS:.0f} ms)")
    print(f"{'page':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    over = 0
    for name, _path, p50, p95, worst in results:
        flag = "  OVER" if p95 > BUDGET_MS else ""
        over += bool(flag)
        print(f"{name:<28} {p50:>8.1f} {p95:>8.1f} {worst:>8.1f}{flag}")
    print(f"\n{len(results) - over} of {len(results)} pages within {BUDGET_MS:.0f} ms at p95")


if __name__ == "__main__":
    main()
