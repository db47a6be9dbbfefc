"""`ingest-pipeline`: upload, ingest, search, status and rebuild, on the same instance as the UI."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ingest_pipeline.cli import keys as cli_keys
from ingest_pipeline.cli import quarantine as cli_quarantine
from ingest_pipeline.cli import reconcile as cli_reconcile
from ingest_pipeline.core.ids import InvalidName, document_id, validate_document_name, validate_tenant
from ingest_pipeline.runtime.instance import dagster_instance, monitored_run_tags, prepare_environment
from ingest_pipeline.stores.key_vault import TenantErased, UnknownTenant
from ingest_pipeline.stores.landing_zone import LandingZoneUnavailable, RefusedFile
from ingest_pipeline.stores.ledger import sha256_file

out = Console()
err = Console(stderr=True, soft_wrap=True)  # an error names paths: never cut it into lines
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SAMPLE_CORPUS = Path(__file__).parents[1] / "sample_corpus"


def _definitions():
    from ingest_pipeline.definitions import build_definitions, build_resources

    # Built on each call: the environment decides the backends, and tests change it between calls.
    return build_definitions(), build_resources()


# ---- upload -------------------------------------------------------------------------------------


def _files(paths: list[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(document name, file) pairs, and the names refused: a file keeps its name, a folder's files their
    relative paths.

    Two files that would get one name are refused, so one upload never silently replaces another. In a
    folder, symbolic links and special files are skipped and reported; one named explicitly is refused
    before anything is uploaded. Links are never followed, so an upload never reaches outside what was named.
    """
    found, refused = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_symlink():
            raise RefusedFile(f"{raw} is a symbolic link: links are never uploaded (upload the file it points to)",
                              code="symlink")
        if path.is_dir():
            # Every visible file is uploaded, so one in an unsupported format is quarantined with its reason.
            for file in sorted(path.rglob("*")):
                name = file.relative_to(path).as_posix()
                if any(part.startswith(".") for part in Path(name).parts) or file.is_dir():
                    continue
                if file.is_symlink() or not file.is_file():
                    refused.append(f"{name} ({'symlink' if file.is_symlink() else 'special-file'})")
                else:
                    found.append((name, file))
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    found = [(validate_document_name(name), file) for name, file in found]
    names = Counter(name for name, _ in found)
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise ValueError(f"several files would be uploaded as {', '.join(clashes)}: upload them separately")
    return found, refused


def _landed_digest(landed: Path) -> str | None:
    """The landed file's SHA-256; None when there is none, or a link or FIFO took its place (replaced by store)."""
    try:
        return sha256_file(landed)
    except (FileNotFoundError, RefusedFile):
        return None


def upload(tenant: str, paths: list[str], delete: bool = False) -> dict[str, list[str]]:
    """Register documents for a tenant: copy into the landing zone and record the upload event."""
    from ingest_pipeline.defs.partitions import tenant_partitions
    from ingest_pipeline.stores.landing_zone import LandingZone
    from ingest_pipeline.work.uploads import current_month, is_current, record_file, refuse_erased

    tenant = validate_tenant(tenant)
    settings, ledger = prepare_environment()
    zone = LandingZone(settings.landing_dir)
    month = current_month()
    outcome: dict[str, list[str]] = {"uploaded": [], "unchanged": [], "deleted": [], "not_found": []}
    items, outcome["refused"] = ([(validate_document_name(p), None) for p in paths], []) if delete else _files(paths)
    with ledger.connect() as conn:
        with conn.transaction():
            refuse_erased(ledger, conn, tenant)  # an erased tenant: nothing copied, nothing recorded
        for name, source in items:
            doc_id = document_id(tenant, name)
            latest = ledger.uploads.latest(conn, doc_id)
            if delete:
                if latest is None or latest.is_delete:
                    outcome["not_found"].append(name)
                    continue
                # The file goes first: a sensor tick in between must not take it for a new upload.
                zone.remove(tenant, name)
                with conn.transaction():
                    refuse_erased(ledger, conn, tenant)
                    ledger.uploads.record(conn, tenant_id=tenant, doc_id=doc_id, doc_name=name, content_sha256=None,
                                         size_bytes=None, is_delete=True, partition_month=month)
                outcome["deleted"].append(name)
                continue
            digest = sha256_file(source)
            landed = zone.path(tenant, name)
            if is_current(latest, digest) and _landed_digest(landed) == digest:
                outcome["unchanged"].append(name)
                continue
            zone.store(tenant, name, source)
            try:
                record_file(ledger, conn, tenant, name, landed.stat(), digest, month)
            except TenantErased:  # erased while this upload ran: its erasure has removed (or will remove) the rest
                landed.unlink(missing_ok=True)
                raise
            outcome["uploaded"].append(name)
    if outcome["uploaded"] or outcome["deleted"]:
        instance = dagster_instance()
        if not instance.has_dynamic_partition(tenant_partitions.name, tenant):
            instance.add_dynamic_partitions(tenant_partitions.name, [tenant])
    return outcome


# ---- ingest -------------------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:6.1f}/s" if task.speed else "      -/s")


class _ProgressPoller(threading.Thread):
    """Polls the ledger and updates a progress display while runs execute in the main thread."""

    def __init__(self, ledger, tenants: list[str], progress: Progress):
        super().__init__(daemon=True)
        self.ledger, self.tenants, self.progress = ledger, tenants, progress
        self.stop = threading.Event()
        self.documents = progress.add_task("documents chunked", total=None)
        self.chunks = progress.add_task("chunks embedded", total=None)
        self.indexed = progress.add_task("chunks indexed", total=None)

    def poll(self) -> None:
        totals: Counter[str] = Counter()
        for tenant in self.tenants:
            totals.update(asdict(self.ledger.tenants.status(tenant)))
        self.progress.update(self.documents, total=totals["documents"],
                             completed=totals["documents"] - totals["pending_documents"])
        self.progress.update(self.chunks, total=totals["chunks"], completed=totals["embedded"])
        self.progress.update(self.indexed, total=totals["chunks"], completed=totals["indexed"])

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(Exception):  # the display must never break a run
                self.poll()


def _scan_landing_zone(ledger, landing_dir: Path, tenant: str | None) -> set[tuple[str, str]]:
    """Files copied straight into the landing zone become uploads, as the upload sensor records them; returns
    the partitions of live documents whose file was removed (a deletion by removal). One walk per tenant.

    Raises LandingZoneUnavailable when the landing zone or the folder of a tenant with live documents
    is missing or unreadable: that is an outage to fix, never a reason to delete.
    """
    from ingest_pipeline.core.ids import TENANT_PATTERN
    from ingest_pipeline.stores.landing_zone import LandingZone
    from ingest_pipeline.work.uploads import record_dropped_files

    zone = LandingZone(landing_dir)
    live: dict[str, list[dict]] = {}
    for doc in ledger.documents.live(tenant):
        live.setdefault(doc.tenant_id, []).append(doc)
    folders = [tenant] if tenant else sorted(p.name for p in zone.root.iterdir()
                                             if p.is_dir() and TENANT_PATTERN.fullmatch(p.name)) \
        if zone.root.is_dir() else []
    removed: set[tuple[str, str]] = set()
    outage: LandingZoneUnavailable | None = None
    for tenant_id in sorted(set(folders) | set(live)):
        try:
            found = record_dropped_files(ledger, zone, tenant_id, limit=1_000_000, live_documents=live.get(tenant_id))
        except TenantErased as exc:
            err.print(f"[yellow]skipped[/yellow] {exc}: the files in its landing folder are not recorded")
            continue
        except LandingZoneUnavailable as exc:
            if tenant_id in live:  # a tenant without documents has nothing to lose
                outage = outage or exc
            continue
        removed |= {(tenant_id, doc.partition_month) for doc in found.removed}
    if outage is not None:
        raise outage
    return removed


def ingest(tenant: str | None = None, show_progress: bool = True, allow_mass_delete: bool = False) -> dict:
    """Materialize the asset graph for every (tenant, month) partition with pending work.

    `allow_mass_delete` confirms that documents missing from the landing zone were removed on purpose,
    even when more than the allowed share of a partition is gone at once.
    """
    from dagster import MultiPartitionKey

    from ingest_pipeline.defs.partitions import MONTH_DIMENSION, TENANT_DIMENSION, tenant_partitions

    if tenant:
        validate_tenant(tenant)
    settings, ledger = prepare_environment()
    if tenant:
        from ingest_pipeline.work.uploads import refuse_erased

        with ledger.connect() as conn, conn.transaction():
            refuse_erased(ledger, conn, tenant)  # TenantErased: nothing to ingest, and it says why
    instance = dagster_instance()
    defs, resources = _definitions()
    job = defs.resolve_job_def("ingest_job")
    removed = _scan_landing_zone(ledger, settings.landing_dir, tenant)
    # Documents quarantined under a smaller extraction limit than this run's are tried again.
    limits = cli_quarantine.current_limits(resources["landing"])
    partitions = sorted(set(ledger.uploads.pending_partitions(tenant, limits)) | removed)
    tenants = sorted({t for t, _ in partitions})
    missing = [t for t in tenants if not instance.has_dynamic_partition(tenant_partitions.name, t)]
    if missing:
        instance.add_dynamic_partitions(tenant_partitions.name, missing)

    totals: Counter[str] = Counter()
    stage_seconds: Counter[str] = Counter()
    runs = []
    if partitions:
        # One model per process: start loading it now, so Dagster's start and the chunking overlap the load.
        resources["embedding_model"].preload()
    started = time.perf_counter()
    progress = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(),
                        _RateColumn(), TimeRemainingColumn(),
                        console=err, disable=not (show_progress and err.is_terminal))
    poller = _ProgressPoller(ledger, tenants, progress)
    with progress:
        poller.start()
        for tenant_id, month in partitions:
            key = MultiPartitionKey({TENANT_DIMENSION: tenant_id, MONTH_DIMENSION: month})
            run_config = {**QUIET_LOGGERS, "ops": {"raw_documents": {"config": {"allow_mass_delete": True}}}} \
                if allow_mass_delete else QUIET_LOGGERS
            result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                            run_config=run_config, tags=monitored_run_tags())
            for event in result.get_asset_materialization_events():
                for name, value in event.materialization.metadata.items():
                    if isinstance(value.value, int | float) and not isinstance(value.value, bool):
                        totals[name] += value.value
                duration = event.materialization.metadata.get("duration_s")
                if duration is not None:
                    stage_seconds[event.asset_key.path[-1]] += duration.value
            checks = result.get_asset_check_evaluations()
            runs.append({"tenant": tenant_id, "month": month, "run_id": result.run_id,
                         "success": result.success, "checks_passed": sum(c.passed for c in checks),
                         "checks_failed": sorted(c.check_name for c in checks if not c.passed),
                         "error": None if result.success else _run_error(result)})
        poller.stop.set()
        poller.poll()
    summary_keys = ["documents_new", "documents_changed", "documents_unchanged", "documents_deleted",
                    "documents_quarantined", "chunks", "tokens", "chunks_embedded", "chunks_upserted",
                    "chunks_removed"]
    return {
        "runs": runs,
        "failed_runs": sum(not r["success"] for r in runs),
        "failed_checks": sum(len(r["checks_failed"]) for r in runs),
        "totals": {k: int(totals[k]) for k in summary_keys},
        "embedding_chunks_per_second": round(totals["chunks_embedded"] / totals["embedding_seconds"], 1)
        if totals["embedding_seconds"] else None,
        "seconds": round(time.perf_counter() - started, 2),
        "stage_seconds": {stage: round(seconds, 2) for stage, seconds in stage_seconds.items()},
        "quarantined": {t: [{"document": q.doc_name, "code": q.reason_code, "reason": q.reason,
                             **({"limits": q.limits} if q.limits else {})}
                            for q in ledger.quarantine.listed(t)] for t in tenants},
    }


# ---- search, status, rebuild --------------------------------------------------------------------


def _run_error(result) -> str | None:
    """Why a run failed: the first step failure, or the resource (setting) that could not start.
    Messages are already free of document content and secrets."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            message = error.message.strip()
            # "Exceeded max_retries of 3" says nothing of why: the last attempt's error is its cause.
            while error.cause is not None and "max_retries" in message:
                error = error.cause
                message = f"{message}: {error.message.strip()}"
            return message
        if event.event_type_value == "RESOURCE_INIT_FAILURE":
            error = event.event_specific_data.error
            while error.cause is not None:
                error = error.cause
            return error.message.strip()
    return None


def search(tenant: str, queries: list[str], top_k: int = 5) -> list[list[dict]]:
    from ingest_pipeline.work.indexing import open_live_index
    from ingest_pipeline.work.search import search_tenant

    tenant = validate_tenant(tenant)
    prepare_environment()
    _, resources = _definitions()
    keyring, model, ledger = resources["keyring"], resources["embedding_model"], resources["ledger"].ledger
    try:
        keys = keyring.keyset(tenant)  # TenantErased for an erased tenant: an error, not an empty answer
    except UnknownTenant:
        return [[] for _ in queries]
    index = open_live_index(ledger, resources["cyborgdb"].indexes, keys.keys())
    answers = search_tenant(
        tenant_id=tenant, queries=queries, top_k=top_k, embedder=model.embedder, index=index, ledger=ledger,
        # A row moved to a newer key version since the keys were read (a rotation) reads them again.
        encryptor_for=lambda v: (keys if v in keys.data_keys else keyring.keyset(tenant)).encryptor(v),
        model_ids=(model.model_id, model.legacy_model_id),
    )
    return [[hit.as_dict() for hit in hits] for hits in answers]


def status(tenant: str | None = None) -> dict:
    from ingest_pipeline.work.indexing import open_live_index

    _, ledger = prepare_environment()
    _, resources = _definitions()
    keyring, indexes = resources["keyring"], resources["cyborgdb"].indexes
    tenants = [validate_tenant(tenant)] if tenant else ledger.tenants.with_uploads()
    report = {}
    for tenant_id in tenants:
        counts = ledger.tenants.status(tenant_id)
        try:
            index = open_live_index(ledger, indexes, keyring.tenant_keys(tenant_id))
        except UnknownTenant:  # uploaded, never ingested
            index = None
        report[tenant_id] = {
            "documents": counts.documents, "chunks": counts.chunks, "indexed": counts.indexed,
            "quarantined": counts.quarantined, "index_vectors": index.count() if index else 0,
        }
    return {"tenants": report}


def rebuild(tenant: str, lock_segment_s: float | None = None) -> dict:
    from ingest_pipeline.work.erasure import TENANT_JOB_TAG

    tenant = validate_tenant(tenant)
    prepare_environment()
    instance = dagster_instance()
    defs, _ = _definitions()
    job = defs.resolve_job_def("rebuild_tenant_index")
    op_config = {"tenant": tenant, **({} if lock_segment_s is None else {"lock_segment_s": lock_segment_s})}
    config = {"ops": {"rebuild_index_from_cold_copy": {"config": op_config}}, **QUIET_LOGGERS}
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False,
                                    tags={**monitored_run_tags(), TENANT_JOB_TAG: tenant})  # erasure finds it
    return {"run_id": result.run_id, "success": result.success, **status(tenant)["tenants"][tenant]}


# ---- presentation -------------------------------------------------------------------------------


def _print_hits(query: str, hits: list[dict]) -> None:
    table = Table(title=f"[bold]{query}[/bold]", title_justify="left", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source")
    table.add_column("text", overflow="fold", ratio=1)
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit["text"].split())
        table.add_row(str(rank), f"{hit['score']:.3f}", f"{hit['source']}\n#{hit['chunk_sequence']}",
                      snippet[:320] + ("..." if len(snippet) > 320 else ""))
    out.print(table if hits else f"{query}: no results")


def _print_status(report: dict) -> None:
    table = Table(title="ingest-pipeline status", title_justify="left")
    for column in ("tenant", "documents", "chunks", "indexed", "quarantined", "index_vectors"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for tenant, row in report["tenants"].items():
        table.add_row(tenant, *(str(row[k]) for k in ("documents", "chunks", "indexed", "quarantined",
                                                       "index_vectors")))
    out.print(table)


def _print_ingest(summary: dict) -> None:
    totals = summary["totals"]
    out.print(
        f"[bold]ingested[/bold] {len(summary['runs'])} partition run(s) in {summary['seconds']} s: "
        f"documents {totals['documents_new']} new, {totals['documents_changed']} changed, "
        f"{totals['documents_unchanged']} unchanged, {totals['documents_deleted']} deleted, "
        f"{totals['documents_quarantined']} quarantined; chunks {totals['chunks_embedded']} embedded"
        + (f" ({summary['embedding_chunks_per_second']}/s)" if summary["embedding_chunks_per_second"] else "")
        + f", {totals['chunks_upserted']} indexed, {totals['chunks_removed']} removed"
    )
    for tenant, items in summary["quarantined"].items():
        for item in items:
            code = f" [{item['code']}]" if item.get("code") else ""  # escaped: rich would take it for markup
            out.print(f"[yellow]quarantined[/yellow]{escape(code)} {tenant}/{escape(item['document'])}: "
                      f"{escape(item['reason'])}")
    for run in summary["runs"]:
        for check in run["checks_failed"]:
            out.print(f"[red]check failed[/red] {run['tenant']} {run['month']}: {check}")
        if not run["success"]:
            out.print(f"[red]run failed[/red] {run['tenant']} {run['month']}: {run['error'] or ''}\n"
                      f"  run id {run['run_id']} (details in the Dagster UI: make dev)")


def _demo() -> int:
    """Upload the bundled sample corpus for two tenants, ingest it, and answer the demo queries."""
    for tenant in ("acme", "globex"):
        result = upload(tenant, [str(SAMPLE_CORPUS / tenant)])
        out.print(f"upload {tenant}: {len(result['uploaded'])} uploaded, {len(result['unchanged'])} unchanged")
    summary = ingest()
    _print_ingest(summary)
    _print_status(status())
    demo_queries = {
        "acme": ["What is the default priority of a magic rule?", "How do I compress data with deflate?"],
        "globex": ["What are the magic bytes at the start of an xz stream?",
                   "How do I decode DER-encoded data with libtasn1?"],
    }
    for tenant, queries in demo_queries.items():
        out.rule(f"search --tenant {tenant}")
        for query, hits in zip(queries, search(tenant, queries, top_k=3), strict=True):
            _print_hits(query, hits)
    out.print("\nThe runs, their metadata and checks are in the Dagster UI: [bold]make dev[/bold]. "
              "The embedded PostgreSQL keeps running for it; [bold]make stop[/bold] stops it.")
    return 1 if summary["failed_runs"] else 0


DAGSTER_VARIABLES = ("DAGSTER_HOME", "INGEST_HOME", "INGEST_DAGSTER_PG_URL", "INGEST_DAGSTER_STORAGE_DIR",
                     "INGEST_DAGSTER_LOGS_DIR")


def _env() -> int:
    """Print the variables the `dagster` CLI needs to reach this installation's instance, as shell exports."""
    import shlex

    prepare_environment()
    for name in DAGSTER_VARIABLES:
        print(f"export {name}={shlex.quote(os.environ[name])}")
    return 0


def _dev(port: int) -> int:
    prepare_environment()
    root = Path(__file__).resolve().parents[2]
    dagster = Path(sys.executable).parent / "dagster"
    os.execv(str(dagster), [str(dagster), "dev", "-w", str(root / "workspace.yaml"),
                            "-h", "127.0.0.1", "-p", str(port)])


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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

    p = commands.add_parser("search", help="semantic search in a tenant's encrypted index")
    p.add_argument("--tenant", required=True)
    p.add_argument("--top-k", type=int, default=5)
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
    commands.add_parser("env", help="print shell exports that point the dagster CLI at this instance")
    commands.add_parser("stop-postgres", help="stop the embedded PostgreSQL server")
    commands.add_parser("demo", help="ingest the bundled sample corpus for two tenants and search it")
    p = commands.add_parser("dev", help="open the Dagster UI on this instance")
    p.add_argument("--port", type=int, default=3000)

    args = parser.parse_args(argv)
    try:
        if args.command == "upload":
            result = upload(args.tenant, args.paths, delete=args.delete)
            if args.json:
                print(json.dumps(result))
            else:
                for outcome, names in result.items():
                    for name in names:
                        out.print(f"{outcome:>10}  {args.tenant}/{name}")
            return 1 if result["not_found"] or result["refused"] else 0
        if args.command == "ingest":
            summary = ingest(args.tenant, show_progress=not args.json, allow_mass_delete=args.allow_mass_delete)
            print(json.dumps(summary, default=str)) if args.json else _print_ingest(summary)
            return 1 if summary["failed_runs"] else 0
        if args.command == "search":
            if args.queries_file:
                # One answer per line, in order; a blank line gets an empty list so the lines stay aligned.
                lines = [line.strip() for line in Path(args.queries_file).read_text().splitlines()]
                answers = iter(search(args.tenant, [q for q in lines if q], args.top_k))
                print(json.dumps([next(answers) if q else [] for q in lines]))
                return 0
            if not args.query:
                parser.error("search needs a QUERY or --queries-file")
            hits = search(args.tenant, [args.query], args.top_k)[0]
            print(json.dumps(hits)) if args.json else _print_hits(args.query, hits)
            return 0
        if args.command == "status":
            report = status(args.tenant)
            print(json.dumps(report)) if args.json else _print_status(report)
            return 0
        if args.command == "rebuild":
            result = rebuild(args.tenant)
            print(json.dumps(result)) if args.json else out.print(result)
            return 0 if result["success"] else 1
        if args.command == "reconcile":
            return cli_reconcile.run(args)
        if args.command == "quarantine":
            return cli_quarantine.run(args)
        if args.command in {"rotate-key", "rotate-master-key", "erase-tenant", "readmit-tenant"}:
            return cli_keys.run(args)
        if args.command == "env":
            return _env()
        if args.command == "stop-postgres":
            from ingest_pipeline.runtime.settings import Settings, stop_embedded_postgres

            out.print("stopped" if stop_embedded_postgres(Settings.from_env().home) else "no embedded server here")
            return 0
        if args.command == "demo":
            return _demo()
        if args.command == "dev":
            return _dev(args.port)
    except (InvalidName, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    except (LandingZoneUnavailable, TenantErased) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    except OSError as exc:  # a full or read-only disk: the file and the reason, no traceback
        err.print(f"[red]error:[/red] {exc.filename or ''}: {exc.strerror or type(exc).__name__}")
        return 1
    return 0

