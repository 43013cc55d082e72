"""Client-flow tests run with user tokens enabled."""

from __future__ import annotations

import pytest

from config.settings import Settings
from tests.client.support import USER_TOKEN_SECRET


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(user_token_secret=USER_TOKEN_SECRET)
