"""Every app_user_id RevenueCat accepts reaches the provider as it is, over HTTP (the simulator).

A dot segment (``.``, ``..``) in a URL path is removed by URL normalisation (RFC 3986 §5.2.4):
the provider client must encode dots so that the simulator, like any server, decodes the very
id it was given.
"""

from __future__ import annotations

import pytest

from adapters.revenuecat import RevenueCatClient
from tests.client.support import OPERATOR, access

# Ids that URL handling tends to change: dot segments, percent signs, reserved characters.
AWKWARD_IDS = [".", "..", "...", ".hidden", "%2E", "%2e%2E", "a b", "?q=1#f", "+plus", "ü-ñ", "$RCAnonymousID:0f"]


@pytest.mark.parametrize("app_user_id", AWKWARD_IDS)
def test_the_provider_reads_the_id_it_was_given(simulator, app_user_id):
    simulator.state.purchase_non_renewing(app_user_id, "h01enb")
    client = RevenueCatClient(simulator.url, simulator.api_key)
    try:
        body = client.get_subscriber(app_user_id)
    finally:
        client.close()
    assert body["subscriber"]["original_app_user_id"] == app_user_id
    assert "h01enb" in body["subscriber"]["non_subscriptions"]
    method, path, _ = simulator.state.request_log[-1]
    assert (method, path) == ("GET", f"/v1/subscribers/{app_user_id}")


@pytest.mark.parametrize("app_user_id", [".", ".."])
def test_a_dot_user_syncs_and_is_granted(client, simulator, app_user_id):
    simulator.state.purchase_non_renewing(app_user_id, "h01enb")
    encoded = app_user_id.replace(".", "%2E")
    response = client.post(f"/v1/users/{encoded}/sync", headers=OPERATOR)
    assert response.status_code == 200, response.json
    assert response.json["app_user_id"] == app_user_id
    assert [c["resource"] for c in response.json["changes"]] == ["course:H01ENB"]
    assert "course:H01ENB" in access(client, encoded)
