"""The one place that reads the wall clock for the engine: pure code receives ``now_ms``."""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    return int(time.time() * 1000)
