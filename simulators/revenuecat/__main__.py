"""Serve the simulator in the foreground.

    python -m simulators.revenuecat --port 8111 --api-key sk_sim \
        --webhook-url http://127.0.0.1:5000/webhooks/revenuecat --webhook-auth "Bearer whsec" \
        --entitlement premium_monthly=pro,plus

Drive it from another process through the admin API (``POST /_sim/<operation>``). With a
webhook URL, every operation's webhook is delivered as it happens unless ``--no-auto-deliver``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from simulators.revenuecat.server import SimulatorServer
from simulators.revenuecat.state import ProviderState


def _entitlement_map(pairs: list[str]) -> dict[str, list[str]] | None:
    if not pairs:
        return None
    mapping: dict[str, list[str]] = {}
    for pair in pairs:
        product, sep, entitlements = pair.partition("=")
        if not sep or not product:
            raise SystemExit(f"--entitlement expects PRODUCT=ENT[,ENT...], got {pair!r}")
        mapping[product] = [e for e in entitlements.split(",") if e]
    return mapping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.revenuecat", description="RevenueCat provider simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8111)
    parser.add_argument("--api-key", default="sk_sim", help="secret key expected as 'Authorization: Bearer <key>'")
    parser.add_argument("--v2-api-key", default="sk_sim_v2", help="REST v2 secret key (v1 keys are refused on v2)")
    parser.add_argument("--project-id", default="proj_sim", help="the project REST v2 serves")
    parser.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="DOMAIN=PER_MINUTE",
        help="enforce a token bucket (customer_information, project_configuration, v1); repeatable",
    )
    parser.add_argument("--webhook-url", default=None, help="where webhooks are POSTed")
    parser.add_argument("--webhook-auth", default=None, help="Authorization header value sent verbatim with webhooks")
    parser.add_argument("--no-auto-deliver", action="store_true", help="do not POST webhooks as operations happen")
    parser.add_argument(
        "--entitlement",
        action="append",
        default=[],
        metavar="PRODUCT=ENT[,ENT]",
        help="product → entitlements (repeatable); default: every product grants 'pro'",
    )
    parser.add_argument("--id-seed", type=int, default=0, help="keeps transaction ids apart between simulators")
    args = parser.parse_args(argv)

    rate_limits: dict[str, int] = {}
    for pair in args.rate_limit:
        domain, sep, per_minute = pair.partition("=")
        if not sep or not domain or not per_minute.isdigit():
            raise SystemExit(f"--rate-limit expects DOMAIN=PER_MINUTE, got {pair!r}")
        rate_limits[domain] = int(per_minute)
    state = ProviderState(entitlements_by_product=_entitlement_map(args.entitlement), id_seed=args.id_seed)
    server = SimulatorServer(
        state,
        api_key=args.api_key,
        v2_api_key=args.v2_api_key,
        project_id=args.project_id,
        rate_limits=rate_limits,
        webhook_url=args.webhook_url,
        webhook_auth=args.webhook_auth,
        host=args.host,
        port=args.port,
        auto_deliver=bool(args.webhook_url) and not args.no_auto_deliver,
    )
    print(
        f"RevenueCat simulator: API {server.url}/v1 and {server.url}/v2/projects/{args.project_id}, "
        f"admin {server.url}/_sim/",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
