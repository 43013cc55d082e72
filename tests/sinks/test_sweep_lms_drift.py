"""The sweep has LMS drift (a learner downgraded by hand) read back and repaired by its own task,
and counts it like provider drift."""

from tasks.celery_app import create_celery
from tests.sinks.conftest import COURSE, drain, map_course, sync
from tests.support import queued_messages


def test_sweep_repairs_a_hand_downgraded_enrollment(lms_settings, lms_runtime, lms, simulator):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("alice", "h01enb")
    sync(lms_runtime, "alice")
    drain(lms_runtime)
    assert lms.state.enrollment("alice", COURSE) == ("professional", True)
    lms.state.set_enrollment("alice", COURSE, "audit")  # someone downgraded the learner by hand
    app = create_celery(lms_settings)
    assert app.tasks["sweep.reconcile_batch"].apply(args=(["alice"],)).get()["reconciled"] == 1
    queued = [m["headers"] for m in queued_messages(lms_settings)]
    assert [(h["task"], h["argsrepr"]) for h in queued] == [("lms.repair", "(['alice'],)")]
    assert app.tasks["lms.repair"].apply(args=(["alice"],)).get() == {"lms_wrong_mode": 1}
    drain(lms_runtime, customer_id="alice")
    assert lms.state.enrollment("alice", COURSE) == ("professional", True)
    assert lms_runtime.metrics.counters()['engine_drift_repaired_total{kind="lms_wrong_mode"}'] == 1
