"""Counters shared by every process (in Redis), rendered in Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis

_KEY = "metrics:counters"


class Metrics:
    def __init__(self, client: redis.Redis):
        self.client = client

    def incr(self, name: str, labels: Mapping[str, str] | None = None, amount: int = 1) -> None:
        self.client.hincrby(_KEY, _field(name, labels or {}), amount)

    def incr_many(self, items: Iterable[tuple[str, Mapping[str, str], int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, labels, amount in items:
            pipe.hincrby(_KEY, _field(name, labels), amount)
        pipe.execute()

    def counters(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(_KEY).items()}


def _field(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(counters: Mapping[str, int], gauges: Mapping[str, int]) -> str:
    """Prometheus exposition text: counters (``*_total``) then gauges."""
    lines: list[str] = []
    seen: set[str] = set()
    for field in sorted(counters):
        name = field.split("{", 1)[0]
        if name not in seen:
            lines.append(f"# TYPE {name} counter")
            seen.add(name)
        lines.append(f"{field} {counters[field]}")
    for field in sorted(gauges):
        name = field.split("{", 1)[0]
        if name not in seen:
            lines.append(f"# TYPE {name} gauge")
            seen.add(name)
        lines.append(f"{field} {gauges[field]}")
    return "\n".join(lines) + "\n"
