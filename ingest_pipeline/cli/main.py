"""`ingest-pipeline`: upload, ingest, search, status and rebuild, on the same instance as the UI."""

from __future__ import annotations

import argparse
import logging
import warnings

from ingest_pipeline.cli import api_keys as cli_api_keys
from ingest_pipeline.cli import keys as cli_keys
from ingest_pipeline.cli import local, render
from ingest_pipeline.cli import quarantine as cli_quarantine
from ingest_pipeline.cli import reconcile as cli_reconcile
from ingest_pipeline.cli.documents import ingest, rebuild, status, upload
from ingest_pipeline.cli.search import SearchFellBack, search, search_answers, search_lines
from ingest_pipeline.core.ids import InvalidName
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline.stores.landing_zone import LandingZoneUnavailable

__all__ = ["build_parser", "ingest", "main", "rebuild", "search", "status", "upload"]


def build_parser() -> argparse.ArgumentParser:
    """The `ingest-pipeline` parser: one subcommand per verb."""
    parser = argparse.ArgumentParser(prog="ingest-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("upload", help="register documents for a tenant (copies them into the landing zone)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--delete", action="store_true", help="delete the named documents instead")
    p.add_argument("--json", action="store_true")
    p.add_argument("paths", nargs="+")

    p = commands.add_parser("ingest", help="materialize every partition with pending work")
    p.add_argument("--tenant")
    p.add_argument("--allow-mass-delete", action="store_true",
                   help="confirm that files missing from the landing zone were removed on purpose")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("search", help="hybrid (keyword + vector) search in a tenant's encrypted index")
    p.add_argument("--tenant", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--mode", choices=("hybrid", "vector", "keyword"), default="hybrid",
                   help="ranking inside the index: BM25 and vector fused (default), vector only, or BM25 only")
    p.add_argument("--alpha", type=float, help="hybrid only: weight of the vector leg, 0 (keyword) to 1 (vector)")
    filters = p.add_argument_group("filters (evaluated inside the encrypted index)")
    filters.add_argument("--name", help="only this document (its exact name)")
    filters.add_argument("--name-prefix", help="only documents in this folder (ending in '/', e.g. reports/2026/)")
    filters.add_argument("--month-from", help="only documents uploaded in this month (YYYY-MM) or later")
    filters.add_argument("--month-to", help="only documents uploaded in this month (YYYY-MM) or earlier")
    filters.add_argument("--format", help="only documents of this format (pdf, docx, markdown, text, ...: an unknown "
                         "one is refused with the list); documents of unknown format never match")
    p.add_argument("--json", action="store_true")
    p.add_argument("--queries-file", help="one query per line; prints a JSON list of result lists")
    p.add_argument("query", nargs="?")

    p = commands.add_parser("status", help="documents, chunks and index vectors per tenant")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true")

    p = commands.add_parser("rebuild", help="rebuild a tenant's index from the Postgres cold copy")
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true")

    cli_reconcile.add_parser(commands)
    cli_quarantine.add_parser(commands)
    cli_keys.add_parsers(commands)
    cli_api_keys.add_parsers(commands)
    commands.add_parser("env", help="print shell exports that point the dagster CLI at this instance")
    commands.add_parser("stop-postgres", help="stop the embedded PostgreSQL server")
    commands.add_parser("demo", help="ingest the bundled sample corpus for two tenants and search it")
    p = commands.add_parser("dev", help="open the Dagster UI on this instance")
    p.add_argument("--port", type=int, default=3000)
    return parser


def dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the verb `args` name, render its result and return the exit code."""
    if args.command == "upload":
        result = upload(args.tenant, args.paths, delete=args.delete)
        render.print_json(result) if args.json else render.print_upload(args.tenant, result)
        return 1 if result["not_found"] or result["refused"] else 0
    if args.command == "ingest":
        summary = ingest(args.tenant, show_progress=not args.json, allow_mass_delete=args.allow_mass_delete)
        render.print_json(summary, default=str) if args.json else render.print_ingest(summary)
        return 1 if summary["failed_runs"] else 0
    if args.command == "search":
        from ingest_pipeline.work.search import InvalidSearchOption, SearchFilters, check_search_options

        filters = SearchFilters(name=args.name, name_prefix=args.name_prefix, month_from=args.month_from,
                                month_to=args.month_to, format=args.format)
        options = {"mode": args.mode, "alpha": args.alpha, "filters": filters}
        try:
            check_search_options(args.mode, args.alpha, args.top_k)
            filters.to_cyborgdb()
        except InvalidSearchOption as exc:
            flag = "--" + exc.field.removeprefix("filters.").replace("_", "-")
            parser.error(f"{flag}: {exc}")
        if args.queries_file:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SearchFellBack)
                render.print_json(search_lines(args.tenant, args.queries_file, args.top_k, **options))
            for warning in caught:
                render.print_warning(str(warning.message))
            return 0
        if not args.query:
            parser.error("search needs a QUERY or --queries-file")
        result = search_answers(args.tenant, [args.query], args.top_k, **options)
        hits = result["answers"][0]
        render.print_json(hits) if args.json else render.print_hits(args.query, hits, result["warning"])
        if result["warning"] and args.json:
            render.print_warning(result["warning"])
        return 0
    if args.command == "status":
        report = status(args.tenant)
        render.print_json(report) if args.json else render.print_status(report)
        return 0
    if args.command == "rebuild":
        result = rebuild(args.tenant)
        render.print_json(result) if args.json else render.print_rebuild(result)
        return 0 if result["success"] else 1
    if args.command == "reconcile":
        return cli_reconcile.run(args)
    if args.command == "quarantine":
        return cli_quarantine.run(args)
    if args.command in {"rotate-key", "rotate-master-key", "erase-tenant", "readmit-tenant"}:
        return cli_keys.run(args)
    if args.command in {"api-key", "serve"}:
        return cli_api_keys.run(args)
    if args.command == "env":
        return local.print_env()
    if args.command == "stop-postgres":
        render.print_stop_postgres(local.stop_postgres())
        return 0
    if args.command == "demo":
        return local.demo()
    if args.command == "dev":
        return local.dev(args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `ingest-pipeline` command: 0 on success, 1 for a failed run or an outage, 2 for a wrong argument."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(parser, args)
    except (InvalidName, FileNotFoundError, ValueError) as exc:
        render.print_error(str(exc))
        return 2
    except (LandingZoneUnavailable, TenantErased) as exc:
        render.print_error(str(exc))
        return 1
    except OSError as exc:  # a full or read-only disk: the file and the reason, no traceback
        render.print_error(f"{exc.filename or ''}: {exc.strerror or type(exc).__name__}")
        return 1
