"""What the simulator's tests share: its API key, the official samples, a v1 read."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import requests

from simulators.revenuecat import SimulatorServer

# Verbatim copies of reference/revenuecat.md §1.8 (webhook samples) and the §3 spec example.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "revenuecat"
API_KEY = "sk_test_sim"


def get_subscriber(sim: SimulatorServer, api: requests.Session, app_user_id: str) -> requests.Response:
    return api.get(f"{sim.url}/v1/subscribers/{quote(app_user_id, safe='')}", timeout=5)
