"""Accepting a webhook: its raw body stored and committed, then its ``inbox.process`` task
published, before the intake answers 200 (web/intake.py).

One ``WebhookIntake`` per process holds everything the path keeps between webhooks: the engine
it stores with (the process's Wiring.intake_db), the publisher (Celery's producer pool, which
Celery rebuilds in a forked child) and, where requests are served concurrently by greenlets,
the group committer that stores the webhooks arriving together with one statement and enqueues
them in one message. The committer is made on the first webhook and its writer
starts there, so in the process that serves: nothing of it crosses a fork.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from adapters.task_publisher import TaskPublisher
from persistence.inbox import Stored, store_webhook
from services.group_commit import GroupCommitter, StoreTimeout

log = logging.getLogger(__name__)


class IntakeUnavailable(Exception):
    """The webhook could not be stored (or whether it was is unknown): answer so that the
    sender retries. A retry of a webhook that was stored is a duplicate, answered 200."""


class WebhookIntake:
    """Store, then enqueue. ``grouped()`` says, on the first webhook, whether this process
    serves requests concurrently on greenlets (then webhooks are stored in groups, ``settle``
    being the writer's wait under load); it is asked once."""

    def __init__(
        self,
        db: Engine,
        publisher: TaskPublisher,
        *,
        grouped: Callable[[], bool] = lambda: False,
        settle: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self._grouped = grouped
        self._settle = settle

    @cached_property
    def committer(self) -> GroupCommitter | None:
        """This process's group committer, or None: under sync workers there is never a second
        webhook in the process to group with, and with real threads the handoffs cost more than
        the grouping saves (bench/intake.py); SQLite takes one writer at a time anyway."""
        if self.db.dialect.name != "postgresql" or not self._grouped():
            return None
        return GroupCommitter(self.db, self.publisher.publish_group, settle=self._settle)

    def accept(self, body: bytes, event_id: str, event_type: str) -> Stored:
        """Store a well-formed webhook and commit, then publish its task when it is new and to
        be processed. A broker that cannot take the task leaves the row for the redrive: the
        webhook is accepted all the same."""
        committer = self.committer
        try:
            if committer is not None:  # stored, committed and published with those beside it
                return committer.store(body, event_id, event_type)
            stored = store_webhook(self.db, body, event_id, event_type)
        except (SQLAlchemyError, StoreTimeout) as exc:
            raise IntakeUnavailable(f"webhook {event_id} not stored") from exc
        if stored.enqueue and stored.inbox_id is not None:
            try:
                self.publisher.publish(stored.inbox_id)
            except Exception:
                log.warning("broker unavailable; inbox row %s waits for redrive", stored.inbox_id, exc_info=True)
        return stored

    def keep_malformed(self, body: bytes, reason: str) -> Stored:
        """Keep an authenticated webhook that cannot be read, for inspection (never enqueued)."""
        try:
            return store_webhook(self.db, body, None, None, malformed_reason=reason)
        except SQLAlchemyError as exc:
            raise IntakeUnavailable("malformed webhook not kept") from exc
