"""The product catalog: which store products grant which accesses, and how.

Loaded from TOML (design.md, "Products and what they grant"). Pure: parsing and look-ups only.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from engine.errors import CatalogError

Policy = Literal["period", "credit", "lifetime"]
ProductKind = Literal["subscription", "non_consumable", "consumable"]

POLICIES: frozenset[str] = frozenset({"period", "credit", "lifetime"})

KINDS: frozenset[str] = frozenset({"subscription", "non_consumable", "consumable"})
# The keys each table may hold: anything else is a typo that would otherwise be ignored.
CATALOG_KEYS = ("products", "mode_rank")
PRODUCT_KEYS = ("title", "store_ids", "kind", "entitlements", "family_shareable", "grants")
GRANT_KEYS = ("resource", "mode", "policy", "days")


# Modes from weakest to strongest; "highest mode" when several products grant one resource.
# Open edX course modes first (audit < honor < verified < professional), then app-level modes.
DEFAULT_MODE_RANK: tuple[str, ...] = (
    "audit",
    "honor",
    "verified",
    "no-id-professional",
    "professional",
    "paid",
    "basic",
    "full",
)

DAY_MS = 86_400_000

# Durations RevenueCat appends to promotional product ids (rc_promo_<entitlement>_<duration>).
PROMO_DURATIONS = (
    "three_month",
    "six_month",
    "two_month",
    "three_day",
    "two_week",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "lifetime",
    "custom",
)


def _promo_entitlement(rest: str) -> str:
    """The entitlement id inside ``<entitlement>_<duration>`` (entitlement ids may hold '_')."""
    for duration in PROMO_DURATIONS:
        if rest.endswith("_" + duration):
            return rest[: -len(duration) - 1]
    return rest.rsplit("_", 1)[0]


@dataclass(frozen=True)
class GrantRule:
    """One access a product grants: ``resource`` in ``mode`` under ``policy``."""

    resource: str
    mode: str
    policy: Policy
    days: int = 0  # credit policy only


@dataclass(frozen=True)
class Product:
    name: str
    store_ids: tuple[str, ...]
    kind: ProductKind
    grants: tuple[GrantRule, ...]
    title: str = ""
    # RevenueCat entitlements whose promotional grants (rc_promo_<entitlement>_<duration>) map here.
    entitlements: tuple[str, ...] = ()
    # Apple Family Sharing: shared access follows the purchaser's, but never earns credits.
    family_shareable: bool = True


@dataclass(frozen=True)
class Catalog:
    products: Mapping[str, Product]
    mode_rank: tuple[str, ...] = DEFAULT_MODE_RANK
    digest: str = ""  # identifies the catalog's content: projections made under another are stale
    # Indexes built from ``products`` once (the dataclass is frozen, hence object.__setattr__).
    _by_store_id: dict[str, Product] = field(init=False, repr=False, compare=False)
    _by_entitlement: dict[str, Product] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_store: dict[str, Product] = {}
        by_entitlement: dict[str, Product] = {}
        for product in self.products.values():
            for store_id in product.store_ids:
                by_store[store_id] = product
            for entitlement in product.entitlements:
                by_entitlement[entitlement] = product
        object.__setattr__(self, "_by_store_id", by_store)
        object.__setattr__(self, "_by_entitlement", by_entitlement)

    def product_for(self, store_product_id: str) -> Product | None:
        """The catalog product for a store product id, or None when the catalog lacks it.

        Google Play ids of products made after Feb 2023 read ``<subscription_id>:<base_plan_id>``;
        the catalog may name either form. Promotional grants read ``rc_promo_<entitlement>_<duration>``.
        """
        product = self._by_store_id.get(store_product_id)
        if product is not None:
            return product
        if ":" in store_product_id:
            product = self._by_store_id.get(store_product_id.split(":", 1)[0])
            if product is not None:
                return product
        if store_product_id.startswith("rc_promo_"):
            entitlement = _promo_entitlement(store_product_id[len("rc_promo_") :])
            return self._by_entitlement.get(entitlement)
        return None

    def product_named(self, name: str) -> Product | None:
        return self.products.get(name)

    def mode_rank_of(self, mode: str) -> int:
        try:
            return self.mode_rank.index(mode)
        except ValueError:
            return -1


def is_policy(value: object) -> TypeGuard[Policy]:
    return value in POLICIES


def _unknown_keys(where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    unknown = [k for k in table if k not in allowed]
    if not unknown:
        return []
    return [f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (expected {', '.join(allowed)})"]


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    """Build a Catalog from parsed TOML, reporting every problem at once (unknown keys too:
    a misspelt key would otherwise be silently ignored)."""
    problems: list[str] = _unknown_keys("catalog", data, CATALOG_KEYS)
    products: dict[str, Product] = {}
    seen_store_ids: dict[str, str] = {}
    raw_products = data.get("products", {})
    if not isinstance(raw_products, dict):
        raise CatalogError([*problems, "[products] must be a table"])
    if not raw_products:
        problems.append("no [products.<name>] table: the catalog grants nothing")
    mode_rank = data.get("mode_rank", list(DEFAULT_MODE_RANK))
    if not isinstance(mode_rank, list) or not all(isinstance(m, str) for m in mode_rank):
        problems.append("mode_rank: must be a list of strings")
        mode_rank = list(DEFAULT_MODE_RANK)
    for name, raw in raw_products.items():
        where = f"products.{name}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a table")
            continue
        problems.extend(_unknown_keys(where, raw, PRODUCT_KEYS))
        store_ids = raw.get("store_ids", [])
        if not isinstance(store_ids, list) or not store_ids or not all(isinstance(s, str) and s for s in store_ids):
            problems.append(f"{where}.store_ids: a non-empty list of strings is required")
            store_ids = []
        for store_id in store_ids:
            if store_id in seen_store_ids:
                problems.append(
                    f"{where}.store_ids: {store_id!r} is also listed by products.{seen_store_ids[store_id]}"
                )
            seen_store_ids[store_id] = name
        kind = raw.get("kind", "")
        if kind not in KINDS:
            problems.append(f"{where}.kind: {kind!r} is not one of {sorted(KINDS)}")
        grants: list[GrantRule] = []
        raw_grants = raw.get("grants", [])
        if not isinstance(raw_grants, list) or not raw_grants:
            problems.append(f"{where}.grants: a non-empty list is required")
            raw_grants = []
        for i, g in enumerate(raw_grants):
            gwhere = f"{where}.grants[{i}]"
            if not isinstance(g, dict):
                problems.append(f"{gwhere}: must be a table")
                continue
            problems.extend(_unknown_keys(gwhere, g, GRANT_KEYS))
            resource, mode, policy = g.get("resource"), g.get("mode"), g.get("policy")
            days = g.get("days", 0)
            if not isinstance(resource, str) or not resource:
                problems.append(f"{gwhere}.resource: required")
            if not isinstance(mode, str) or not mode:
                problems.append(f"{gwhere}.mode: required")
            elif mode not in mode_rank:
                problems.append(f"{gwhere}.mode: {mode!r} is not in mode_rank ({', '.join(mode_rank)})")
            if not is_policy(policy):
                problems.append(f"{gwhere}.policy: {policy!r} is not one of {sorted(POLICIES)}")
            if policy == "credit" and (not isinstance(days, int) or isinstance(days, bool) or days <= 0):
                problems.append(f"{gwhere}.days: a positive integer is required for policy 'credit'")
            if policy == "period" and kind in {"non_consumable", "consumable"}:
                problems.append(f"{gwhere}.policy: 'period' needs a subscription (use 'credit' or 'lifetime')")
            if is_policy(policy):  # otherwise a problem is recorded and no catalog is built
                grants.append(GrantRule(str(resource), str(mode), policy, int(days) if isinstance(days, int) else 0))
        entitlements = raw.get("entitlements", [])
        if not isinstance(entitlements, list) or not all(isinstance(e, str) for e in entitlements):
            problems.append(f"{where}.entitlements: must be a list of strings")
            entitlements = []
        family_shareable = raw.get("family_shareable", True)
        if not isinstance(family_shareable, bool):
            problems.append(f"{where}.family_shareable: must be true or false")
        products[name] = Product(
            name=name,
            store_ids=tuple(store_ids),
            kind=kind,
            grants=tuple(grants),
            title=str(raw.get("title", "")),
            entitlements=tuple(entitlements),
            family_shareable=family_shareable is not False,
        )
    if problems:
        raise CatalogError(problems)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Catalog(products=products, mode_rank=tuple(mode_rank), digest=digest)


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise CatalogError(["no such file"]) from None
    except IsADirectoryError:
        raise CatalogError(["a directory, not a file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError([f"not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise CatalogError([f"not UTF-8: {exc}"]) from None
    except OSError as exc:
        raise CatalogError([f"unreadable: {exc.strerror or exc}"]) from None
    return parse_catalog(data)
