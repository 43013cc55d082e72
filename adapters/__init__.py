"""Adapters: one module per outside system (RevenueCat, Open edX, Redis, the broker, metrics)."""
