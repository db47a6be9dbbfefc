"""`ingest-pipeline quarantine`: list the quarantined documents, and clear records so the next ingest retries them.

A document is quarantined by `document_chunks` with a reason code, and with the limits it failed under when a
limit (time, memory, size) refused it rather than its content. Records never hold document text.
"""

from __future__ import annotations

import argparse
from datetime import UTC

from ingest_pipeline.cli import render
from ingest_pipeline.core.ids import validate_document_name, validate_tenant
from ingest_pipeline.runtime.instance import prepare_environment


def quarantined(tenant: str | None = None) -> dict:
    """{"quarantined": [{tenant, document, code, reason, limits, quarantined_at}]}, by tenant and document.

    `limits` is null when the content is at fault (the same bytes stay quarantined under any settings), else
    the limits the document failed under: a run with a larger one tries it again.
    """
    _, ledger = prepare_environment()
    tenants = [validate_tenant(tenant)] if tenant else ledger.tenants.with_uploads()
    return {"quarantined": [
        {"tenant": tenant_id, "document": row.doc_name, "code": row.reason_code, "reason": row.reason,
         "limits": row.limits, "quarantined_at": row.quarantined_at.astimezone(UTC).isoformat()}
        for tenant_id in tenants for row in ledger.quarantine.listed(tenant_id)
    ]}


def retry(tenant: str, names: list[str] | None = None) -> dict:
    """Clear the quarantine records of the tenant's named documents (all of its quarantined documents when no
    name is given) and register them again, so the next `ingest` tries them.

    {"tenant", "cleared": [{document, code, limits}], "not_quarantined": [names given that are not quarantined]}
    """
    tenant = validate_tenant(tenant)
    names = [validate_document_name(name) for name in names] if names else None
    _, ledger = prepare_environment()
    with ledger.tenant_writer(tenant) as session:  # never while a run writes the tenant's documents
        rows = ledger.quarantine.release(session.conn, tenant, names)
    cleared = [{"document": row.doc_name, "code": row.reason_code, "limits": row.limits} for row in rows]
    done = {row["document"] for row in cleared}
    return {"tenant": tenant, "cleared": cleared, "not_quarantined": [n for n in names or [] if n not in done]}


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("quarantine", help="list quarantined documents (reason, code, limits); "
                                 "`quarantine retry` clears records so the next ingest tries them again")
    parser.add_argument("--tenant", help="only this tenant (default: every tenant)")
    parser.add_argument("--json", action="store_true")
    actions = parser.add_subparsers(dest="quarantine_command")
    retry_parser = actions.add_parser("retry", help="clear quarantine records so the next ingest tries the "
                                      "documents again")
    retry_parser.add_argument("--tenant", required=True)
    retry_parser.add_argument("--json", action="store_true")
    retry_parser.add_argument("names", nargs="*", metavar="NAME",
                              help="document names (default: all of the tenant's quarantined documents)")


def run(args: argparse.Namespace) -> int:
    if args.quarantine_command == "retry":
        result = retry(args.tenant, args.names)
        render.print_json(result) if args.json else render.print_quarantine_retry(result)
        return 1 if result["not_quarantined"] else 0
    report = quarantined(args.tenant)
    render.print_json(report) if args.json else render.print_quarantined(report)
    return 0
