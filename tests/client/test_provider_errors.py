"""What the client sees when the provider refuses or answers the unusable: our own words, never
the provider's body or URL; the detail goes to the log, without secrets."""

from __future__ import annotations

import logging

from tests.client.support import OPERATOR, android_payload
from tests.conftest import SIM_KEY


def sync(client, app_user_id: str = "alice"):
    return client.post(f"/v1/users/{app_user_id}/sync", headers=OPERATOR)


def test_a_provider_refusal_reaches_the_client_in_our_words_only(client, simulator, caplog):
    simulator.state.fail_next(1, status=400)  # {"code": ..., "message": "Injected failure"}
    with caplog.at_level(logging.WARNING):
        response = sync(client)
    assert response.status_code == 502 and response.json == {
        "error": "provider_refused",
        "message": "the provider refused this user id",
    }
    assert "Injected failure" in caplog.text and "/v1/subscribers/alice" in caplog.text  # for the operator


def test_our_api_key_never_reaches_the_log_or_the_client(client, simulator, caplog, monkeypatch):
    monkeypatch.setattr(simulator.state, "subscriber", lambda *_a, **_k: (404, {"message": f"no key {SIM_KEY} here"}))
    with caplog.at_level(logging.DEBUG):
        response = sync(client)
    assert response.status_code == 502
    assert SIM_KEY not in caplog.text and SIM_KEY not in response.get_data(as_text=True)
    assert "[api key]" in caplog.text


def test_an_answer_the_schema_allows_syncs(client, simulator, monkeypatch):
    read = simulator.state.subscriber

    def lower_case_dates(app_user_id, now_ms=None):
        status, body = read(app_user_id, now_ms)
        del body["request_date_ms"]
        body["request_date"] = body["request_date"].replace("T", "t").replace("Z", "z")
        return status, body

    simulator.state.purchase_non_renewing("alice", "h01enb")
    monkeypatch.setattr(simulator.state, "subscriber", lower_case_dates)
    response = sync(client)
    assert response.status_code == 200 and [a["resource"] for a in response.json["access"]] == ["course:H01ENB"]


def spoil_purchase_dates(body: dict) -> None:
    for purchases in body.get("subscriber", {}).get("non_subscriptions", {}).values():
        purchases[0]["purchase_date"] = "the day before yesterday"


def test_an_unusable_provider_answer_is_a_clear_502_not_a_500(client, simulator, monkeypatch, caplog):
    state = simulator.state
    read, receipt = state.subscriber, state.receipt

    def spoiled_read(app_user_id, now_ms=None):
        status, body = read(app_user_id, now_ms)
        spoil_purchase_dates(body)
        return status, body

    def spoiled_receipt(*args, **kwargs):
        result = receipt(*args, **kwargs)
        spoil_purchase_dates(result.body)
        return result

    state.purchase_non_renewing("alice", "h01enb")
    state.register_store_purchase("tok", platform="android", product_id="h01enb")
    monkeypatch.setattr(state, "subscriber", spoiled_read)
    monkeypatch.setattr(state, "receipt", spoiled_receipt)
    with caplog.at_level(logging.WARNING):
        response = sync(client)
        validated = client.post("/v1/purchases/validate", json=android_payload("bob", "tok"), headers=OPERATOR)
    assert response.status_code == 502 and response.json["error"] == "provider_answer_unusable"
    assert validated.status_code == 502 and validated.json["reason"] == "provider_answer_unusable"
    for answer in (response, validated):
        assert "day before" not in answer.get_data(as_text=True)
    assert "purchase_date" in caplog.text  # the operator learns which field
