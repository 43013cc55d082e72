"""Access: what a customer may use, as projected from the ledger and as granted."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Access:
    """Access to one resource in one mode until ``expires_ms`` (None: no expiry).

    ``sources`` names the transactions that grant it (every one, when several do).
    """

    resource: str
    mode: str
    expires_ms: int | None
    sources: tuple[str, ...] = ()

    def outlasts(self, other_expires_ms: int | None) -> bool:
        """Whether this access ends strictly later than ``other_expires_ms``."""
        if self.expires_ms is None:
            return other_expires_ms is not None
        return other_expires_ms is not None and self.expires_ms > other_expires_ms

    def is_active(self, now_ms: int) -> bool:
        return self.expires_ms is None or self.expires_ms > now_ms
