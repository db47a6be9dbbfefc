"""What the CLI prints: rich tables, the ingest progress display and summary, JSON, and errors.

Results go to stdout (`out`, or plain JSON); progress, warnings and errors to stderr (`err`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator

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
            totals.update(self.ledger.tenant_status(tenant))
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
    out.print(f"upload {tenant}: {len(result['uploaded'])} uploaded, {len(result['unchanged'])} unchanged")


def print_hits(query: str, hits: list[dict]) -> None:
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


def print_status(report: dict) -> None:
    table = Table(title="ingest-pipeline status", title_justify="left")
    for column in ("tenant", "documents", "chunks", "indexed", "quarantined", "index_vectors"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for tenant, row in report["tenants"].items():
        table.add_row(tenant, *(str(row[k]) for k in ("documents", "chunks", "indexed", "quarantined",
                                                       "index_vectors")))
    out.print(table)


def print_rebuild(result: dict) -> None:
    out.print(result)


def print_stop_postgres(stopped: bool) -> None:
    out.print("stopped" if stopped else "no embedded server here")
