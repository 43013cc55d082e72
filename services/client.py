"""Client requests served inline: purchase validation, user sync (restore) and reading access.

The service layer between the web blueprints (web/purchases.py, web/sync.py, web/api.py) and
the pure decisions (engine/client_flows.py). Provider calls draw on the shared rate budget at
``sync`` priority (before the sweep) and happen outside any database transaction; the reconcile
itself is engine.reconcile.reconcile (through Convergence), as for webhooks and the sweep.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from adapters.rate_budget import BudgetedProvider
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
from engine.reconcile import Reading
from persistence.grants import active_grants
from persistence.ledger_store import ledger_owners
from persistence.subscribers import mark_dirty
from services.convergence import Convergence
from services.history import HistoryReads

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
    One round trip: long-polls read this on every wake-up."""
    customer_id, accesses = active_grants(factory, app_user_id, now_ms)
    return AccessView(customer_id, tuple(accesses), now_ms)


@dataclass(frozen=True)
class SyncResult:
    customer_id: str
    actions: tuple[Action, ...]
    previous_owners: tuple[str, ...]  # customers a restore moved purchases away from (reconciled too)
    snapshot: SubscriberSnapshot


@dataclass(frozen=True)
class ClientFlows:
    """What the client routes need (built once per web process)."""

    convergence: Convergence
    provider: BudgetedProvider  # at sync priority, waiting CLIENT_BUDGET_WAIT_S at most
    # After the v1 read: the customer's v2 history where the latest period is not enough.
    history: HistoryReads | None = None

    @property
    def session_factory(self) -> sessionmaker[Session]:
        return self.convergence.session_factory


def reconcile_from_body(flows: ClientFlows, app_user_id: str, body: Mapping[str, Any], *, cause: Cause) -> SyncResult:
    """Reconcile ``app_user_id`` from a subscriber body already fetched, then every previous
    owner of a transaction the body moved to them. A previous owner that cannot be read now is
    marked dirty for the sweep; the restoring user's answer does not wait for it."""
    reading = Reading.from_provider(app_user_id, body)
    assert reading.snapshot is not None
    tx_ids = [o.transaction_id for o in reading.snapshot.observations]
    factory = flows.session_factory
    before = ledger_owners(factory, tx_ids)
    outcome = flows.convergence.reconcile(reading, cause)
    actions = outcome.actions
    if flows.history is not None:
        followed = flows.history.after_v1(reading, cause).outcome
        if followed is not None:
            actions += followed.actions
    previous = moved_from(before, ledger_owners(factory, tx_ids), outcome.customer_id)
    restored_by = Cause("request", f"restored-by:{outcome.customer_id}"[:255])
    for owner in previous:
        try:
            owner_body = flows.provider.get_subscriber(owner)
            flows.convergence.reconcile(Reading.from_provider(owner, owner_body), restored_by)
        except (TransientError, TerminalError) as exc:
            log.warning("previous owner %s of a restored purchase left for the sweep: %s", owner, exc)
            mark_dirty(factory, owner, now_ms=flows.convergence.clock_ms())
    return SyncResult(outcome.customer_id, actions, tuple(previous), reading.snapshot)


def sync_user(flows: ClientFlows, app_user_id: str) -> SyncResult:
    """Re-read ``app_user_id`` from the provider now (sync / restore) and converge.

    TransientError (budget exhausted, provider down) leaves the customer dirty, so the sweep
    reads it first; TerminalError when the provider refuses the id.
    """
    try:
        body = flows.provider.get_subscriber(app_user_id)
    except TransientError:
        mark_dirty(flows.session_factory, app_user_id, now_ms=flows.convergence.clock_ms())
        raise
    return reconcile_from_body(flows, app_user_id, body, cause=Cause("request", "sync"))


def validate_purchase(flows: ClientFlows, req: ValidationRequest) -> Validated | Refusal:
    """``POST /v1/purchases/validate``: Validated once access is granted, else why not.

    Raises TransientError (budget, provider or a reconcile that could not finish: retryable)
    and TerminalError (the provider's answer cannot be read). Refusals are answers, not exceptions.
    """
    catalog = flows.convergence.catalog
    refusal = client_status_refusal(req)
    if refusal is not None:
        return refusal
    try:
        body = flows.provider.post_receipt(req.platform, receipt_body(req))
    except TerminalError as exc:
        return receipt_refusal(exc.status, str(exc))
    if not isinstance(body.get("subscriber"), dict):  # not the documented Subscriber answer
        body = flows.provider.get_subscriber(req.app_user_id)
    cause = Cause("request", f"validate:{req.platform}:{req.purchase_id}"[:255])
    result = reconcile_from_body(flows, req.app_user_id, body, cause=cause)
    now_ms = flows.convergence.clock_ms()
    granted = current_access(flows.session_factory, req.app_user_id, now_ms).accesses
    obs = purchase_observation(result.snapshot, req, catalog)
    if obs is not None and grants_purchase(granted, req.product, obs.transaction_id, now_ms):
        return Validated(req, obs, granted)
    return not_granted_refusal(obs, grant_sandbox=flows.convergence.policy.grant_sandbox)


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
