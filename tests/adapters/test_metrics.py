"""Metrics kept in Redis: the sum of what every process recorded, with HELP and TYPE on every
family, histograms with cumulative buckets, and recording that never fails its caller."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from adapters.embedded_redis import redis_url
from adapters.metrics import FAMILIES, Metrics, render
from config.settings import PROJECT_ROOT
from engine.access import Access
from engine.plan import Action
from engine.ports import Cause


@pytest.fixture
def redis_client(base_settings, clean_state):
    client = redis_lib.Redis.from_url(redis_url(base_settings))
    yield client
    client.close()


def parsed(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(render(metrics).decode())}


def test_every_family_has_help_and_type_even_before_anything_is_recorded(redis_client):
    text = render(Metrics(redis_client, flush_interval_s=0)).decode()
    for family in FAMILIES.values():
        exposed = family.name + ("_total" if family.kind == "counter" else "")
        assert f"# HELP {exposed} " in text and f"# TYPE {exposed} {family.kind}\n" in text
    assert "# TYPE engine_job_last_run_timestamp_seconds gauge" in text


def test_processes_on_different_hosts_add_up(redis_client, base_settings):
    web, worker = Metrics(redis_client, flush_interval_s=0), Metrics(redis_client, flush_interval_s=0)
    web.webhook("RENEWAL", "received", 0.004)
    worker.event("cross-host")  # an outcome no other test's process records
    worker.event("cross-host")
    web.flush()
    worker.flush()
    # a third process, started on its own (another interpreter), records and exits
    script = (
        "import redis; from adapters.metrics import Metrics; "
        f"m = Metrics(redis.Redis.from_url({redis_url(base_settings)!r})); m.event('cross-host')"
    )
    subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, check=True, timeout=60)
    families = parsed(Metrics(redis_client))
    events = {
        s.labels["outcome"]: s.value for s in families["engine_events"].samples if s.name == "engine_events_total"
    }
    assert events["cross-host"] == 3
    webhooks = [s for s in families["engine_webhooks"].samples if s.name == "engine_webhooks_total"]
    assert any(s.labels == {"type": "RENEWAL", "status": "received"} and s.value >= 1 for s in webhooks)


def test_histogram_buckets_are_cumulative_with_sum_and_count(redis_client):
    metrics = Metrics(redis_client, flush_interval_s=0)
    for seconds in (0.02, 0.3, 0.3, 7.0, 99.0):
        metrics.provider_request(200, "ok", seconds)
    metrics.provider_request(None, "transient", 3.05)
    samples = parsed(metrics)["engine_provider_request_seconds"].samples
    ok = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket") and s.labels["outcome"] == "ok"}
    assert ok["0.025"] == 1 and ok["0.5"] == 3 and ok["10.0"] == 4 and ok["+Inf"] == 5
    count = {s.labels["outcome"]: s.value for s in samples if s.name.endswith("_count")}
    total = {s.labels["outcome"]: s.value for s in samples if s.name.endswith("_sum")}
    assert count == {"ok": 5, "transient": 1} and total["ok"] == pytest.approx(106.62)
    statuses = {s.labels["status"]: s.value for s in parsed(metrics)["engine_provider_requests"].samples}
    assert statuses == {"2xx": 5, "network": 1}


def test_drift_is_counted_only_when_no_webhook_asked_for_the_change(redis_client):
    metrics = Metrics(redis_client, flush_interval_s=0)
    grant = Action("grant", "module:algebra", None, Access("module:algebra", "full", None, ("t1",)))
    metrics.reconciled(Cause("event", "RENEWAL:e1"), [grant])
    metrics.reconciled(Cause("operator", "cli"), [grant])
    metrics.reconciled(Cause("sweep"), [grant, grant])
    counters = metrics.counters()
    assert counters['engine_drift_repaired_total{kind="missed_grant"}'] == 3
    assert counters['engine_reconciles_total{cause="event"}'] == 1
    assert counters['engine_reconciles_total{cause="sweep"}'] == 1


def test_unknown_event_types_and_undeclared_names_do_not_grow_the_series(redis_client):
    metrics = Metrics(redis_client, flush_interval_s=0)
    metrics.webhook("SOMETHING_NEW", "ignored", 0.001)
    metrics.webhook(None, "unauthorized", 0.001)
    assert metrics.counters()['engine_webhooks_total{status="ignored",type="other"}'] == 1
    assert metrics.counters()['engine_webhooks_total{status="unauthorized",type="unknown"}'] == 1
    with pytest.raises(KeyError):
        metrics.incr("engine_misspelt_total")
    with pytest.raises(ValueError, match="labels"):
        metrics.incr("engine_reconciles_total", {"kind": "x"})


def test_redis_down_keeps_the_counts_for_the_next_flush(redis_client):
    down = Metrics(redis_lib.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), flush_interval_s=0)
    down.event("dead")
    down.flush()  # logged, not raised
    down.client = redis_client  # Redis is back
    down.flush()
    assert Metrics(redis_client).counters()['engine_events_total{outcome="dead"}'] == 1


def test_a_background_flush_publishes_without_a_read(redis_client):
    from tests.support import wait_for

    metrics = Metrics(redis_client, flush_interval_s=0.05)
    metrics.event("processed")
    reader = Metrics(redis_client, flush_interval_s=0)
    wait_for(lambda: reader.counters().get('engine_events_total{outcome="processed"}') == 1, what="the flush")
    metrics.close()


def test_beat_jobs_last_run_is_a_gauge(redis_client):
    metrics = Metrics(redis_client, flush_interval_s=0)
    metrics.job_ran("sweep", now_ms=1_700_000_000_000)
    (sample,) = parsed(metrics)["engine_job_last_run_timestamp_seconds"].samples
    assert sample.labels == {"job": "sweep"} and sample.value == 1_700_000_000
    assert metrics.job_runs() == {"sweep": 1_700_000_000_000}
