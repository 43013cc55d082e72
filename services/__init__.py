"""Application services: each use case (inbox processing, sweep, client flows, course mappings,
the LMS outbox) composed from the pure engine, the stores and the adapters, and the typed wiring
that builds them once per process."""
