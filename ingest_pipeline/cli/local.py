"""`ingest-pipeline env`, `stop-postgres`, `demo` and `dev`: this installation on this machine."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from ingest_pipeline.cli import render
from ingest_pipeline.cli.documents import ingest, status, upload
from ingest_pipeline.cli.search import search
from ingest_pipeline.runtime.instance import prepare_environment

SAMPLE_CORPUS = Path(__file__).parents[1] / "sample_corpus"
DAGSTER_VARIABLES = ("DAGSTER_HOME", "INGEST_HOME", "INGEST_DAGSTER_PG_URL", "INGEST_DAGSTER_STORAGE_DIR",
                     "INGEST_DAGSTER_LOGS_DIR")
DEMO_QUERIES = {
    "acme": ["What is the default priority of a magic rule?", "How do I compress data with deflate?"],
    "globex": ["What are the magic bytes at the start of an xz stream?",
               "How do I decode DER-encoded data with libtasn1?"],
}


def print_env() -> int:
    """Print the variables the `dagster` CLI needs to reach this installation's instance, as shell exports."""
    prepare_environment()
    for name in DAGSTER_VARIABLES:
        print(f"export {name}={shlex.quote(os.environ[name])}")
    return 0


def stop_postgres() -> bool:
    """Stop this installation's embedded PostgreSQL server; False when there is none here."""
    from ingest_pipeline.runtime.settings import Settings, stop_embedded_postgres

    return stop_embedded_postgres(Settings.from_env().home)


def demo() -> int:
    """Upload the bundled sample corpus for two tenants, ingest it, and answer the demo queries."""
    for tenant in DEMO_QUERIES:
        render.print_upload_counts(tenant, upload(tenant, [str(SAMPLE_CORPUS / tenant)]))
    summary = ingest()
    render.print_ingest(summary)
    render.print_status(status())
    for tenant, queries in DEMO_QUERIES.items():
        render.out.rule(f"search --tenant {tenant}")
        for query, hits in zip(queries, search(tenant, queries, top_k=3), strict=True):
            render.print_hits(query, hits)
    render.out.print("\nThe runs, their metadata and checks are in the Dagster UI: [bold]make dev[/bold]. "
                     "The embedded PostgreSQL keeps running for it; [bold]make stop[/bold] stops it.")
    return 1 if summary["failed_runs"] else 0


def dev(port: int) -> int:
    """Replace this process with `dagster dev` on this installation's instance, on 127.0.0.1:`port`."""
    prepare_environment()
    root = Path(__file__).resolve().parents[2]
    dagster = Path(sys.executable).parent / "dagster"
    os.execv(str(dagster), [str(dagster), "dev", "-w", str(root / "workspace.yaml"),
                            "-h", "127.0.0.1", "-p", str(port)])
