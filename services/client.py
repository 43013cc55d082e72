"""Client requests served inline: purchase validation, user sync (restore) and reading access.

The service layer between the web blueprints (web/purchases.py, web/sync.py, web/api.py) and
the pure decisions (engine/client_flows.py). Provider calls draw on the shared rate budget at
``sync`` priority (before the sweep) and happen outside any database transaction; the reconcile
itself is engine.reconcile.reconcile_user, as for webhooks and the sweep.

A restore moves purchases between users: the provider's answer for the restoring user lists
transactions that the ledger still gives to someone else. After reconciling the restoring user,
every previous owner of a transaction that now belongs to them is reconciled too, so access is
revoked there without waiting for the TRANSFER webhook (which may be lost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, func, literal, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine.access import Access
from engine.client_flows import (
    Refusal,
    Validated,
    ValidationRequest,
    client_status_refusal,
    grants_purchase,
    moved_from,
    not_granted_refusal,
    purchase_observation,
    receipt_body,
    receipt_refusal,
)
from engine.errors import TerminalError, TransientError
from engine.facts import SubscriberSnapshot
from engine.plan import Action
from engine.ports import Cause
from engine.reconcile import reconcile_user
from engine.revenuecat import parse_subscriber
from persistence.ledger_store import grant_to_access
from persistence.models import Grant, Identity, LedgerTransaction, Subscriber
from persistence.unit_of_work import unit_of_work

log = logging.getLogger(__name__)

# A client request waits this long for a slot of the provider budget, then answers 503.
CLIENT_BUDGET_WAIT_S = 3.0
# Repeated syncs of one user within this window reuse the last answer (shared by processes).
SYNC_REUSE_S = 5.0
# How long a sync holds its per-user lock at most (provider timeouts plus budget wait).
SYNC_LOCK_S = 30.0


@dataclass(frozen=True)
class AccessView:
    """What ``GET /v1/users/<id>/access`` shows: the customer's active grants at ``now_ms``."""

    customer_id: str
    accesses: tuple[Access, ...]
    now_ms: int

    @property
    def next_expiry_ms(self) -> int | None:
        return min((a.expires_ms for a in self.accesses if a.expires_ms is not None), default=None)


def current_access(factory: sessionmaker[Session], app_user_id: str, now_ms: int) -> AccessView:
    """The active grants of the customer ``app_user_id`` belongs to (itself when unknown).

    One round trip: long-polls read this on every wake-up.
    """
    known = select(Identity.customer_id).where(Identity.app_user_id == app_user_id).scalar_subquery()
    customer = select(func.coalesce(known, literal(app_user_id, String())).label("customer_id")).subquery()
    stmt = (
        select(customer.c.customer_id, Grant)
        .select_from(customer)
        .outerjoin(
            Grant,
            and_(
                Grant.customer_id == customer.c.customer_id, or_(Grant.expires_ms.is_(None), Grant.expires_ms > now_ms)
            ),
        )
        .order_by(Grant.resource)
    )
    with factory() as session:
        rows = session.execute(stmt).all()
    customer_id = rows[0][0] if rows else app_user_id
    return AccessView(customer_id, tuple(grant_to_access(grant) for _, grant in rows if grant is not None), now_ms)


@dataclass(frozen=True)
class SyncResult:
    customer_id: str
    actions: tuple[Action, ...]
    previous_owners: tuple[str, ...]  # customers a restore moved purchases away from (reconciled too)
    snapshot: SubscriberSnapshot


class _Prefetched:
    """A SubscriberSource answering with a body already fetched (the receipt's answer)."""

    def __init__(self, app_user_id: str, body: Mapping[str, Any]):
        self.app_user_id, self.body = app_user_id, body

    def get_subscriber(self, app_user_id: str) -> Mapping[str, Any]:
        assert app_user_id == self.app_user_id
        return self.body


def _ledger_owners(factory: sessionmaker[Session], transaction_ids: Sequence[str]) -> dict[str, str | None]:
    if not transaction_ids:
        return {}
    with factory() as session:
        rows = session.execute(
            select(LedgerTransaction.transaction_id, LedgerTransaction.owner).where(
                LedgerTransaction.transaction_id.in_(list(transaction_ids))
            )
        ).all()
    return dict(rows)


def mark_dirty(factory: sessionmaker[Session], app_user_id: str, now_ms: int) -> None:
    """A refused or failed sync: the sweep reads this customer first (design.md, priority 1)."""
    with unit_of_work(factory)() as store:
        customer_id = store.customer_for(app_user_id) or app_user_id
        store.lock_customer(customer_id)
        store.session.execute(
            update(Subscriber).where(Subscriber.customer_id == customer_id).values(dirty=True, next_check_ms=now_ms)
        )


def reconcile_from_body(
    runtime: Any,  # services.wiring.Runtime (import cycle)
    app_user_id: str,
    body: Mapping[str, Any],
    *,
    provider: Any,
    cause: Cause,
    clock_ms: Callable[[], int],
) -> SyncResult:
    """Reconcile ``app_user_id`` from a subscriber body already fetched, then every previous
    owner of a transaction the body moved to them. A previous owner that cannot be read now is
    marked dirty for the sweep; the restoring user's answer does not wait for it."""
    snapshot = parse_subscriber(body)
    tx_ids = [o.transaction_id for o in snapshot.observations]
    factory = runtime.session_factory
    before = _ledger_owners(factory, tx_ids)
    outcome = reconcile_user(
        app_user_id,
        provider=_Prefetched(app_user_id, body),
        unit_of_work=unit_of_work(factory),
        catalog=runtime.catalog,
        now_ms=clock_ms(),
        cause=cause,
        policy=runtime.policy,
    )
    previous = moved_from(before, _ledger_owners(factory, tx_ids), outcome.customer_id)
    for owner in previous:
        try:
            reconcile_user(
                owner,
                provider=provider,
                unit_of_work=unit_of_work(factory),
                catalog=runtime.catalog,
                now_ms=clock_ms(),
                cause=Cause("request", f"restored-by:{outcome.customer_id}"[:255]),
                policy=runtime.policy,
            )
        except (TransientError, TerminalError) as exc:
            log.warning("previous owner %s of a restored purchase left for the sweep: %s", owner, exc)
            mark_dirty(factory, owner, clock_ms())
    return SyncResult(outcome.customer_id, outcome.actions, tuple(previous), snapshot)


def sync_user(runtime: Any, app_user_id: str, *, clock_ms: Callable[[], int]) -> SyncResult:
    """Re-read ``app_user_id`` from the provider now (sync / restore) and converge.

    TransientError (budget exhausted, provider down) leaves the customer dirty, so the sweep
    reads it first; TerminalError when the provider refuses the id.
    """
    provider = runtime.budgeted_provider("sync", max_wait_s=CLIENT_BUDGET_WAIT_S)
    try:
        body = provider.get_subscriber(app_user_id)
    except TransientError:
        mark_dirty(runtime.session_factory, app_user_id, clock_ms())
        raise
    return reconcile_from_body(
        runtime, app_user_id, body, provider=provider, cause=Cause("request", "sync"), clock_ms=clock_ms
    )


def validate_purchase(runtime: Any, req: ValidationRequest, *, clock_ms: Callable[[], int]) -> Validated | Refusal:
    """``POST /v1/purchases/validate``: Validated once access is granted, else why not.

    Raises TransientError (budget, provider or a reconcile that could not finish: retryable)
    and TerminalError (the provider's answer cannot be read). Refusals are answers, not exceptions.
    """
    refusal = client_status_refusal(req)
    if refusal is not None:
        return refusal
    provider = runtime.budgeted_provider("sync", max_wait_s=CLIENT_BUDGET_WAIT_S)
    try:
        body = provider.post_receipt(req.platform, receipt_body(req))
    except TerminalError as exc:
        return receipt_refusal(exc.status, str(exc))
    if not isinstance(body.get("subscriber"), dict):  # not the documented Subscriber answer
        body = provider.get_subscriber(req.app_user_id)
    cause = Cause("request", f"validate:{req.platform}:{req.purchase_id}"[:255])
    result = reconcile_from_body(runtime, req.app_user_id, body, provider=provider, cause=cause, clock_ms=clock_ms)
    now_ms = clock_ms()
    granted = current_access(runtime.session_factory, req.app_user_id, now_ms).accesses
    obs = purchase_observation(result.snapshot, req, runtime.catalog)
    if obs is not None and grants_purchase(granted, req.product, obs.transaction_id, now_ms):
        return Validated(req, obs, granted)
    return not_granted_refusal(obs, grant_sandbox=runtime.policy.grant_sandbox)


class SyncBusy(TransientError):
    """Another sync of the same user is running and has not answered yet."""


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class SyncLimiter:
    """Per-user limit of syncs, in Redis so every web process shares it.

    A sync's answer is kept for ``reuse_s``: calls within that window get it back instead of
    another provider read. Concurrent calls for one user run one sync; the others wait for it.
    """

    def __init__(self, client: Any, *, reuse_s: float = SYNC_REUSE_S, lock_s: float = SYNC_LOCK_S):
        self.client, self.reuse_ms, self.lock_ms = client, int(reuse_s * 1000), int(lock_s * 1000)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _key(app_user_id: str) -> str:
        return "sync:" + hashlib.sha256(app_user_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]

    def last(self, app_user_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self._key(app_user_id) + ":answer")
        return json.loads(raw) if raw else None

    def run(
        self, app_user_id: str, sync: Callable[[], dict[str, Any]], *, wait_s: float
    ) -> tuple[dict[str, Any], bool]:
        """(answer, reused): the last answer when recent, else ``sync()``'s, kept for the window."""
        key = self._key(app_user_id)
        cached = self.last(app_user_id)
        if cached is not None:
            return cached, True
        token = uuid.uuid4().hex
        if self.client.set(key + ":lock", token, nx=True, px=self.lock_ms):
            try:
                answer = sync()
                self.client.set(key + ":answer", json.dumps(answer), px=self.reuse_ms)
                return answer, False
            finally:
                self._release(keys=[key + ":lock"], args=[token])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
            cached = self.last(app_user_id)
            if cached is not None:
                return cached, True
            if not self.client.exists(key + ":lock"):  # the other sync failed: try ourselves
                return self.run(app_user_id, sync, wait_s=max(0.0, deadline - time.monotonic()))
        raise SyncBusy("a sync of this user is already running", retry_after_s=1.0)
