"""Migration 0007 creates exactly the discovery table the model describes (both dialects), and
one pass is open at a time however many runs race to open one."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from persistence.database import make_engine
from persistence.discovery import PassProgress, claim_pass, record_page, release_pass
from persistence.models import Base
from services.wiring import Wiring

START = 1_700_000_000_000


def _names(diff) -> set[str]:
    entries = diff if isinstance(diff, list) else [diff]
    found = set()
    for entry in entries:
        for part in entry[1:]:
            for candidate in (part, getattr(part, "table", None)):
                name = getattr(candidate, "name", None)
                if isinstance(name, str):
                    found.add(name)
            if isinstance(part, str):
                found.add(part)
    return found


def test_the_discovery_model_matches_the_migrated_schema(base_settings):
    engine = make_engine(base_settings)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            diffs = [d for d in compare_metadata(context, Base.metadata) if "discovery_passes" in _names(d)]
    finally:
        engine.dispose()
    assert diffs == []


def test_one_pass_is_open_at_a_time_and_its_cursor_moves_page_by_page(runtime: Wiring):
    factory = runtime.session_factory
    first = claim_pass(factory, now_ms=START, lease_ms=1000, next_start_ms=lambda s, f: f)
    assert first is not None and first.cursor is None
    # Another run: the pass is held; once the lease runs out it takes the same pass.
    assert claim_pass(factory, now_ms=START + 999, lease_ms=1000, next_start_ms=lambda s, f: f) is None
    again = claim_pass(factory, now_ms=START + 1000, lease_ms=1000, next_start_ms=lambda s, f: f)
    assert again is not None and again.id == first.id
    record_page(factory, first.id, cursor="c-2", progress=_progress(), now_ms=START + 1001, lease_until_ms=START + 9000)
    release_pass(factory, first.id, now_ms=START + 1002)
    resumed = claim_pass(factory, now_ms=START + 1003, lease_ms=1000, next_start_ms=lambda s, f: f)
    assert resumed is not None and (resumed.id, resumed.cursor, resumed.pages) == (first.id, "c-2", 1)
    record_page(factory, first.id, cursor=None, progress=_progress(), now_ms=START + 2000, lease_until_ms=START + 9000)
    # Finished: the next pass opens when the rule says so, and it starts from the first page.
    assert claim_pass(factory, now_ms=START + 2000, lease_ms=1000, next_start_ms=lambda s, f: f + 1) is None
    nxt = claim_pass(factory, now_ms=START + 2001, lease_ms=1000, next_start_ms=lambda s, f: f + 1)
    assert nxt is not None and nxt.id != first.id and nxt.cursor is None and nxt.pages == 0


def _progress() -> PassProgress:
    return PassProgress(pages=1, customers=2)
