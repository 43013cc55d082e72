"""RevenueCatV2Client: the provider's REST API v2, read side (reference/revenuecat.md §4, §5).

One small client class, psf/requests style, beside the v1 client (``adapters.revenuecat``):
typed reads, every list read to its last page, transport failures mapped to the engine's errors
here: connection errors, timeouts, 5xx, 423 (a concurrent request holds the resource) and 429
are TransientError with the provider's ``backoff_ms`` (or ``Retry-After``); other 4xx are
TerminalError, and a customer v2 does not know is ``CustomerNotFound`` (v2's GET never creates
one, where v1's does).

Every request goes through a pacer (``paced``): a budget slot before it is sent, the
``RevenueCat-Rate-Limit-Current-Usage`` / ``-Current-Limit`` headers after it, and a pause of
the budget on a 429. ``adapters.rate_budget.BudgetedProvider`` is one.
"""

from __future__ import annotations

import copy
import email.utils
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

import requests

from engine.errors import TerminalError, TransientError
from engine.revenuecat_v2 import TRANSACTION_STORES, V2CustomerRead

TRANSIENT_STATUSES = frozenset({408, 423, 425, 429, 500, 502, 503, 504, 529})
MAX_PAGES = 10_000  # a list longer than this is a cursor that does not move (a provider bug)
USAGE_HEADER = "RevenueCat-Rate-Limit-Current-Usage"
LIMIT_HEADER = "RevenueCat-Rate-Limit-Current-Limit"


class RequestPacer(Protocol):
    """What the client asks of a budget around each request."""

    def before_request(self) -> None:
        """Wait for a slot (or raise a TransientError when none comes in time)."""

    def after_response(self, usage: int | None, limit: int | None) -> None:
        """The provider's rate-limit headers (None when absent)."""

    def throttled(self, retry_after_s: float | None) -> None:
        """The provider answered 429."""


class _Unpaced:
    def before_request(self) -> None:
        return None

    def after_response(self, usage: int | None, limit: int | None) -> None:
        return None

    def throttled(self, retry_after_s: float | None) -> None:
        return None


class CustomerNotFound(TerminalError):
    """The provider has no customer with this id: unknown, and v2 created nothing."""


@dataclass(frozen=True)
class CustomerPage:
    """One page of the project's customers; ``next_cursor`` continues the pass (None: done)."""

    customers: tuple[Mapping[str, Any], ...]
    next_cursor: str | None


def _retry_after_s(response: requests.Response, body: Any) -> float | None:
    """``backoff_ms`` (millisecond precision) first, then ``Retry-After`` (whole seconds)."""
    if isinstance(body, dict) and isinstance(body.get("backoff_ms"), (int, float)):
        return max(0.0, float(body["backoff_ms"]) / 1000.0)
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    return None


def _int_header(response: requests.Response, name: str) -> int | None:
    value = response.headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _provider_ms(response: requests.Response) -> int | None:
    """The provider's clock from its ``Date`` header, whole seconds."""
    header = response.headers.get("Date")
    if not header:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(header).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


class _Sessions:
    """Idle ``requests.Session`` objects borrowed per call and given back (as the v1 client:
    safe under threads and greenlets, keep-alive connections reused)."""

    def __init__(self, base_url: str, headers: Mapping[str, str]):
        environment = requests.Session().merge_environment_settings(base_url, {}, None, None, None)
        self.proxies, self.verify = environment["proxies"], environment["verify"]
        self.headers = dict(headers)
        self._idle: list[requests.Session] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrowed(self) -> Iterator[requests.Session]:
        with self._lock:
            session = self._idle.pop() if self._idle else None
        if session is None:
            session = requests.Session()
            session.trust_env = False  # proxies read once above; ~/.netrc must not replace our key
            session.proxies.update(self.proxies)
            session.verify = self.verify
            session.headers.update(self.headers)
        try:
            yield session
        finally:
            with self._lock:
                self._idle.append(session)

    def close(self) -> None:
        with self._lock:
            sessions, self._idle = self._idle, []
        for session in sessions:
            session.close()


class RevenueCatV2Client:
    """REST API v2 reads of one project with a v2 secret key (``Authorization: Bearer``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        project_id: str,
        *,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        page_size: int = 100,
    ):
        self.base_url = base_url.rstrip("/")
        self.project_path = f"/v2/projects/{quote(project_id, safe='')}"
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.page_size = page_size
        self.pacer: RequestPacer = _Unpaced()
        self._sessions = _Sessions(self.base_url, {"Authorization": f"Bearer {api_key}", "Accept": "application/json"})
        self._products: dict[str, str] = {}
        self._products_lock = threading.Lock()
        # Requests sent, by kind (customers, customer, subscriptions, transactions, purchases,
        # aliases, products): what each read path costs. Shared by every paced view.
        self.requests: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"RevenueCatV2Client({self.base_url!r}, project={self.project_path.rsplit('/', 1)[-1]!r})"

    def paced(self, pacer: RequestPacer) -> RevenueCatV2Client:
        """This client with every request going through ``pacer`` (sessions and caches shared)."""
        view = copy.copy(self)
        view.pacer = pacer
        return view

    def close(self) -> None:
        self._sessions.close()

    # ----- reads ---------------------------------------------------------------------

    def list_customers(self, *, starting_after: str | None = None, limit: int | None = None) -> CustomerPage:
        """One page of the project's customers after ``starting_after`` (a customer id)."""
        params: dict[str, Any] = {"limit": limit or self.page_size}
        if starting_after is not None:
            params["starting_after"] = starting_after
        body, _ = self._get("customers", f"{self.project_path}/customers", params)
        items, cursor = _list_items(body)
        return CustomerPage(tuple(items), cursor)

    def get_customer(self, customer_id: str) -> Mapping[str, Any]:
        """The customer (``active_entitlements`` included); CustomerNotFound when v2 has none."""
        body, _ = self._get("customer", self._customer_path(customer_id), {}, missing=customer_id)
        return body

    def list_subscriptions(self, customer_id: str) -> list[Mapping[str, Any]]:
        """Every subscription of the customer (all environments, all pages)."""
        return self._all("subscriptions", f"{self._customer_path(customer_id)}/subscriptions", missing=customer_id)

    def list_transactions(self, subscription_id: str) -> list[Mapping[str, Any]]:
        """Every transaction (period) of an App Store or Play Store subscription."""
        path = f"{self.project_path}/subscriptions/{quote(subscription_id, safe='')}/transactions"
        return self._all("transactions", path)

    def list_purchases(self, customer_id: str) -> list[Mapping[str, Any]]:
        """Every one-time purchase of the customer, refunded ones included."""
        return self._all("purchases", f"{self._customer_path(customer_id)}/purchases", missing=customer_id)

    def list_aliases(self, customer_id: str) -> list[Mapping[str, Any]]:
        return self._all("aliases", f"{self._customer_path(customer_id)}/aliases", missing=customer_id)

    def product_store_ids(self, wanted: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
        """RevenueCat product id -> store product id, for the whole project. Read once and again
        only when a wanted id is missing (products are added, never renamed)."""
        with self._products_lock:
            if self._products and wanted <= self._products.keys():
                return dict(self._products)
        products = self._all("products", f"{self.project_path}/products")
        mapping = {
            str(p["id"]): str(p["store_identifier"]) for p in products if p.get("id") and p.get("store_identifier")
        }
        with self._products_lock:  # in place: paced views share the cache
            self._products.clear()
            self._products.update(mapping)
        return dict(mapping)

    def read_history(
        self,
        customer_id: str,
        *,
        look_up: bool = False,
        with_aliases: bool = True,
        with_purchases: bool = True,
        transactions_for: Collection[str] | None = None,
    ) -> V2CustomerRead:
        """Everything v2 says about one customer's purchases, for ``engine.revenuecat_v2``, or
        only what a need asks for.

        Requests: the customer when ``look_up`` (an id that may be an alias, or unknown), its
        subscriptions, the transactions of each App Store or Play Store one (only of those whose
        store product is in ``transactions_for``, when given: the others count as their latest
        period), its purchases when ``with_purchases``, its aliases when ``with_aliases``, and the
        product list when a product is not yet known. CustomerNotFound when v2 has no such customer.
        """
        first_ms: list[int] = []
        canonical = customer_id
        if look_up:
            body, at = self._get("customer", self._customer_path(customer_id), {}, missing=customer_id)
            canonical = str(body.get("id") or customer_id)
            first_ms.append(at)
        subscriptions = self._all(
            "subscriptions", f"{self._customer_path(canonical)}/subscriptions", missing=customer_id, stamp=first_ms
        )
        purchases = self.list_purchases(canonical) if with_purchases else None
        products = {
            str(p)
            for p in [*(s.get("product_id") for s in subscriptions), *(p.get("product_id") for p in purchases or ())]
            if p
        }
        store_ids = self.product_store_ids(products) if products else {}

        def wanted(sub: Mapping[str, Any]) -> bool:
            if str(sub.get("store", "")).lower() not in TRANSACTION_STORES or not sub.get("id"):
                return False
            return transactions_for is None or store_ids.get(str(sub.get("product_id"))) in transactions_for

        transactions = {str(sub["id"]): self.list_transactions(str(sub["id"])) for sub in subscriptions if wanted(sub)}
        aliases = self.list_aliases(canonical) if with_aliases else None
        return V2CustomerRead(
            customer_id=canonical,
            request_ms=first_ms[0] if first_ms else int(time.time() * 1000),
            subscriptions=subscriptions,
            purchases=purchases,
            transactions=transactions,
            aliases=aliases,
            product_store_ids=store_ids,
        )

    # ----- transport ------------------------------------------------------------------

    def _customer_path(self, customer_id: str) -> str:
        # App user ids hold '$' and ':' and may hold anything else: encode every byte, once.
        return f"{self.project_path}/customers/{quote(customer_id, safe='')}"

    def _all(
        self, kind: str, path: str, *, missing: str | None = None, stamp: list[int] | None = None
    ) -> list[Mapping[str, Any]]:
        """Every item of a list, page after page (``next_page``'s cursor, decoded once and sent
        again through our own base URL)."""
        items: list[Mapping[str, Any]] = []
        params: dict[str, Any] = {"limit": self.page_size}
        for _ in range(MAX_PAGES):
            body, at = self._get(kind, path, params, missing=missing)
            if stamp is not None and not stamp:
                stamp.append(at)
            page, cursor = _list_items(body)
            items.extend(page)
            if cursor is None:
                return items
            if cursor == params.get("starting_after"):
                raise TerminalError(f"provider's next_page does not move past {cursor!r} on {path}")
            params = {**params, "starting_after": cursor}
        raise TerminalError(f"provider listed more than {MAX_PAGES} pages on {path}")

    def _get(
        self, kind: str, path: str, params: Mapping[str, Any], *, missing: str | None = None
    ) -> tuple[Mapping[str, Any], int]:
        """(JSON object, provider's clock in ms) of one GET, or the engine's error for it."""
        self.pacer.before_request()
        self.requests[kind] += 1
        try:
            with self._sessions.borrowed() as session:
                response = session.get(f"{self.base_url}{path}", params=params, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"provider unreachable: {exc.__class__.__name__}") from exc
        except requests.RequestException as exc:
            raise TransientError(f"provider request failed: {exc.__class__.__name__}") from exc
        self.pacer.after_response(_int_header(response, USAGE_HEADER), _int_header(response, LIMIT_HEADER))
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        error_type = body.get("type") if isinstance(body, dict) else None
        # Errors name the status, the path and v2's error type: never the body (it could be a
        # proxy's HTML page, and a client must never see the provider's words).
        where = f"GET {urlsplit(response.url).path}"
        if status == 429:
            retry_after = _retry_after_s(response, body)
            self.pacer.throttled(retry_after)
            raise TransientError(f"provider rate-limited {where}", retry_after_s=retry_after, status=429)
        if status in TRANSIENT_STATUSES:
            raise TransientError(
                f"provider answered {status} ({error_type or 'no error type'}) for {where}",
                retry_after_s=_retry_after_s(response, body),
                status=status,
            )
        if status == 404 and missing is not None and error_type in (None, "resource_missing"):
            raise CustomerNotFound(f"the provider has no customer {missing!r}", status=404)
        if status >= 400:
            raise TerminalError(f"provider refused {where}: {status} ({error_type or 'no error type'})", status=status)
        if not isinstance(body, dict):
            raise TransientError(f"provider answered {status} without a JSON object for {where}")
        return body, _provider_ms(response) or int(time.time() * 1000)


def _list_items(body: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], str | None]:
    """A v2 list's items and the cursor of its next page (None: last page)."""
    items = body.get("items")
    if body.get("object") != "list" or not isinstance(items, list):
        raise TerminalError("provider answered something that is not a v2 list")
    next_page = body.get("next_page")
    if not next_page:
        return items, None
    cursor = parse_qs(urlsplit(str(next_page)).query).get("starting_after")
    if not cursor:
        raise TerminalError("provider's next_page has no starting_after")
    return items, cursor[0]
