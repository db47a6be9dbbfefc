"""`ingest-pipeline api-key create|list|revoke` and `ingest-pipeline serve`: the search service's keys and server."""

from __future__ import annotations

import argparse

from ingest_pipeline.cli import render
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import prepare_environment
from ingest_pipeline.stores.ledger.api_keys import UnknownApiKey


def add_parsers(commands) -> None:
    """Add `api-key` (create, list, revoke) and `serve` to the CLI."""
    p = commands.add_parser("api-key", help="the search service's API keys: create, list, revoke")
    verbs = p.add_subparsers(dest="api_key_command", required=True)
    c = verbs.add_parser("create", help="a new key for a tenant (printed once; only its hash is kept)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--name", help="a label for the key (who or what uses it)")
    c.add_argument("--rate", type=float, help="requests per second (default: INGEST_API_RATE_PER_S, 20)")
    c.add_argument("--json", action="store_true")
    lister = verbs.add_parser("list", help="keys' ids, labels, creation and last use (never the keys)")
    lister.add_argument("--tenant")
    lister.add_argument("--json", action="store_true")
    r = verbs.add_parser("revoke", help="revoke a key: refused from the next request on, by every replica")
    r.add_argument("key_id")
    r.add_argument("--json", action="store_true")

    s = commands.add_parser("serve", help="run the HTTP search service (POST /v1/search)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; put TLS in front)")
    s.add_argument("--port", type=int, default=8080)


def _row(row) -> dict:
    return {"key_id": row.key_id, "tenant": row.tenant_id, "name": row.label, "rate_per_s": row.rate_per_s,
            "created": row.created_at.isoformat(), "last_used": row.last_used_at and row.last_used_at.isoformat(),
            "revoked": row.revoked_at and row.revoked_at.isoformat(), "revoked_reason": row.revoked_reason}


def run(args: argparse.Namespace) -> int:
    """Run `api-key ...` or `serve`."""
    if args.command == "serve":
        from ingest_pipeline.service.app import serve

        return serve(args.host, args.port)
    _, ledger = prepare_environment()
    keys = ledger.api_keys
    if args.api_key_command == "create":
        tenant = validate_tenant(args.tenant)
        if args.rate is not None and not args.rate > 0:
            raise ValueError(f"--rate must be a positive number of requests per second, got {args.rate}")
        issued = keys.create(tenant, args.name, args.rate)
        result = {"tenant": tenant, "key_id": issued.row.key_id, "key": issued.key}
        if args.json:
            render.print_json(result)
        else:
            print(f"API key {issued.row.key_id} for tenant {tenant} (shown once; store it now):\n{issued.key}")
        return 0
    if args.api_key_command == "list":
        rows = [_row(row) for row in keys.listed(validate_tenant(args.tenant) if args.tenant else None)]
        if args.json:
            render.print_json(rows)
        else:
            for row in rows:
                state = f"revoked {row['revoked']} ({row['revoked_reason']})" if row["revoked"] else "live"
                print(f"{row['key_id']}  {row['tenant']}  {row['name'] or '-'}  created {row['created']}  "
                      f"last used {row['last_used'] or 'never'}  {state}")
        return 0
    try:
        row = keys.revoke(args.key_id)
    except UnknownApiKey as exc:
        render.print_error(str(exc))
        return 1
    render.print_json(_row(row)) if args.json else print(f"API key {row.key_id} revoked")
    return 0
