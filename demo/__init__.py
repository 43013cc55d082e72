"""The demo: lost, duplicated and reordered webhooks, healed by the sweep (``python -m demo``)."""
