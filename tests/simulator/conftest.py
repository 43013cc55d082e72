"""The RevenueCat simulator served over real HTTP, and a session holding its v1 API key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from simulators.revenuecat import ProviderState, SimulatorServer
from tests.simulator.support import API_KEY


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(ProviderState(), api_key=API_KEY) as server:
        yield server


@pytest.fixture
def api(sim: SimulatorServer) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    return session
