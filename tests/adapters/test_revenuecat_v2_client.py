"""The REST v2 client over HTTP against the simulator: paginated typed reads, a customer v2 does
not know, transport errors mapped to the engine's, the pacer called around every request, and
the paced budget against a provider enforcing the same rate: zero 429s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.rate_budget import BudgetedProvider, RateBudget
from adapters.revenuecat_v2 import CustomerNotFound, RevenueCatV2Client
from engine.errors import TerminalError, TransientError
from engine.revenuecat_v2 import parse_customer_history
from simulators.revenuecat import ProviderState, SimulatorServer
from simulators.revenuecat.records import DAY_MS

V1_KEY, V2_KEY, PROJECT = "sk_v1_client", "sk_v2_client_secret", "proj_client"


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(ProviderState(), api_key=V1_KEY, v2_api_key=V2_KEY, project_id=PROJECT) as server:
        yield server


@pytest.fixture
def client(sim) -> Iterator[RevenueCatV2Client]:
    v2 = RevenueCatV2Client(sim.url, V2_KEY, PROJECT, page_size=2)  # small pages: every list paginates
    yield v2
    v2.close()


class RecordingPacer:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def before_request(self) -> None:
        self.calls.append(("before",))

    def after_response(self, usage, limit) -> None:
        self.calls.append(("after", usage, limit))

    def throttled(self, retry_after_s) -> None:
        self.calls.append(("throttled", retry_after_s))


def test_a_history_read_holds_every_period_and_purchase(sim, client):
    state, now = sim.state, sim.state.now_ms()
    state.purchase_subscription("$RCAnonymousID:ab", "premium_monthly", store="app_store", now_ms=now)
    for k in (1, 2, 3):
        state.renew("$RCAnonymousID:ab", "premium_monthly", now_ms=now + 30 * k * DAY_MS)
    state.purchase_subscription("$RCAnonymousID:ab", "premium_yearly", store="stripe", now_ms=now)
    state.grant_promotional("$RCAnonymousID:ab", "pro", duration_ms=DAY_MS, now_ms=now)
    state.purchase_non_renewing("$RCAnonymousID:ab", "h01enb", now_ms=now)
    gone = state.purchase_non_renewing("$RCAnonymousID:ab", "geometry_pack_30", now_ms=now)["event"]["transaction_id"]
    state.refund("$RCAnonymousID:ab", gone, now_ms=now + DAY_MS)
    state.alias("$RCAnonymousID:ab", "ana")
    pacer = RecordingPacer()
    read = client.paced(pacer).read_history("ana", look_up=True)  # an alias: looked up first
    assert read.customer_id == "$RCAnonymousID:ab"
    assert abs(read.request_ms - state.now_ms()) < 5_000  # the provider's clock (its Date header)
    assert len(read.subscriptions) == 3 and len(read.purchases) == 2
    [app_store] = [s for s in read.subscriptions if s["store"] == "app_store"]
    assert len(read.transactions[app_store["id"]]) == 4 and len(read.transactions) == 1
    assert {a["id"] for a in read.aliases or []} == {"$RCAnonymousID:ab", "ana"}
    assert set(read.product_store_ids.values()) >= {"premium_monthly", "premium_yearly", "h01enb", "geometry_pack_30"}
    sent = sum(client.requests.values())
    assert [c[0] for c in pacer.calls].count("before") == sent == sim.state.request_count
    assert ("after", None, None) not in pacer.calls and all(c[2] == 480 or c[2] == 60 for c in pacer.calls[1::2])
    history = parse_customer_history(read)
    assert history.identities["ana"] == "$RCAnonymousID:ab"


def test_a_pass_over_the_customer_list_resumes_from_its_cursor(sim, client):
    ids = [f"$RCAnonymousID:{k:03x}" for k in range(7)]
    for app_user_id in ids:
        sim.state.purchase_non_renewing(app_user_id, "h01enb")
    seen, cursor = [], None
    while True:
        page = client.list_customers(starting_after=cursor)
        seen += [c["id"] for c in page.customers]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor  # what a discovery pass keeps in the database
    assert seen == ids and client.requests["customers"] == 4


def test_an_unknown_customer_is_unknown_and_nothing_is_created(sim, client):
    with pytest.raises(CustomerNotFound) as raised:
        client.get_customer("never-seen")
    assert raised.value.status == 404
    with pytest.raises(CustomerNotFound):
        client.read_history("never-seen", look_up=True)
    assert sim.state.stats()["customers"] == 0


@pytest.mark.parametrize(("status", "retry_after_s"), [(423, 0.25), (429, 2.0), (500, None), (503, 1.5)])
def test_retryable_answers_are_transient_with_the_providers_backoff(sim, client, status, retry_after_s):
    sim.state.fail_next(1, status=status, retry_after_s=retry_after_s)
    pacer = RecordingPacer()
    with pytest.raises(TransientError) as raised:
        client.paced(pacer).list_customers()
    assert raised.value.status == status
    assert raised.value.retry_after_s == (retry_after_s if retry_after_s is not None else 1.0)  # backoff_ms
    assert (("throttled", retry_after_s) in pacer.calls) is (status == 429)  # only a 429 pauses the budget


def test_refusals_are_terminal_and_never_carry_the_key_or_the_body(sim):
    wrong = RevenueCatV2Client(sim.url, V1_KEY, PROJECT)  # a v1 key: v2 refuses it
    with pytest.raises(TerminalError) as raised:
        wrong.list_customers()
    assert raised.value.status == 401 and "authentication_error" in str(raised.value)
    assert V1_KEY not in str(raised.value) and "Invalid API key" not in str(raised.value)
    assert V2_KEY not in repr(RevenueCatV2Client(sim.url, V2_KEY, PROJECT))
    wrong.close()


def test_an_unreachable_provider_is_transient(sim):
    sim.stop()
    gone = RevenueCatV2Client(sim.url, V2_KEY, PROJECT, connect_timeout_s=0.5)
    with pytest.raises(TransientError):
        gone.list_customers()
    gone.close()


def test_paced_reads_against_a_provider_enforcing_the_same_rate_draw_no_429(sim, client, redis_client):
    # The simulator enforces 480/min as a token bucket; the engine's budget is 480/min.
    for k in range(12):
        sim.state.purchase_subscription(f"u{k}", "premium_monthly", store="play_store")
    sim.limits.enforce("customer_information", 480)
    budget = RateBudget(redis_client, 480, name="v2-burst")
    paced = client.paced(BudgetedProvider(None, budget, "sweep", max_wait_s=30))
    histories = [paced.read_history(f"u{k}", with_aliases=False) for k in range(12)]  # a burst of reads
    refused = sim.limits.stats()["refused"]
    assert refused == {} and all(len(h.subscriptions) == 1 for h in histories)
    assert client.requests["subscriptions"] + client.requests["transactions"] + client.requests["purchases"] == 36
