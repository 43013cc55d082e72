"""Sinks: where granted access lands outside the engine's own grants table (an LMS). Pure.

The engine's grants table is the truth; a sink mirrors it. How a change reaches a sink:

1. ``SqlLedgerStore.apply`` writes one outbox row per grant change on a resource that has an
   active course mapping, in the same transaction as the grant (engine/adapters/outbox.py).
   The row carries the *desired* enrollment (mode, is_active), not a delta, so re-applying it
   is harmless.
2. After commit a drain task applies pending rows in id order per (customer, resource) through
   the sink's one Protocol (``ports.CourseSink``), with retries, backoff and jitter.
3. The sweep reads enrollments back and enqueues repairs for LMS-side drift.

Which resources are courses: only those listed in the course mapping table (imported from CSV,
``mapping_csv``). A resource name carries no meaning by itself (``course:H01ENB`` is just a
name); the mapping says which course run, which paid mode, and how to revoke.

This package holds the decisions (``enrollment``), the port (``ports``) and CSV validation
(``mapping_csv``); HTTP and SQL live in engine/adapters/.
"""
