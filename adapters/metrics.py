"""Prometheus metrics shared by every process (gunicorn workers, Celery workers, beat, the CLI),
on whatever host each runs: counters and histogram buckets live in Redis, which every process
already shares, and a prometheus_client ``Collector`` reads them back at scrape time.

Why not prometheus_client's multiprocess mode: it sums files that each process writes into one
directory, so it is correct only for processes on one host, needs that directory wiped at every
deploy, and would have Prometheus scrape every host for its share. The web and the workers may
run on different hosts; Redis is the one thing they all reach, and ``/metrics`` on any web
process then answers for the whole system.

Recording is cheap: a process adds to an in-memory buffer (a dict update under a lock), and a
daemon thread (a greenlet under gevent) adds the buffer to Redis every ``FLUSH_INTERVAL_S`` in
one pipeline, so the webhook intake pays no Redis round trip per request. Reads in the same
process (``counters()``, a scrape) flush first. A process killed outright loses at most its
last interval of counts; Redis being down keeps them in the buffer until it is back.

Every family is declared once in ``FAMILIES`` (name, help, labels, buckets): a name that is not
declared raises, so a misspelt metric fails in the tests instead of vanishing.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.plan import Action
from engine.ports import Cause
from engine.revenuecat import INFORMATIONAL_EVENT_TYPES, RECONCILE_EVENT_TYPES

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
_PREFIX = "metrics:v2:"
_recorders: weakref.WeakSet[Metrics] = weakref.WeakSet()
_JOBS_KEY = "metrics:v2:job_last_run_ms"
KNOWN_EVENT_TYPES = RECONCILE_EVENT_TYPES | INFORMATIONAL_EVENT_TYPES

# Seconds. Intake answers in milliseconds; purchase-to-access spans the provider read, retries
# and the 30 s target; provider calls sit between the two.
INTAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ACCESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
PROVIDER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Family:
    """One metric family. Counters are named without ``_total`` (the exposition adds it)."""

    name: str
    kind: Literal["counter", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "engine_webhooks",
            "counter",
            "Webhooks answered by the intake, by event type and outcome (received, ignored, malformed, "
            "duplicate, unauthorized, too_large, unavailable).",
            ("type", "status"),
        ),
        Family(
            "engine_events",
            "counter",
            "Inbox rows processed by a worker, by outcome (processed, ignored, retrying, degraded, dead, "
            "held, skipped).",
            ("outcome",),
        ),
        Family(
            "engine_reconciles",
            "counter",
            "Reconciles of one customer, by cause (event, sweep, request, expiry, operator, degraded, discovery).",
            ("cause",),
        ),
        Family(
            "engine_reconcile_failures",
            "counter",
            "Sweep reads or reconciles of one customer that failed, by kind (transient, terminal, error).",
            ("kind",),
        ),
        Family(
            "engine_drift_repaired",
            "counter",
            "Access changes no webhook asked for (a sweep, discovery, an operator, the LMS read-back), by drift kind.",
            ("kind",),
        ),
        Family(
            "engine_provider_requests",
            "counter",
            "HTTP requests to the provider (RevenueCat), by answer (2xx, an error status, or network).",
            ("status",),
        ),
        Family(
            "engine_customer_reads",
            "counter",
            "Customers read from the provider, by read path (event, sweep, sync): one v1 read each, "
            "and a REST v2 history where access depends on more than the latest period.",
            ("path",),
        ),
        Family(
            "engine_provider_reads",
            "counter",
            "Provider requests of those customer reads, by read path and API (v1, v2): divided by "
            "engine_customer_reads, the requests one customer's read costs on each path.",
            ("path", "api"),
        ),
        Family(
            "engine_history_reads",
            "counter",
            "REST v2 history reads after a v1 read, by read path and reason (missed_periods, transfer, "
            "chain_start, seen_before, older_refund), and those that failed (reason failed).",
            ("path", "reason"),
        ),
        Family("engine_sweep_selected", "counter", "Customers the sweep selected for a provider read."),
        Family("engine_discovery_pages", "counter", "Pages of the provider's customer list read by discovery."),
        Family(
            "engine_discovery_customers",
            "counter",
            "Customers discovery listed, by outcome: known (the sweep covers them), new (unknown to the "
            "engine: their history read and reconciled), failed (left to the sweep).",
            ("outcome",),
        ),
        Family(
            "engine_lms_refusals",
            "counter",
            "LMS enrollment changes the LMS refused for good (a deadline passed, enrollment closed, "
            "no such user or course, a mode not offered), by kind.",
            ("kind",),
        ),
        Family(
            "engine_intake_seconds",
            "histogram",
            "Time the webhook intake took to answer (authenticate, store durably, enqueue).",
            (),
            INTAKE_BUCKETS,
        ),
        Family(
            "engine_purchase_to_access_seconds",
            "histogram",
            "From a webhook's arrival to the commit of the access it granted (events read from the provider).",
            (),
            ACCESS_BUCKETS,
        ),
        Family(
            "engine_provider_request_seconds",
            "histogram",
            "Provider request latency, by outcome (ok, transient, terminal).",
            ("outcome",),
            PROVIDER_BUCKETS,
        ),
    )
}


def family_of(name: str) -> Family:
    """The family of a sample name (``engine_reconciles_total`` -> ``engine_reconciles``)."""
    family = FAMILIES.get(name.removesuffix("_total"))
    if family is None:
        raise KeyError(f"undeclared metric {name!r} (declare it in adapters/metrics.py FAMILIES)")
    return family


def _label_key(family: Family, labels: Mapping[str, str]) -> str:
    """The series' field in the family's Redis hash: its label values, in the family's order."""
    return _series_key(family.name, tuple(labels.items()))


@functools.lru_cache(maxsize=4096)
def _series_key(name: str, items: tuple[tuple[str, str], ...]) -> str:
    # Cached: label values come from small fixed sets, and the intake records two series per
    # webhook. Checked here, on the first use of each combination.
    family, labels = FAMILIES[name], dict(items)
    if set(labels) != set(family.labels):
        raise ValueError(f"{family.name} takes labels {family.labels}, got {sorted(labels)}")
    return json.dumps([str(labels[n]) for n in family.labels])


def flush_all() -> None:
    """Flush every recorder of this process, waiting for flushes in progress (before a test
    empties Redis: a recorder's late flush would otherwise land in the next test's counts)."""
    for recorder in list(_recorders):
        recorder.flush()


class Metrics:
    """Record counters and histograms for the whole system (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, flush_interval_s: float = FLUSH_INTERVAL_S):
        self.client = client
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], float] = {}
        self._pid = os.getpid()
        self._flusher: threading.Thread | None = None
        self._started = False  # the flusher runs and the last flush at exit is registered
        self._stop = threading.Event()
        self._flushing = threading.Lock()  # one flush at a time: a flush returns once it landed
        _recorders.add(self)

    # -- recording --------------------------------------------------------------------------
    def incr(self, name: str, labels: Mapping[str, str] | None = None, amount: float = 1) -> None:
        family = family_of(name)
        self._add([(_PREFIX + family.name, _label_key(family, labels or {}), amount)])

    def incr_many(self, items: Iterable[tuple[str, Mapping[str, str], float]]) -> None:
        adds = []
        for name, labels, amount in items:
            family = family_of(name)
            adds.append((_PREFIX + family.name, _label_key(family, labels), amount))
        self._add(adds)

    def observe(self, name: str, seconds: float, labels: Mapping[str, str] | None = None) -> None:
        family = family_of(name)
        if family.kind != "histogram":
            raise ValueError(f"{name} is a {family.kind}, not a histogram")
        key, series = _PREFIX + family.name, _label_key(family, labels or {})
        bucket = bisect.bisect_left(family.buckets, seconds)  # len(buckets): +Inf
        self._add([(key, f"{series}|{bucket}", 1), (key, f"{series}|count", 1), (key, f"{series}|sum", seconds)])

    # -- what the call sites record (one line each where it happens) -------------------------
    def webhook(self, event_type: str | None, status: str, seconds: float) -> None:
        """One webhook answered by the intake (unknown types are counted as ``other``)."""
        kind = event_type if event_type in KNOWN_EVENT_TYPES else ("unknown" if event_type is None else "other")
        self.incr("engine_webhooks", {"type": kind, "status": status})
        self.observe("engine_intake_seconds", seconds)

    def event(self, outcome: str) -> None:
        self.incr("engine_events", {"outcome": outcome})

    def reconciled(self, cause: Cause, actions: Sequence[Action]) -> None:
        """One reconcile; its actions are drift when no webhook asked for them."""
        items: list[tuple[str, Mapping[str, str], float]] = [("engine_reconciles", {"cause": cause.kind}, 1)]
        items += [("engine_drift_repaired", {"kind": kind}, 1) for a in actions if (kind := cause.drift_kind(a))]
        self.incr_many(items)

    def access_granted(self, seconds: float) -> None:
        self.observe("engine_purchase_to_access_seconds", seconds)

    def provider_request(self, status: int | None, outcome: str, seconds: float) -> None:
        """One provider request: ``status`` None when no answer came (network error, timeout)."""
        label = "network" if status is None else "2xx" if 200 <= status < 300 else str(status)
        self.incr("engine_provider_requests", {"status": label})
        self.observe("engine_provider_request_seconds", seconds, {"outcome": outcome})

    def job_ran(self, job: str, *, now_ms: int | None = None) -> None:
        """A beat job ran (written at once: the console and an alert read when each last ran)."""
        try:
            self.client.hset(_JOBS_KEY, job, str(now_ms if now_ms is not None else int(time.time() * 1000)))
        except redis.RedisError:
            log.warning("could not record that %s ran", job, exc_info=True)

    # -- the buffer -------------------------------------------------------------------------
    def _add(self, adds: Iterable[tuple[str, str, float]]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's buffer and thread are not ours
                self._pending, self._flusher, self._pid = {}, None, os.getpid()
                self._stop, self._started = threading.Event(), False
            for key, field, amount in adds:
                self._pending[(key, field)] = self._pending.get((key, field), 0) + amount
            if not self._started:
                self._started = True
                atexit.register(self._flush_at_exit)
                if self.flush_interval_s > 0:
                    self._flusher = threading.Thread(target=self._flush_loop, name="metrics-flush", daemon=True)
                    self._flusher.start()

    def _flush_loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except Exception:  # a background thread must outlive any one failed flush
                log.warning("metrics not flushed", exc_info=True)

    def flush(self) -> None:
        """Add what this process recorded to Redis; kept for the next flush if Redis fails."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for (key, field), amount in pending.items():
                if float(amount).is_integer():
                    pipe.hincrby(key, field, int(amount))
                else:
                    pipe.hincrbyfloat(key, field, amount)
            pipe.execute()
        except redis.RedisError:
            log.warning("metrics not flushed (kept for the next try)", exc_info=True)
            with self._lock:
                for item, amount in pending.items():
                    self._pending[item] = self._pending.get(item, 0) + amount

    def _flush_at_exit(self) -> None:
        """The last counts of a process that exits without closing its wiring (a CLI command);
        quietly: at exit Redis may be gone already (an embedded server stopped first)."""
        with self._lock:
            pending = bool(self._pending)
        if not pending:
            return
        try:
            self.client.ping()
        except redis.RedisError:
            log.info("metrics of this process not flushed at exit: Redis unreachable")
            return
        self.flush()

    def close(self) -> None:
        """Flush and stop the flusher (a closing wiring); recording again starts another."""
        with self._lock:
            self._stop.set()
            flusher = self._flusher
            self._flusher, self._stop, self._started = None, threading.Event(), False
        if flusher is not None and flusher is not threading.current_thread():
            # A flush in progress finishes before the caller closes the Redis client under it.
            flusher.join(timeout=5)
        atexit.unregister(self._flush_at_exit)
        self.flush()

    # -- reading ----------------------------------------------------------------------------
    def counters(self) -> dict[str, float]:
        """Every counter sample as ``name_total{label="value"}`` -> value (tests, the CLI)."""
        samples: dict[str, float] = {}
        for metric in self.collect():
            if metric.type == "counter":
                for s in metric.samples:
                    if s.name.endswith("_total"):
                        inner = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                        samples[f"{s.name}{{{inner}}}" if inner else s.name] = s.value
        return samples

    def job_runs(self) -> dict[str, int]:
        """When each beat job last ran (ms since the epoch)."""
        runs = cast("dict[bytes, bytes]", self.client.hgetall(_JOBS_KEY))
        return {k.decode(): int(v) for k, v in runs.items()}

    def collect(self) -> Iterator[Metric]:
        """Every declared family, with what every process has recorded (this one's flushed first)."""
        self.flush()
        pipe = self.client.pipeline(transaction=False)
        for family in FAMILIES.values():
            pipe.hgetall(_PREFIX + family.name)
        pipe.hgetall(_JOBS_KEY)
        *stored, jobs = pipe.execute()
        for family, fields in zip(FAMILIES.values(), stored, strict=True):
            values = {k.decode(): float(v) for k, v in fields.items()}
            yield _counter(family, values) if family.kind == "counter" else _histogram(family, values)
        last_run = GaugeMetricFamily(
            "engine_job_last_run_timestamp_seconds", "When each beat job last ran (Unix time).", labels=["job"]
        )
        for job, ms in sorted(jobs.items()):
            last_run.add_metric([job.decode()], int(ms) / 1000)
        yield last_run


def _counter(family: Family, values: Mapping[str, float]) -> Metric:
    metric = CounterMetricFamily(family.name, family.help, labels=list(family.labels))
    for series, value in sorted(values.items()):
        metric.add_metric(json.loads(series), value)
    return metric


def _histogram(family: Family, values: Mapping[str, float]) -> Metric:
    metric = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
    series_names = sorted({field.rsplit("|", 1)[0] for field in values})
    bounds = [*(str(float(b)) for b in family.buckets), "+Inf"]
    for series in series_names:
        cumulative, buckets = 0.0, []
        for index, bound in enumerate(bounds):
            cumulative += values.get(f"{series}|{index}", 0.0)
            buckets.append((bound, cumulative))
        metric.add_metric(json.loads(series), buckets, values.get(f"{series}|sum", 0.0))
    return metric


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(metrics: Metrics, gauges: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text exposition of every family, plus ``gauges`` read at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*metrics.collect(), *gauges]))
    return generate_latest(registry)


def gauge(name: str, help_text: str, value: float | None = None, **labelled: Mapping[str, float]) -> Metric:
    """A gauge family: one unlabelled ``value``, or ``label_name={label value: value}``."""
    if labelled:
        ((label, by_value),) = labelled.items()
        family = GaugeMetricFamily(name, help_text, labels=[label])
        for label_value, v in sorted(by_value.items()):
            family.add_metric([label_value], v)
        return family
    return GaugeMetricFamily(name, help_text, value=value if value is not None else float("nan"))
