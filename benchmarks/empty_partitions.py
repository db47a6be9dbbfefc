"""What a backfill over partitions with no pending work costs: milliseconds per partition, no model load.

A small document is ingested for one tenant (in a separate process); then, in this fresh process, the ingest
job runs for every (tenant, month) partition of several tenants over the year, none with pending work, as a
backfill of an unchanged or empty range would. Printed: the time per partition, whether the embedding model was
ever loaded, the share of the pipeline's own code in that time (the rest is Dagster's bookkeeping of a
run: with dagster-postgres, about a hundred events, each written on a new connection), and (measured
afterwards, in the same process) what one model load costs, i.e. what each of those partitions would
have paid if a run loaded the model regardless of work.

    .venv/bin/python benchmarks/empty_partitions.py [--tenants 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scratch import print_figures, scratch_installation

CORPUS = Path(__file__).resolve().parent.parent / "ingest_pipeline" / "sample_corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=8, help="tenants, each with its last 12 monthly partitions")
    args = parser.parse_args()

    with scratch_installation("ingest-bench-empty-") as _:
        cli = [sys.executable, "-m", "ingest_pipeline.cli"]
        subprocess.run([*cli, "upload", "--tenant", "t00", str(CORPUS / "acme" / "apache-license-2.0.txt")],
                       check=True, capture_output=True)
        subprocess.run([*cli, "ingest", "--json"], check=True, capture_output=True)

        from dagster import MultiPartitionKey

        from ingest_pipeline.definitions import build_definitions
        from ingest_pipeline.runtime.instance import QUIET_LOGGERS, dagster_instance, prepare_environment

        prepare_environment()
        instance = dagster_instance()
        tenants = [f"t{i:02d}" for i in range(args.tenants)]
        instance.add_dynamic_partitions("tenants", [t for t in tenants if not instance.has_dynamic_partition(
            "tenants", t)])
        job = build_definitions().resolve_job_def("ingest_job")
        from ingest_pipeline.defs.partitions import month_partitions

        months = month_partitions.get_partition_keys()[-12:]
        timings, own_work = [], []
        for tenant in tenants:
            for month in months:
                started = time.perf_counter()
                result = job.execute_in_process(
                    partition_key=MultiPartitionKey({"tenant": tenant, "month": month}), instance=instance,
                    raise_on_error=False, run_config=QUIET_LOGGERS,
                )
                timings.append(time.perf_counter() - started)
                own_work.append(sum(event.materialization.metadata["duration_s"].value
                                    for event in result.get_asset_materialization_events()))
                if not result.success:
                    print(f"run failed for {tenant} {month}", file=sys.stderr)
                    return 1
        model_loaded_by_backfill = "sentence_transformers" in sys.modules

        from ingest_pipeline.core.embedding import Embedder

        started = time.perf_counter()
        Embedder().embed(["warm-up"])
        model_load = time.perf_counter() - started

    per_partition = statistics.median(timings)
    print_figures({
        "partitions run (none with pending work)": len(timings),
        "total seconds": round(sum(timings), 2),
        "ms per partition, median (whole run: 4 assets, 3 checks)": round(per_partition * 1000, 1),
        "ms per partition, slowest": round(max(timings) * 1000, 1),
        "ms per partition in the four assets' own code, median": round(statistics.median(own_work) * 1000, 1),
        "embedding model loaded by the backfill": model_loaded_by_backfill,
        "one model load (ms), measured afterwards": round(model_load * 1000, 1),
        "a model load per partition would multiply the backfill by": round(
            (per_partition + model_load) / per_partition, 1),
    })
    return 1 if model_loaded_by_backfill else 0


if __name__ == "__main__":
    sys.exit(main())
