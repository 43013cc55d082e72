"""HTTP face of the simulator's REST API v2 (reference/revenuecat.md §4 and §5), read side.

    GET /v2/projects/<project>/customers                          ?limit&starting_after&search
    GET /v2/projects/<project>/customers/<customer>               404 when unknown: never creates
    GET /v2/projects/<project>/customers/<customer>/subscriptions ?environment&limit&starting_after
    GET /v2/projects/<project>/customers/<customer>/purchases     ?environment&limit&starting_after
    GET /v2/projects/<project>/customers/<customer>/aliases
    GET /v2/projects/<project>/customers/<customer>/active_entitlements
    GET /v2/projects/<project>/subscriptions/<subscription>[/transactions]
    GET /v2/projects/<project>/purchases/<purchase>
    GET /v2/projects/<project>/products[/<product>]               (Project Configuration domain)

Authentication, outages, latency, injected faults and rate limits are applied by the server's
gate before these run (``simulators.revenuecat.server``); errors are v2 error objects.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, Response, jsonify, request

from simulators.revenuecat.customers_v2 import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    TRANSACTION_STORES,
    CustomerDirectory,
    Renderer,
    UnknownCursor,
    chains_of,
    list_object,
    page_object,
    product_ref,
)
from simulators.revenuecat.rate_limit import CUSTOMER_INFORMATION, PROJECT_CONFIGURATION
from simulators.revenuecat.records import Customer
from simulators.revenuecat.state import ProviderState

_ERROR_TYPES = {
    400: "parameter_error",
    401: "authentication_error",
    403: "authorization_error",
    404: "resource_missing",
    409: "resource_already_exists",
    422: "unprocessable_entity_error",
    423: "resource_locked_error",
    429: "rate_limit_error",
}
_MESSAGES = {
    "authentication_error": "Invalid API key",
    "resource_missing": "Resource not found",
    "resource_locked_error": "The resource is currently being modified by a concurrent request",
    "rate_limit_error": "Rate limit exceeded",
    "server_error": "There was an internal server error",
}


def domain_of(path: str) -> str:
    """The rate-limit domain of a v2 path: products are project configuration, the rest customer information."""
    parts = path.strip("/").split("/")
    return PROJECT_CONFIGURATION if len(parts) >= 4 and parts[3] == "products" else CUSTOMER_INFORMATION


def v2_error(
    status: int, message: str | None = None, *, param: str | None = None, retry_after_s: float | None = None
) -> Response:
    """A v2 error object; retryable ones (423, 429, 5xx) carry ``backoff_ms``, and a 429 ``Retry-After``."""
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
    retryable = status in (423, 429) or status >= 500
    body: dict[str, Any] = {
        "object": "error",
        "type": error_type,
        "message": message or _MESSAGES.get(error_type, "Injected failure"),
        "retryable": retryable,
        "doc_url": f"https://errors.rev.cat/{error_type.replace('_', '-')}",
    }
    if param is not None:
        body["param"] = param
    if retryable:
        body["backoff_ms"] = math.ceil((1.0 if retry_after_s is None else retry_after_s) * 1000)
    response = jsonify(body)
    response.status_code = status
    if status == 429 or (retryable and retry_after_s is not None):
        response.headers["Retry-After"] = str(max(1, math.ceil(1.0 if retry_after_s is None else retry_after_s)))
    return response


class _BadParameter(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise _BadParameter("limit", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _BadParameter("limit", f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _environment() -> str | None:
    environment = request.args.get("environment")
    if environment not in (None, "sandbox", "production"):
        raise _BadParameter("environment", "environment must be 'sandbox' or 'production'")
    return environment


def _listed(items: list[dict[str, Any]], url: str) -> Response:
    environment = _environment()
    if environment is not None:
        items = [item for item in items if item.get("environment") == environment]
    return jsonify(
        list_object(
            items, url=url, limit=_limit(), starting_after=request.args.get("starting_after"), query=request.args
        )
    )


def create_v2_blueprint(state: ProviderState, *, project_id: str) -> Blueprint:
    """The v2 read endpoints over ``state`` for project ``project_id``."""
    v2 = Blueprint("revenuecat_v2", __name__, url_prefix="/v2/projects/<project>")

    @v2.url_value_preprocessor
    def check_project(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values is not None and values.pop("project", None) != project_id:
            raise _ProjectMissing()

    @v2.errorhandler(_BadParameter)
    def bad_parameter(exc: _BadParameter) -> Response:
        return v2_error(400, str(exc), param=exc.param)

    @v2.errorhandler(UnknownCursor)
    def unknown_cursor(exc: UnknownCursor) -> Response:
        return v2_error(400, f"starting_after names no item of this list: {exc}", param="starting_after")

    @v2.errorhandler(_ProjectMissing)
    def project_missing(exc: _ProjectMissing) -> Response:
        return v2_error(404, "Project not found")

    def renderer() -> Renderer:
        return Renderer(project_id, state.app_id, state.now_ms(), state.entitlements_for)

    base = f"/v2/projects/{project_id}"

    @v2.get("/customers")
    def list_customers() -> Response:
        limit, after = _limit(), request.args.get("starting_after")
        render = renderer()
        more = False
        with state.reading() as directory:
            if request.args.get("search") is not None:
                page: list[Customer] = []  # only $email is searchable; the simulator keeps no attributes
            else:
                page, more = directory.customers_after(after, limit)
            items = [render.customer(c, detailed=False) for c in page]
        return jsonify(page_object(items, url=f"{base}/customers", more=more, query=request.args))

    @v2.get("/customers/<customer_id>")
    def get_customer(customer_id: str) -> Response:
        render = renderer()
        with state.reading() as directory:
            customer = directory.find(customer_id)
            if customer is None:
                return v2_error(404, "Customer not found", param="customer_id")
            body = render.customer(customer, detailed=True)
        if "attributes" in request.args.getlist("expand"):
            body["attributes"] = page_object([], url=f"{base}/customers/{body['id']}/attributes", more=False, query={})
        return jsonify(body)

    def customer_list(customer_id: str, what: str) -> Response:
        render = renderer()
        with state.reading() as directory:
            customer = directory.find(customer_id)
            if customer is None:
                return v2_error(404, "Customer not found", param="customer_id")
            if what == "subscriptions":
                items = [render.subscription(chain) for chain in chains_of(customer)]
            elif what == "purchases":
                items = render.purchases(customer)
            elif what == "aliases":
                items = render.aliases(customer)
            else:
                items = render.active_entitlements(customer)
                return jsonify(page_object(items, url=f"{base}/customers/{customer_id}/{what}", more=False, query={}))
        return _listed(items, f"{base}/customers/{customer.original_app_user_id}/{what}")

    @v2.get("/customers/<customer_id>/subscriptions")
    def list_subscriptions(customer_id: str) -> Response:
        return customer_list(customer_id, "subscriptions")

    @v2.get("/customers/<customer_id>/purchases")
    def list_purchases(customer_id: str) -> Response:
        return customer_list(customer_id, "purchases")

    @v2.get("/customers/<customer_id>/aliases")
    def list_aliases(customer_id: str) -> Response:
        return customer_list(customer_id, "aliases")

    @v2.get("/customers/<customer_id>/active_entitlements")
    def list_active_entitlements(customer_id: str) -> Response:
        return customer_list(customer_id, "active_entitlements")

    @v2.get("/subscriptions/<subscription_id>")
    def get_subscription(subscription_id: str) -> Response:
        render = renderer()
        with state.reading() as directory:
            chain = directory.chain(subscription_id)
            if chain is None:
                return v2_error(404, "Subscription not found", param="subscription_id")
            return jsonify(render.subscription(chain))

    @v2.get("/subscriptions/<subscription_id>/transactions")
    def list_transactions(subscription_id: str) -> Response:
        render = renderer()
        with state.reading() as directory:
            chain = directory.chain(subscription_id)
            if chain is None:
                return v2_error(404, "Subscription not found", param="subscription_id")
            if chain.latest.store not in TRANSACTION_STORES:
                return v2_error(422, "Transactions are only available for App Store and Play Store subscriptions")
            items = render.transactions(chain)
        return _listed(items, f"{base}/subscriptions/{subscription_id}/transactions")

    @v2.get("/purchases/<purchase_id>")
    def get_purchase(purchase_id: str) -> Response:
        render = renderer()
        with state.reading() as directory:
            found = directory.purchase(purchase_id)
            if found is None:
                return v2_error(404, "Purchase not found", param="purchase_id")
            return jsonify(render.purchase(*found))

    @v2.get("/products")
    def list_products() -> Response:
        render = renderer()
        with state.reading() as directory:
            products = _products(directory)
        items = [render.product(store_id, kind, created) for store_id, (kind, created) in products]
        return _listed(items, f"{base}/products")

    @v2.get("/products/<product_id>")
    def get_product(product_id: str) -> Response:
        render = renderer()
        with state.reading() as directory:
            products = _products(directory)
        for store_id, (kind, created) in products:
            if product_ref(store_id) == product_id:
                return jsonify(render.product(store_id, kind, created))
        return v2_error(404, "Product not found", param="product_id")

    return v2


def _products(directory: CustomerDirectory) -> list[tuple[str, tuple[str, int]]]:
    return sorted(directory.products().items(), key=lambda item: (item[1][1], item[0]))


class _ProjectMissing(Exception):
    """The path names another project."""
