"""diff_access: the actions that turn granted access into desired access. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from engine.access import Access

ActionKind = Literal["grant", "extend", "shorten", "change_mode", "revoke"]

# Order of actions on one resource is irrelevant (one action per resource); across resources
# the plan is sorted by resource so that apply and its audit trail are deterministic.
DRIFT_KIND_OF_ACTION: dict[str, str] = {
    "grant": "missed_grant",
    "revoke": "missed_revocation",
    "extend": "wrong_expiry",
    "shorten": "wrong_expiry",
    "change_mode": "wrong_mode",
}
# Access granted to a customer the engine never knew of, found by listing the provider's
# customers: every webhook of theirs was lost (engine.ports.Cause.drift_kind).
UNDISCOVERED_CUSTOMER = "undiscovered_customer"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    resource: str
    before: Access | None
    after: Access | None

    @property
    def drift_kind(self) -> str:
        """The failure mode this action repairs, when a sweep (not a webhook) had to make it."""
        return DRIFT_KIND_OF_ACTION[self.kind]


def diff_access(desired: Iterable[Access], granted: Iterable[Access]) -> list[Action]:
    """Actions turning ``granted`` into ``desired``; empty when mode and expiry match everywhere.

    One action per resource that differs. A mode change that also moves the expiry is one
    ``change_mode`` action carrying both. Sources alone differing is not a change of access.
    """
    want = {a.resource: a for a in desired}
    have = {a.resource: a for a in granted}
    actions: list[Action] = []
    for resource in sorted(want.keys() | have.keys()):
        after, before = want.get(resource), have.get(resource)
        if before is None and after is not None:
            actions.append(Action("grant", resource, None, after))
        elif after is None and before is not None:
            actions.append(Action("revoke", resource, before, None))
        elif after is not None and before is not None:
            if after.mode != before.mode:
                actions.append(Action("change_mode", resource, before, after))
            elif after.outlasts(before.expires_ms):
                actions.append(Action("extend", resource, before, after))
            elif before.outlasts(after.expires_ms):
                actions.append(Action("shorten", resource, before, after))
    return actions
