"""What the CLI prints: rich tables, the ingest progress display and summary, JSON, and errors.

Results go to stdout (`out`, or plain JSON); progress, warnings and errors to stderr (`err`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict

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

out = Console()
err = Console(stderr=True, soft_wrap=True)  # an error names paths: never cut it into lines


def print_json(result, default=None) -> None:
    """The result as one line of JSON on stdout."""
    print(json.dumps(result, default=default))


def print_error(message: str) -> None:
    """An error on stderr, with no traceback."""
    err.print(f"[red]error:[/red] {message}")


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


@contextlib.contextmanager
def ingest_progress(ledger, tenants: list[str], enabled: bool = True) -> Iterator[None]:
    """Bars of documents chunked, chunks embedded and chunks indexed across `tenants`, read from the ledger while
    the block runs; shown on stderr when `enabled` and stderr is a terminal."""
    progress = Progress(TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(),
                        _RateColumn(), TimeRemainingColumn(),
                        console=err, disable=not (enabled and err.is_terminal))
    poller = _ProgressPoller(ledger, tenants, progress)
    with progress:
        poller.start()
        try:
            yield
        finally:
            poller.stop.set()
        poller.poll()


def print_skipped_tenant(erased: Exception) -> None:
    """An erased tenant whose landing folder was not read before an ingest."""
    err.print(f"[yellow]skipped[/yellow] {erased}: the files in its landing folder are not recorded")


def print_ingest(summary: dict) -> None:
    """The ingest summary: one line of totals, then each quarantined document, failed check and failed run."""
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


# ---- upload, search, status, rebuild ------------------------------------------------------------


def print_upload(tenant: str, result: dict[str, list[str]]) -> None:
    """One line per document: its outcome (uploaded, unchanged, deleted, not_found, refused) and name."""
    for outcome, names in result.items():
        for name in names:
            out.print(f"{outcome:>10}  {tenant}/{name}")


def print_upload_counts(tenant: str, result: dict[str, list[str]]) -> None:
    """One line for a tenant's upload: how many files were uploaded and how many were unchanged."""
    out.print(f"upload {tenant}: {len(result['uploaded'])} uploaded, {len(result['unchanged'])} unchanged")


def citation_text(hit: dict) -> str:
    """Where a hit came from, as the table shows it: "p. 3 · Terms > Payment" (a numbered page as "p. N", a sheet
    by its name); empty when the document has no pages or sections, or the chunk predates citations."""
    page, section = hit.get("page"), hit.get("section")
    parts = [f"p. {page}" if page and page.isdigit() else page, section]
    return " · ".join(part for part in parts if part)


def print_warning(message: str) -> None:
    """A warning on stderr (a search that ranked otherwise than asked)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


def print_hits(query: str, hits: list[dict], warning: str | None = None) -> None:
    """A query's hits as a table: rank, score (and what it is), source and chunk, where in it (page and section),
    the text (cut at 320 characters); a fallback's warning under it."""
    kind = hits[0].get("score_kind") if hits else None
    table = Table(title=f"[bold]{query}[/bold]" + (f" [dim]({kind})[/dim]" if kind else ""), title_justify="left",
                  show_lines=True, caption=f"warning: {escape(warning)}" if warning else None)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source")
    table.add_column("where", overflow="fold", max_width=28)
    table.add_column("text", overflow="fold", ratio=1)
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit["text"].split())
        table.add_row(str(rank), f"{hit['score']:.3f}", f"{hit['source']}\n#{hit['chunk_sequence']}",
                      citation_text(hit), snippet[:320] + ("..." if len(snippet) > 320 else ""))
    out.print(table if hits else f"{query}: no results")
    if warning and not hits:
        print_warning(warning)


def print_status(report: dict) -> None:
    """The status report as a table, one row per tenant."""
    table = Table(title="ingest-pipeline status", title_justify="left")
    for column in ("tenant", "documents", "chunks", "indexed", "quarantined", "index_vectors", "search"):
        table.add_column(column, justify="left" if column in {"tenant", "search"} else "right")
    for tenant, row in report["tenants"].items():
        table.add_row(tenant, *(str(row.get(k, "")) for k in ("documents", "chunks", "indexed", "quarantined",
                                                               "index_vectors", "search")))
    out.print(table)


def print_rebuild(result: dict) -> None:
    """The rebuild's run and the tenant's status after it."""
    out.print(result)


def print_stop_postgres(stopped: bool) -> None:
    """Whether an embedded PostgreSQL server was stopped."""
    out.print("stopped" if stopped else "no embedded server here")


# ---- reconcile ----------------------------------------------------------------------------------


def _reconciled_tenant_line(tenant: str, row: dict) -> str:
    if row["error"]:
        return f"[red]{tenant}: not reconciled[/red]: {escape(row['error'])}"
    found = [(row["missing"], "missing"), (row["orphans"], "orphan vectors"),
             (row["unfinished_rows"], "unfinished rows"), (row["stale_rows"], "stale rows"),
             (row["rebuild_missing"], "missing in the rebuild"),
             (row["rebuild_orphans"], "orphan vectors in the rebuild"),
             (row.get("text_missing", 0), "without their full-text field"),
             (int(bool(row.get("old_layout"))), "index on the vector-only layout")]
    done = [(row["repaired_missing"], "re-upserted from the cold copy"), (row["removed_orphans"], "orphans deleted"),
            (row["finished_rows"], "rows finished"), (row["removed_stale_rows"], "stale rows removed"),
            (row.get("repaired_text", 0), "full-text fields restored"),
            (int(bool(row.get("layout_rebuilt"))), "index rebuilt in the current layout")]
    drift = ", ".join(f"{n} {what}" for n, what in found if n)
    line = f"[bold]{tenant}[/bold]: " + (drift or "in line with the ledger")
    if any(n for n, _ in done):
        line += " -> " + ", ".join(f"{n} {what}" for n, what in done if n)
    line += f"; index {row['index_vectors_after']} vectors"
    if row["pending_rows"]:
        line += f", {row['pending_rows']} chunks await embedding (ingest)"
    return line + (f" ({escape(row['note'])})" if row["note"] else "")


def print_reconcile_report(report: dict) -> None:
    """One line per tenant (the drift found, what was repaired), then the totals and the run."""
    mode = "dry run, nothing repaired" if report["dry_run"] else "repaired"
    for tenant, row in report["tenants"].items():
        out.print(_reconciled_tenant_line(tenant, row))
    totals = report["totals"]
    out.print(f"{totals['tenants_reconciled']} tenant(s), {totals['tenants_with_drift']} with drift ({mode}); "
              f"run {report['run_id']} (details in the Dagster UI: make dev)")
    if not report["success"]:
        out.print(f"[red]reconcile failed[/red]: {escape(report['error'] or 'see the run in the Dagster UI')}")


# ---- quarantine ---------------------------------------------------------------------------------


def _limits_text(limits: dict | None) -> str:
    return ", ".join(f"{name}={value}" for name, value in limits.items()) if limits else "-"


def print_quarantined(report: dict) -> None:
    """The quarantined documents as a table: tenant, document, code, reason, limits, when."""
    table = Table(title="quarantined documents", title_justify="left")
    for column in ("tenant", "document", "code", "reason", "limits", "quarantined at"):
        table.add_column(column, overflow="fold")
    for row in report["quarantined"]:
        table.add_row(row["tenant"], escape(row["document"]), row["code"] or "", escape(row["reason"]),
                      _limits_text(row["limits"]), row["quarantined_at"][:19].replace("T", " ") + " UTC")
    out.print(table if report["quarantined"] else "no quarantined documents")


def print_quarantine_retry(result: dict) -> None:
    """The quarantine records cleared, and the names given that were not quarantined."""
    for row in result["cleared"]:
        code = escape(f"[{row['code'] or 'no code'}]")
        limits = _limits_text(row["limits"])
        out.print(f"cleared {code} {result['tenant']}/{escape(row['document'])} (limits: {limits})")
    for name in result["not_quarantined"]:
        out.print(f"[yellow]not quarantined[/yellow] {result['tenant']}/{escape(name)}")
    out.print(f"{len(result['cleared'])} document(s) cleared: the next `ingest-pipeline ingest` tries them again")


# ---- keys ---------------------------------------------------------------------------------------


def print_rotate_key(result: dict) -> None:
    """The active data key version and the versions before and after, or why the rotation stopped."""
    if result["success"]:
        out.print(f"tenant {result['tenant']}: data key version {result['active_version']} is active; key "
                  f"versions {result['versions_before']} -> {result['versions_after']}; run {result['run_id']}")
    else:
        out.print(f"[red]rotate-key failed[/red]: {result['error']} ({result['rows_left']} rows left under "
                  f"older keys; run `ingest-pipeline rotate-key --tenant {result['tenant']} --resume`)")


def print_rotate_master_key(result: dict) -> None:
    """How many keys were re-wrapped, from which master key to which."""
    out.print(f"{result['keys_rewrapped']} keys re-wrapped from master key {result['old_master_key_id']} to "
              f"{result['new_master_key_id']}: set INGEST_MASTER_KEY to the new key now")


def print_erase_needs_confirmation(tenant: str) -> None:
    """`erase-tenant` without --yes: what it would do."""
    out.print(f"erasing tenant {tenant} destroys its keys and data for good: add --yes to confirm")


def print_erased(result: dict) -> None:
    """What an erasure destroyed: keys, rows, indexes, landing files and runs."""
    out.print(f"tenant {result['tenant_id']} erased: {result['keys_destroyed']} keys destroyed, "
              f"{sum(result['rows_deleted'].values())} rows, {len(result['indexes_dropped'])} index(es), "
              f"{result['landing_files_deleted']} landing files, {result['dagster_runs_deleted']} runs")


def print_readmit_needs_confirmation(tenant: str) -> None:
    """`readmit-tenant` without --yes: what it would do."""
    out.print(f"re-admitting tenant {tenant} lets its uploads create it anew: add --yes to confirm")


def print_readmitted(result: dict) -> None:
    """Who re-admitted the tenant, or why nothing was done."""
    if result["readmitted"]:
        out.print(f"tenant {result['tenant_id']} (erased on {result['erased_at']}) re-admitted by "
                  f"{result['readmitted_by']}: its next upload creates it anew")
    else:
        out.print(result["note"])
