"""Task names, by area: what the beat schedule, the intake's publisher and the tasks agree on."""

INBOX_PROCESS = "inbox.process"
INBOX_PROCESS_GROUP = "inbox.process_group"
INBOX_REDRIVE = "inbox.redrive"
SWEEP_RUN = "sweep.run"
SWEEP_RECONCILE_BATCH = "sweep.reconcile_batch"
GRANTS_EXPIRE = "grants.expire"
LMS_DRAIN = "lms.drain"
LMS_REPAIR = "lms.repair"
DISCOVERY_RUN = "discovery.run"

SWEEP_QUEUE = "sweep"
