"""REST API v2 settings: both the project and the v2 key turn v2 on; the key never shows."""

from __future__ import annotations

import pytest

from config.settings import Settings

V2 = {"REVENUECAT_PROJECT_ID": "proj1ab2c3d4", "REVENUECAT_V2_API_KEY": "sk_v2_secret_value"}


def test_without_them_the_engine_runs_on_v1():
    settings = Settings.from_env({})
    assert not settings.revenuecat_v2_enabled
    assert (settings.discovery_budget_share, settings.discovery_interval_s) == (0.1, 0)


def test_both_turn_v2_on_and_the_key_stays_out_of_repr_and_reaches_child_processes():
    settings = Settings.from_env({**V2, "DISCOVERY_BUDGET_SHARE": "0.05", "DISCOVERY_INTERVAL_S": "3600"})
    assert settings.revenuecat_v2_enabled and settings.revenuecat_project_id == "proj1ab2c3d4"
    assert (settings.discovery_budget_share, settings.discovery_interval_s) == (0.05, 3600)
    assert "sk_v2_secret_value" not in repr(settings)
    assert Settings.from_env(settings.to_env()) == settings
    assert not Settings.from_env({"REVENUECAT_PROJECT_ID": "p"}).revenuecat_v2_enabled


@pytest.mark.parametrize("share", ["0.5", "-0.1", "lots"])
def test_a_discovery_share_out_of_range_is_refused(share):
    with pytest.raises(ValueError, match=r"DISCOVERY_BUDGET_SHARE must be between 0 and 0\.3"):
        Settings.from_env({"DISCOVERY_BUDGET_SHARE": share})
