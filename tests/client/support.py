"""Helpers of the client-flow tests: headers, payloads, and reading the ledger."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.conftest import API_TOKEN, WEBHOOK_AUTH

OPERATOR = {"Authorization": f"Bearer {API_TOKEN}"}
WEBHOOK = {"Authorization": WEBHOOK_AUTH}
USER_TOKEN_SECRET = "test-user-token-secret-0123456789"


def android_payload(
    app_user_id: str, token: str, *, product_id: str = "h01enb", purchase_id: str = "GPA.1234-5678-9012", **extra
) -> dict:
    return {
        "product_id": product_id,
        "purchase_id": purchase_id,
        "transaction_date": "1703347200000",
        "status": "PurchaseStatus.purchased",
        "platform": "android",
        "purchase_token": token,
        "course_code": "H01ENB",
        "voice": "Female",
        "app_user_id": app_user_id,
        **extra,
    }


def ios_payload(
    app_user_id: str,
    receipt: str,
    *,
    product_id: str = "me.hypnoelp.app.h01enb",
    purchase_id: str = "1000000123456789",
    **extra,
) -> dict:
    return {
        "product_id": product_id,
        "purchase_id": purchase_id,
        "transaction_date": "1703347200000",
        "status": "PurchaseStatus.purchased",
        "platform": "ios",
        "receipt_data": receipt,
        "course_code": "H01ENB",
        "voice": "Female",
        "app_user_id": app_user_id,
        **extra,
    }


def access(client, app_user_id: str, headers: dict | None = None) -> dict:
    response = client.get(f"/v1/users/{app_user_id}/access", headers=headers or OPERATOR)
    assert response.status_code == 200, response.json
    return {a["resource"]: a for a in response.json["access"]}


def count(runtime, model, *where) -> int:
    with runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def provider_requests(simulator, method: str | None = None, path_prefix: str = "") -> int:
    return sum(
        1
        for m, path, _ in simulator.state.request_log
        if (method is None or m == method) and path.startswith(path_prefix)
    )
