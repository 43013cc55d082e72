"""What the group commit's tests share: webhook bodies, a publisher that holds the writer, and
webhooks stored from threads of their own (the web runs the same code on greenlets:
tests/client/test_gevent_server.py)."""

from __future__ import annotations

import json
import threading
import time

from sqlalchemy import select

from persistence.inbox import Stored
from persistence.models import InboxEvent
from services.group_commit import GroupCommitter
from services.wiring import Wiring


def body(event_id: str, event_type: str = "INITIAL_PURCHASE") -> bytes:
    return json.dumps(
        {"api_version": "1.0", "event": {"id": event_id, "type": event_type, "app_user_id": "alice"}}
    ).encode()


class Publisher:
    """Records what the committer publishes; holds the first publish until released."""

    def __init__(self, fail: bool = False):
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, ids: list[int]) -> None:
        self.calls.append(list(ids))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail:
            raise ConnectionError("broker down")


def store_all(committer: GroupCommitter, webhooks: list[tuple[str, str]]) -> dict[int, Stored | BaseException]:
    """Store each webhook from its own thread; answers by position."""
    answers: dict[int, Stored | BaseException] = {}

    def one(i: int, event_id: str, event_type: str) -> None:
        try:
            answers[i] = committer.store(body(event_id, event_type), event_id, event_type)
        except BaseException as exc:
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i, e, t)) for i, (e, t) in enumerate(webhooks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    return answers


def held_then(
    committer: GroupCommitter, publisher: Publisher, webhooks: list[tuple[str, str]]
) -> tuple[Stored, dict[int, Stored | BaseException]]:
    """A first webhook holds the writer in its publish; ``webhooks`` queue meanwhile and go
    together in the next batch once it is released. Returns the first answer and theirs."""
    first: dict[str, Stored] = {}
    t = threading.Thread(
        target=lambda: first.setdefault("a", committer.store(body("first"), "first", "INITIAL_PURCHASE"))
    )
    t.start()
    assert publisher.entered.wait(10)
    done: dict[int, Stored | BaseException] = {}
    runner = threading.Thread(target=lambda: done.update(store_all(committer, webhooks)))
    runner.start()
    deadline = time.monotonic() + 10
    while committer.queued < len(webhooks) and time.monotonic() < deadline:
        time.sleep(0.005)
    publisher.release.set()
    t.join(10)
    runner.join(15)
    return first["a"], done


def rows(runtime: Wiring) -> dict[str | None, InboxEvent]:
    with runtime.session_factory() as session:
        return {r.event_id: r for r in session.scalars(select(InboxEvent))}
