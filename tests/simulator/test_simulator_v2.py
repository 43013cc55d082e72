"""The simulator's REST API v2 over real HTTP: documented shapes (reference/revenuecat.md §4 and
the api-v2.yaml schemas it quotes), pagination, the same state as v1, auth, faults, rate limits."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from simulators.revenuecat import ProviderState, SimulatorServer
from simulators.revenuecat.records import DAY_MS

V1_KEY, V2_KEY, PROJECT = "sk_v1_test", "sk_v2_test", "proj1ab2c3d4"
# Field sets of the spec's schemas (required and optional properties).
CUSTOMER = {
    "object",
    "id",
    "project_id",
    "first_seen_at",
    "last_seen_at",
    "last_seen_app_version",
    "last_seen_country",
    "last_seen_platform",
    "last_seen_platform_version",
    "experiment",
}
SUBSCRIPTION = {
    "object",
    "id",
    "customer_id",
    "original_customer_id",
    "product_id",
    "starts_at",
    "current_period_starts_at",
    "current_period_ends_at",
    "ends_at",
    "gives_access",
    "pending_payment",
    "auto_renewal_status",
    "status",
    "total_revenue_in_usd",
    "presented_offering_id",
    "entitlements",
    "environment",
    "store",
    "store_subscription_identifier",
    "ownership",
    "pending_changes",
    "country",
    "management_url",
}
TRANSACTION = {
    "object",
    "id",
    "purchased_at",
    "product_store_identifier",
    "expiration_date",
    "effective_expiration_date",
}
PURCHASE = {
    "object",
    "id",
    "customer_id",
    "original_customer_id",
    "product_id",
    "purchased_at",
    "revenue_in_usd",
    "quantity",
    "status",
    "presented_offering_id",
    "entitlements",
    "environment",
    "store",
    "store_purchase_identifier",
    "ownership",
    "country",
}
LIST = {"object", "items", "next_page", "url"}
ERROR = {"object", "type", "message", "retryable", "doc_url"}


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(ProviderState(), api_key=V1_KEY, v2_api_key=V2_KEY, project_id=PROJECT) as server:
        yield server


@pytest.fixture
def v2(sim: SimulatorServer) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {V2_KEY}"
    yield session
    session.close()


def get(sim: SimulatorServer, session: requests.Session, path: str, **params) -> requests.Response:
    return session.get(f"{sim.url}/v2/projects/{PROJECT}{path}", params=params, timeout=5)


def test_customers_are_listed_page_by_page_once_each_in_order(sim, v2):
    ids = [f"user{k:02d}" for k in range(45)] + ["$RCAnonymousID:9f8e", "a:b$c"]
    for app_user_id in ids:
        sim.state.purchase_non_renewing(app_user_id, "h01enb")
    sim.state.alias("user03", "user03-login")  # an alias is not a second customer
    seen, cursor, pages = [], None, 0
    while True:
        response = get(sim, v2, "/customers", limit=20, **({"starting_after": cursor} if cursor else {}))
        body = response.json()
        assert response.status_code == 200 and set(body) == LIST and body["url"] == f"/v2/projects/{PROJECT}/customers"
        assert all(set(item) == CUSTOMER and item["object"] == "customer" for item in body["items"])
        seen += [item["id"] for item in body["items"]]
        pages += 1
        if body["next_page"] is None:
            break
        # The next page is a path the client may call as it is (the cursor encoded once).
        follow = v2.get(sim.url + body["next_page"], timeout=5).json()
        cursor = body["items"][-1]["id"]
        assert follow == get(sim, v2, "/customers", limit=20, starting_after=cursor).json()
    assert seen == ids and pages == 3
    unknown = get(sim, v2, "/customers", starting_after="nobody")
    assert unknown.status_code == 400 and unknown.json()["param"] == "starting_after"
    assert get(sim, v2, "/customers", limit=0).json()["type"] == "parameter_error"


def test_get_customer_never_creates_and_resolves_aliases(sim, v2):
    missing = get(sim, v2, "/customers/newcomer")
    assert missing.status_code == 404 and set(missing.json()) >= ERROR and missing.json()["type"] == "resource_missing"
    assert get(sim, v2, "/customers/newcomer").status_code == 404  # still not created
    assert sim.state.stats()["customers"] == 0
    sim.state.purchase_subscription("anon", "premium_monthly")
    sim.state.alias("anon", "known")
    body = get(sim, v2, "/customers/known").json()
    assert set(body) == CUSTOMER | {"active_entitlements"} and body["id"] == "anon"
    assert [e["object"] for e in body["active_entitlements"]["items"]] == ["customer.active_entitlement"]
    aliases = get(sim, v2, "/customers/anon/aliases").json()["items"]
    assert {a["id"] for a in aliases} == {"anon", "known"} and {a["object"] for a in aliases} == {"customer.alias"}


def test_the_same_state_as_v1_with_every_period_listed(sim, v2):
    state = sim.state
    now = state.now_ms()
    state.purchase_subscription("ana", "premium_monthly", store="play_store", now_ms=now)
    state.renew("ana", "premium_monthly", now_ms=now + 30 * DAY_MS)
    state.renew("ana", "premium_monthly", now_ms=now + 60 * DAY_MS)
    state.purchase_non_renewing("ana", "h01enb", now_ms=now)
    refunded = state.purchase_non_renewing("ana", "geometry_pack_30", now_ms=now)["event"]["transaction_id"]
    state.refund("ana", refunded, now_ms=now + DAY_MS)
    v1 = requests.get(f"{sim.url}/v1/subscribers/ana", headers={"Authorization": f"Bearer {V1_KEY}"}, timeout=5)
    v1_sub = v1.json()["subscriber"]["subscriptions"]["premium_monthly"]
    subs = get(sim, v2, "/customers/ana/subscriptions").json()
    [sub] = subs["items"]
    assert set(sub) == SUBSCRIPTION and sub["store"] == "play_store" and sub["environment"] == "production"
    assert sub["store_subscription_identifier"] == v1_sub["store_transaction_id"]
    transactions = get(sim, v2, f"/subscriptions/{sub['id']}/transactions").json()
    assert set(transactions) == LIST and all(set(t) == TRANSACTION for t in transactions["items"])
    ids = [t["id"] for t in transactions["items"]]
    assert len(ids) == 3 and ids[-1] == v1_sub["store_transaction_id"]  # v1 shows the last only
    assert {t["product_store_identifier"] for t in transactions["items"]} == {"premium_monthly"}
    purchases = get(sim, v2, "/customers/ana/purchases").json()["items"]
    assert all(set(p) == PURCHASE for p in purchases)
    assert {p["store_purchase_identifier"]: p["status"] for p in purchases}[refunded] == "refunded"
    assert "geometry_pack_30" not in v1.json()["subscriber"]["non_subscriptions"]  # v1 drops it
    products = get(sim, v2, "/products").json()["items"]
    by_id = {p["id"]: p["store_identifier"] for p in products}
    assert {by_id[sub["product_id"]]} | {by_id[p["product_id"]] for p in purchases} == {
        "premium_monthly",
        "h01enb",
        "geometry_pack_30",
    }


def test_a_transferred_subscription_moves_with_its_whole_history(sim, v2):
    sim.state.purchase_subscription("from", "premium_monthly")
    sim.state.renew("from", "premium_monthly")
    [before] = get(sim, v2, "/customers/from/subscriptions").json()["items"]
    sim.state.transfer("from", "to")
    assert get(sim, v2, "/customers/from/subscriptions").json()["items"] == []
    [after] = get(sim, v2, "/customers/to/subscriptions").json()["items"]
    assert after["id"] == before["id"] and after["customer_id"] == "to"
    assert len(get(sim, v2, f"/subscriptions/{after['id']}/transactions").json()["items"]) == 2


def test_transactions_only_for_app_store_and_play_store(sim, v2):
    sim.state.purchase_subscription("sam", "premium_monthly", store="stripe")
    [sub] = get(sim, v2, "/customers/sam/subscriptions").json()["items"]
    refused = get(sim, v2, f"/subscriptions/{sub['id']}/transactions")
    assert refused.status_code == 422 and refused.json()["retryable"] is False


def test_v2_wants_its_own_key_as_a_bearer_token(sim, v2):
    for header in (f"Bearer {V1_KEY}", V2_KEY, None):
        response = requests.get(
            f"{sim.url}/v2/projects/{PROJECT}/customers", headers={"Authorization": header} if header else {}, timeout=5
        )
        assert response.status_code == 401 and response.json()["type"] == "authentication_error"
    v1 = requests.get(f"{sim.url}/v1/subscribers/x", headers={"Authorization": f"Bearer {V2_KEY}"}, timeout=5)
    assert v1.status_code == 401
    assert get(sim, v2, "/customers").status_code == 200
    other = v2.get(f"{sim.url}/v2/projects/someone_else/customers", timeout=5)
    assert other.status_code == 404


@pytest.mark.parametrize(("status", "kind"), [(423, "resource_locked_error"), (503, "server_error")])
def test_injected_faults_answer_v2_error_objects(sim, v2, status, kind):
    sim.state.fail_next(1, status=status, retry_after_s=2.5)
    response = get(sim, v2, "/customers")
    body = response.json()
    assert response.status_code == status and set(body) == ERROR | {"backoff_ms"}
    assert (body["type"], body["retryable"], body["backoff_ms"]) == (kind, True, 2500)
    assert get(sim, v2, "/customers").status_code == 200


def test_rate_limit_headers_and_an_enforced_token_bucket(sim, v2):
    first = get(sim, v2, "/customers")
    usage = int(first.headers["RevenueCat-Rate-Limit-Current-Usage"])
    assert first.headers["RevenueCat-Rate-Limit-Current-Limit"] == "480"
    assert int(get(sim, v2, "/customers").headers["RevenueCat-Rate-Limit-Current-Usage"]) in (usage + 1, 1)
    sim.limits.clock = lambda: 1000.0  # the bucket's clock stands still: nothing refills
    sim.limits.enforce("customer_information", 480)  # 8 a second, 8 at most back to back
    answers = [get(sim, v2, "/customers") for _ in range(30)]
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) == 22
    body = refused[0].json()
    assert set(body) == ERROR | {"backoff_ms"} and body["type"] == "rate_limit_error"
    assert body["backoff_ms"] == 125 and refused[0].headers["Retry-After"] == "1"
    assert refused[0].headers["RevenueCat-Rate-Limit-Current-Limit"] == "480"
    assert sim.limits.stats()["refused"] == {"customer_information": len(refused)}
    products = get(sim, v2, "/products")  # another domain, its own limit
    assert products.status_code == 200 and products.headers["RevenueCat-Rate-Limit-Current-Limit"] == "60"


def test_the_date_header_is_the_providers_clock(sim, v2):
    sim.state.advance_clock(3 * DAY_MS)
    answered = email.utils.parsedate_to_datetime(get(sim, v2, "/customers").headers["Date"]).timestamp() * 1000
    assert abs(answered - sim.state.now_ms()) < 5_000
    v1 = requests.get(
        f"{sim.url}/v1/subscribers/{quote('d:1', safe='')}", headers={"Authorization": f"Bearer {V1_KEY}"}, timeout=5
    )
    assert abs(v1.json()["request_date_ms"] - answered) < 5_000
