"""What one upload-sensor tick costs at scale: many tenants with many files already recorded.

Creates `--tenants` x `--files` small files in a scratch landing zone (a few subfolders per tenant), records each
as an upload and a live document (as if ingested; written straight into the ledger with COPY, so the setup takes
seconds, not hours of ingestion), back-dates them an hour, and times, on the real Dagster instance and ledger:

- the first tick (an empty cursor, as after an upgrade): every tenant walked once;
- a tick with nothing changed: one lstat per folder, plus VERIFY_TENANTS_PER_TICK tenants walked in their turn
  (and the same with no tenant in turn: the folder mtimes alone);
- a tick with one new file, three folders down in one tenant;
- the full walk every tick did before (re-enacted with today's functions): each tenant's folder walked and
  compared with its latest uploads, every live document read, and every folder walked a second time.

    .venv/bin/python benchmarks/sensor_tick.py [--tenants 200] [--files 1000]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

from scratch import print_figures, scratch_installation

SUBFOLDERS = ("", "inbox", "archive/2026", "archive/2026/q4")


def populate(landing, ledger, tenants: list[str], files: int, month: str) -> int:
    """Write the files (back-dated an hour), and their uploads and live documents, straight into the ledger."""
    from ingest_pipeline.core.ids import document_id

    def name_of(n: int) -> str:
        return f"{SUBFOLDERS[n % len(SUBFOLDERS)]}/note-{n:05d}.txt".lstrip("/")

    for tenant in tenants:
        for sub in SUBFOLDERS:
            (landing / tenant / sub).mkdir(parents=True, exist_ok=True)
        for n in range(files):
            (landing / tenant / name_of(n)).write_bytes(b"x" * (n % 64 + 1))
    back_date(landing)
    uploads, documents = io.StringIO(), io.StringIO()
    upload_id = 0
    for tenant in tenants:
        for n in range(files):
            name = name_of(n)
            info = (landing / tenant / name).lstat()
            upload_id += 1
            doc = document_id(tenant, name)
            uploads.write(f"{upload_id}\t{tenant}\t{doc}\t{name}\t{'0' * 64}\t{info.st_size}\tf\t{month}\t"
                          f"{info.st_mtime_ns}\n")
            documents.write(f"{doc}\t{tenant}\t{name}\t{upload_id}\t{month}\t{'0' * 64}\tchunked\n")
    with ledger.connect() as conn, conn.transaction():
        conn.execute("ALTER TABLE ingest.uploads DISABLE TRIGGER uploads_in_commit_order")
        with conn.cursor().copy("COPY ingest.uploads (upload_id, tenant_id, doc_id, doc_name, content_sha256,"
                                " size_bytes, is_delete, partition_month, file_mtime_ns) FROM STDIN") as copy:
            copy.write(uploads.getvalue())
        conn.execute("ALTER TABLE ingest.uploads ENABLE TRIGGER uploads_in_commit_order")
        conn.execute("SELECT setval(pg_get_serial_sequence('ingest.uploads', 'upload_id'), %s)", (upload_id,))
        with conn.cursor().copy("COPY ingest.documents (doc_id, tenant_id, doc_name, upload_id, partition_month,"
                                " content_sha256, status) FROM STDIN") as copy:
            copy.write(documents.getvalue())
        conn.execute("ANALYZE ingest.uploads")
        conn.execute("ANALYZE ingest.documents")
    return upload_id


def back_date(folder, seconds: float = 3600) -> None:
    when = time.time_ns() - int(seconds * 1e9)
    for directory, _, names in os.walk(folder, topdown=False):
        for name in names:
            os.utime(os.path.join(directory, name), ns=(when, when), follow_symlinks=False)
        os.utime(directory, ns=(when, when))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--files", type=int, default=1000, help="files per tenant (5000: about 1M files in all)")
    args = parser.parse_args()

    with scratch_installation("ingest-bench-sensor-"):
        from dagster import SkipReason, build_sensor_context

        from ingest_pipeline.definitions import build_resources
        from ingest_pipeline.defs import sensors
        from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
        from ingest_pipeline.runtime.settings import Settings
        from ingest_pipeline.stores.landing_zone import LandingZone
        from ingest_pipeline.work.landing_scan import compare
        from ingest_pipeline.work.uploads import current_month

        _, ledger = prepare_environment()
        landing = Settings.from_env().landing_dir
        tenants = [f"tenant-{i:03d}" for i in range(args.tenants)]
        started = time.perf_counter()
        last_upload = populate(landing, ledger, tenants, args.files, current_month())
        setup = time.perf_counter() - started
        instance, resources = dagster_instance(), build_resources()

        def tick(cursor: str) -> tuple[float, str, int]:
            with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                began = time.perf_counter()
                result = sensors.upload_sensor(context)
                took = time.perf_counter() - began
                cursor = context.cursor if isinstance(result, SkipReason) else result.cursor
                return took, cursor, 0 if isinstance(result, SkipReason) else len(result.run_requests)

        first, cursor, _ = tick(sensors.UploadCursor(upload_id=last_upload).dump())
        quiet = []
        for _ in range(5):
            took, cursor, requested = tick(cursor)
            assert requested == 0, "a tick with nothing changed requested a run"
            quiet.append(took)
        verify, sensors.VERIFY_TENANTS_PER_TICK = sensors.VERIFY_TENANTS_PER_TICK, 0
        mtimes_only = []
        for _ in range(3):
            took, cursor, _ = tick(cursor)
            mtimes_only.append(took)
        sensors.VERIFY_TENANTS_PER_TICK = verify
        (landing / tenants[len(tenants) // 2] / "archive/2026/q4" / "new-note.txt").write_text("A new note.\n")
        one_new, cursor, requested = tick(cursor)
        assert requested == 1, f"the new file made {requested} run request(s)"

        zone = LandingZone(landing)
        began = time.perf_counter()
        for tenant in tenants:  # the dropped-file scan
            scan = zone.scan(tenant)
            with ledger.connect() as conn:
                compare(scan, ledger.uploads.latest_by_name(conn, tenant))
        by_tenant: dict[str, list[dict]] = {}
        for doc in ledger.documents.live():  # every live document, unfiltered
            by_tenant.setdefault(doc.tenant_id, []).append(doc)
        for tenant, documents in by_tenant.items():  # the second walk, for removed files
            present = zone.scan(tenant).files
            [doc for doc in documents if doc.doc_name not in present]
        full = time.perf_counter() - began

    print_figures({
        "tenants x files per tenant": f"{args.tenants} x {args.files} = {args.tenants * args.files:,} files "
                                      f"({len(SUBFOLDERS)} folders per tenant)",
        "setup (files, ledger rows), s": round(setup, 1),
        "first tick (empty cursor: every tenant walked), s": round(first, 2),
        f"tick, nothing changed (median of 5; {sensors.VERIFY_TENANTS_PER_TICK} tenants verified in turn), s":
            round(statistics.median(quiet), 3),
        "tick, nothing changed, no tenant in turn (folder mtimes only; median of 3), s":
            round(statistics.median(mtimes_only), 3),
        "tick, one new file three folders down, s": round(one_new, 3),
        "the old full walk of every tick (landing-zone work only), s": round(full, 2),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
