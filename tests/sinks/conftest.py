"""Fixtures for the course sink: a fake Open edX LMS over HTTP, settings and a runtime using
it, the course mapping imported, and helpers to reconcile and drain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config.settings import Settings
from engine.ports import Cause
from engine.reconcile import ReconcileOutcome
from services.clock import wall_clock_ms
from services.course_mappings import import_course_mappings
from services.outbox import DrainResult, drain_outbox
from services.wiring import Wiring, wiring_for
from simulators.openedx_lms import LmsServer, LmsState
from tests.support import reconcile_now

COURSE = "course-v1:HypnoElp+H01ENB+2024"
CLIENT_ID, CLIENT_SECRET = "engine-sink", "s3cret"
API_KEY = "edx-api-key"
REQUEST = Cause("request")
LEARNERS = ("alice", "bob", "carol")


@pytest.fixture
def lms() -> Iterator[LmsServer]:
    state = LmsState()
    state.add_client(CLIENT_ID, CLIENT_SECRET, service_user="engine_worker", staff=True)
    state.add_course(COURSE)
    for username in LEARNERS:
        state.add_user(username)
    server = LmsServer(state).start()
    yield server
    server.stop()


@pytest.fixture
def lms_settings(settings: Settings, lms: LmsServer) -> Settings:
    return settings.with_(openedx_lms_url=lms.url, openedx_client_id=CLIENT_ID, openedx_client_secret=CLIENT_SECRET)


@pytest.fixture
def lms_runtime(lms_settings: Settings) -> Iterator[Wiring]:
    rt = wiring_for(lms_settings)
    yield rt
    rt.close()


@pytest.fixture
def lms_runtime_for(settings: Settings, lms: LmsServer) -> Iterator[Callable[..., Wiring]]:
    """Runtimes on the fake LMS with the credentials asked for: OAuth2 (``jwt``) and/or the
    LMS's API key (``api_key``); other settings as keyword arguments."""
    made: list[Wiring] = []

    def make(*, jwt: bool = True, api_key: bool = False, **changes: object) -> Wiring:
        if api_key:
            lms.state.api_key = API_KEY
        sink_settings: dict[str, object] = {
            "openedx_lms_url": lms.url,
            "openedx_client_id": CLIENT_ID if jwt else "",
            "openedx_client_secret": CLIENT_SECRET if jwt else "",
            "openedx_api_key": API_KEY if api_key else "",
        }
        rt = wiring_for(settings.with_(**(sink_settings | changes)))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def mapping_csv(
    mode: str = "professional",
    on_revoke: str = "audit",
    *,
    active: bool = True,
    expires_at: str = "",
    course: str = COURSE,
) -> str:
    return (
        "resource,course_run_id,mode,active,expires_at,on_revoke\n"
        f"course:H01ENB,{course},{mode},{'true' if active else 'false'},{expires_at},{on_revoke}\n"
    )


def map_course(rt: Wiring, **kwargs: Any) -> None:
    import_course_mappings(
        rt.session_factory,
        mapping_csv(**kwargs),
        known_resources=None,
        replace=True,
        now_ms=wall_clock_ms(),
    )


def sync(rt: Wiring, app_user_id: str, *, cause: Cause = REQUEST) -> ReconcileOutcome:
    """Reconcile one user from the provider (the simulator) now."""
    return reconcile_now(rt, app_user_id, cause=cause)


def drain(rt: Wiring, *, clock: Callable[[], int] = wall_clock_ms, customer_id: str | None = None) -> DrainResult:
    assert rt.course_sink is not None
    return drain_outbox(
        rt.session_factory,
        rt.course_sink,
        clock_ms=clock,
        customer_id=customer_id,
        jitter=lambda: 0.0,
        metrics=rt.metrics,
    )


def one_time_tx(simulator, app_user_id: str, product: str = "h01enb") -> str:
    body = simulator.state.subscriber(app_user_id)[1]
    return body["subscriber"]["non_subscriptions"][product][-1]["store_transaction_id"]
