"""Discovery passes as stored: the one open pass, claimed by one run at a time, its cursor moved
page by page (a restart resumes from it), and the passes before it.

A run claims the open pass with a lease (an atomic UPDATE ... WHERE the lease ran out), so two
runs never list the same pages at once, and a crashed run's lease simply runs out. A new pass is
opened only when none is open (a unique index admits one open pass: two runs racing to open one
both see a single pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from persistence.models import DiscoveryPass

MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class PassState:
    """A pass as a run sees it when it claims it."""

    id: int
    started_ms: int
    cursor: str | None
    pages: int
    customers: int
    new_customers: int


@dataclass(frozen=True)
class PassProgress:
    """What one page (or the end of a run) adds to a pass."""

    pages: int = 0
    customers: int = 0
    new_customers: int = 0
    repaired: int = 0
    failed: int = 0


def _state(row: DiscoveryPass) -> PassState:
    return PassState(row.id, row.started_ms, row.cursor, row.pages, row.customers, row.new_customers)


def claim_pass(
    factory: sessionmaker[Session],
    *,
    now_ms: int,
    lease_ms: int,
    next_start_ms: Callable[[int, int], int],
) -> PassState | None:
    """The open pass, leased to the caller until ``now_ms + lease_ms``; a new pass opened when
    none is and the last one's ``next_start_ms(started_ms, finished_ms)`` has come. None when
    another run holds the open pass or the next pass is not due yet."""
    with factory() as session:
        open_id = session.scalar(select(DiscoveryPass.id).where(DiscoveryPass.open.is_(True)))
        last = session.execute(
            select(DiscoveryPass.started_ms, DiscoveryPass.finished_ms)
            .where(DiscoveryPass.finished_ms.is_not(None))
            .order_by(DiscoveryPass.id.desc())
            .limit(1)
        ).one_or_none()
    if open_id is None:
        if last is not None and now_ms < next_start_ms(int(last.started_ms), int(last.finished_ms)):
            return None
        opened = _open_pass(factory, now_ms=now_ms, lease_until_ms=now_ms + lease_ms)
        if opened is not None:
            return opened
    # Opened by another run meanwhile, or open already: claim it if its lease ran out.
    with factory() as session, session.begin():
        claimed = session.execute(
            update(DiscoveryPass)
            .where(
                DiscoveryPass.open.is_(True),
                (DiscoveryPass.leased_until_ms.is_(None)) | (DiscoveryPass.leased_until_ms <= now_ms),
            )
            .values(leased_until_ms=now_ms + lease_ms, updated_ms=now_ms)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = session.scalars(select(DiscoveryPass).where(DiscoveryPass.open.is_(True))).one()
        return _state(row)


def _open_pass(factory: sessionmaker[Session], *, now_ms: int, lease_until_ms: int) -> PassState | None:
    try:
        with factory() as session, session.begin():
            row = DiscoveryPass(open=True, started_ms=now_ms, leased_until_ms=lease_until_ms, updated_ms=now_ms)
            session.add(row)
            session.flush()
            return _state(row)
    except IntegrityError:  # another run opened one first
        return None


def record_page(
    factory: sessionmaker[Session],
    pass_id: int,
    *,
    cursor: str | None,
    progress: PassProgress,
    now_ms: int,
    lease_until_ms: int,
) -> None:
    """A page is done: the pass resumes after ``cursor``; None finishes the pass."""
    with factory() as session, session.begin():
        row = session.get(DiscoveryPass, pass_id, with_for_update=True)
        if row is None:
            return
        _add(row, progress)
        row.cursor = cursor
        row.updated_ms = now_ms
        row.last_error = None
        if cursor is None:
            row.open, row.finished_ms, row.leased_until_ms = None, now_ms, None
        else:
            row.leased_until_ms = lease_until_ms


def release_pass(
    factory: sessionmaker[Session],
    pass_id: int,
    *,
    now_ms: int,
    progress: PassProgress = PassProgress(),
    error: str | None = None,
    finish: bool = False,
) -> None:
    """The run ends: the lease is given back (the cursor stays where the last page left it),
    with what it found since its last page, why it stopped early, and whether the pass ends."""
    with factory() as session, session.begin():
        row = session.get(DiscoveryPass, pass_id, with_for_update=True)
        if row is None:
            return
        _add(row, progress)
        row.leased_until_ms = None
        row.updated_ms = now_ms
        if error is not None:
            row.last_error = error[:MAX_ERROR_CHARS]
        if finish and row.open:
            row.open, row.finished_ms = None, now_ms


def _add(row: DiscoveryPass, progress: PassProgress) -> None:
    row.pages += progress.pages
    row.customers += progress.customers
    row.new_customers += progress.new_customers
    row.repaired += progress.repaired
    row.failed += progress.failed


def recent_passes(factory: sessionmaker[Session], *, limit: int = 10) -> list[DiscoveryPass]:
    """The latest passes, newest first (the open one, if any, among them)."""
    with factory() as session:
        return list(session.scalars(select(DiscoveryPass).order_by(DiscoveryPass.id.desc()).limit(limit)))
