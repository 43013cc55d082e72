"""Persistence: the SQLAlchemy models, the stores over them and the unit of work.

Stores persist and read, nothing more: decisions live in engine/, orchestration in services/.
"""
