"""The sweep repairs LMS drift (a learner downgraded by hand) and counts it like provider drift."""

from services.sweep import reconcile_customers
from tests.sinks.conftest import COURSE, drain, map_course, sync


def test_sweep_repairs_a_hand_downgraded_enrollment(lms_runtime, lms, simulator):
    map_course(lms_runtime)
    simulator.state.purchase_non_renewing("alice", "h01enb")
    sync(lms_runtime, "alice")
    drain(lms_runtime)
    assert lms.state.enrollment("alice", COURSE) == ("professional", True)
    lms.state.set_enrollment("alice", COURSE, "audit")  # someone downgraded the learner by hand
    result = reconcile_customers(["alice"], runtime=lms_runtime)
    assert result.drift == {"lms_wrong_mode": 1} and result.lms_repairs == ["alice"]
    drain(lms_runtime, customer_id="alice")
    assert lms.state.enrollment("alice", COURSE) == ("professional", True)
    assert lms_runtime.metrics.counters()['engine_drift_repaired_total{kind="lms_wrong_mode"}'] == 1
