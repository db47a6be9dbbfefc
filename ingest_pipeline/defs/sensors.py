"""The upload sensor: new uploads, and files dropped straight into the landing zone, become partition runs."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    MultiPartitionKey,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ingest_pipeline.defs.jobs import ingest_job
from ingest_pipeline.defs.partitions import MONTH_DIMENSION, TENANT_DIMENSION, tenant_partitions
from ingest_pipeline.defs.resources import LandingZoneResource, PostgresLedger
from ingest_pipeline.runtime.instance import TENANT_TAG
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline.stores.landing_zone import LandingScan, LandingZone, LandingZoneUnavailable
from ingest_pipeline.stores.ledger import LiveDocument
from ingest_pipeline.work.landing_scan import tenant_folders
from ingest_pipeline.work.uploads import record_dropped_files

# A tick reads at most this many upload events and records at most this many dropped files, so that a
# burst (10,000 uploads across 200 tenants) is paged over ticks, each well under the tick timeout.
UPLOADS_PER_TICK = 2_000
DROPPED_FILES_PER_TICK = 500
# A tenant's folder is walked (every file listed and lstat'ed) only when one of its folders changed since the
# last walk (a folder's mtime changes when an entry is added, removed or renamed in it), or in its turn: this
# many tenants a tick are walked whatever their folders say, so a file rewritten in place (its folder's mtime
# unchanged) is found within len(tenants) / VERIFY_TENANTS_PER_TICK ticks.
VERIFY_TENANTS_PER_TICK = 10
# A folder whose mtime, or whose files' mtime, is this recent when walked is walked again next tick: a
# change in the same timestamp tick as the walk, or a file still being written, is never missed.
SETTLE_NS = 60 * 10**9
UNSETTLED = -1
IN_PROGRESS = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
               DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


@dataclass
class UploadCursor:
    """Where the sensor is: the last upload event it turned into run requests, and partitions it held
    back because their tenant already had a run queued or running (run key by "tenant|month")."""

    upload_id: int = 0
    deferred: dict[str, str] = field(default_factory=dict)
    # Per tenant, the mtime_ns of each of its folders ("" is its own, "a/b" a subfolder) when last walked, or
    # UNSETTLED; a tenant missing here is walked next tick. `verified`: the last tenant walked in its turn.
    folders: dict[str, dict[str, int]] = field(default_factory=dict)
    verified: str = ""

    @classmethod
    def parse(cls, raw: str | None) -> UploadCursor:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def tenants_with_runs_in_progress(context: SensorEvaluationContext) -> set[str]:
    runs = context.instance.get_runs(RunsFilter(job_name=ingest_job.name, statuses=IN_PROGRESS), limit=5_000)
    return {run.tags[TENANT_TAG] for run in runs if TENANT_TAG in run.tags}


def removed_files_run_key(tenant: str, month: str, documents: list[LiveDocument]) -> str:
    """The run key of a partition whose live documents lost their file: the same on every tick that sees the same
    removals, and new for each removal event. A document's latest upload id is part of it, so a file removed,
    put back and removed again in one month is a new key (Dagster drops a request whose key it has run)."""
    removals = sorted(f"{doc.upload_id}:{doc.doc_name}" for doc in documents)
    digest = hashlib.sha256("\n".join(removals).encode()).hexdigest()[:16]
    return f"{tenant}|{month}|removed|{digest}"


def folders_changed(zone: LandingZone, tenant: str, folders: dict[str, int] | None) -> bool:
    """Whether the tenant's folder may hold dropped or removed files since it was walked: one lstat per folder.

    A file added to or removed from a subfolder changes that subfolder's mtime only, and a new subfolder
    changes its parent's, so every folder recorded is looked at."""
    if not folders:
        return True
    root = zone.root / tenant
    for relative, mtime in folders.items():
        if mtime == UNSETTLED:
            return True
        try:
            if os.lstat(root / relative if relative else root).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def folder_state(scan: LandingScan, walked_at_ns: int) -> dict[str, int]:
    """What the cursor remembers of a walk: each folder's mtime, or UNSETTLED if it or a file in it changed
    within SETTLE_NS of the walk."""
    return {relative: UNSETTLED if newest > walked_at_ns - SETTLE_NS else mtime
            for relative, (mtime, newest) in scan.folders.items()}


def tenants_to_walk(tenants: list[str], changed: set[str], after: str, count: int) -> tuple[list[str], str]:
    """The changed tenants, and the next `count` others in turn after `after` (round robin); and the new turn."""
    others = [t for t in tenants if t not in changed]
    if not others or count <= 0:
        return sorted(changed), after
    start = next((i for i, tenant in enumerate(others) if tenant > after), 0)
    turn = [others[(start + i) % len(others)] for i in range(min(count, len(others)))]
    return sorted(changed | set(turn)), turn[-1]


@sensor(
    job=ingest_job,
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING,
    description="Requests a run for each (tenant, month) partition with new work: uploads recorded in Postgres, "
    "files dropped into the landing zone (recorded as uploads here) and files removed from it.",
)
def upload_sensor(
    context: SensorEvaluationContext, ledger: PostgresLedger, landing: LandingZoneResource
) -> SensorResult | SkipReason:
    """New uploads and landing-zone changes become partition runs.

    Each upload triggers once (the cursor is the last upload event handled) unless it is already ingested (no
    no-op runs for what `ingest-pipeline ingest` did before the daemon ran), a repeated tick is harmless
    (run keys name the newest upload of the partition), a tenant with a run queued or running is held back
    until it finishes, and a new tenant's dynamic partition is added before its first run.
    """
    started = time.monotonic()
    store, zone = ledger.ledger, landing.zone
    cursor = UploadCursor.parse(context.cursor)
    notes: list[str] = []

    # Files dropped straight into the landing zone are recorded as uploads, then handled like any other; live
    # documents whose file is gone are handed to the partition's run (which refuses a mass deletion). Both come
    # from one walk of each tenant whose folders changed, or whose turn it is to be verified.
    dropped = 0
    missing: dict[tuple[str, str], list[LiveDocument]] = {}
    folders_state = dict(cursor.folders)
    walked: list[str] = []
    if zone.root.is_dir():
        tenants = tenant_folders(zone)
        for gone in sorted(set(folders_state) - set(tenants)):
            del folders_state[gone]
            notes.append(f"the folder of tenant {gone!r} left the landing zone {zone.root}; nothing was deleted")
        changed = {tenant for tenant in tenants if folders_changed(zone, tenant, folders_state.get(tenant))}
        walked, verified = tenants_to_walk(tenants, changed, cursor.verified, VERIFY_TENANTS_PER_TICK)
        budget = DROPPED_FILES_PER_TICK
        for tenant in walked:
            walked_at = time.time_ns()
            folders_state.pop(tenant, None)  # walked again next tick unless this walk completes
            try:
                found = record_dropped_files(store, zone, tenant, limit=max(budget, 0),
                                             live_documents=store.documents.live(tenant))
            except (LandingZoneUnavailable, TenantErased) as exc:
                notes.append(str(exc))
                continue  # an outage, never a deletion
            dropped += len(found.recorded)
            budget -= len(found.recorded)
            if found.complete:
                folders_state[tenant] = folder_state(found.scan, walked_at)
            for partition, docs in found.removed_by_partition().items():
                missing.setdefault(partition, []).extend(docs)
    else:
        notes.append(f"the landing zone {zone.root} is missing: only recorded uploads are handled")
        verified = cursor.verified

    # New upload events, a page at a time.
    wanted: dict[str, str] = dict(cursor.deferred)
    page = store.uploads.after(cursor.upload_id, UPLOADS_PER_TICK)
    # An event already ingested (by `ingest-pipeline ingest` before the daemon first ran, say) needs no run.
    with_work_left = store.uploads.with_work_left([upload.upload_id for upload in page])
    if len(with_work_left) < len(page):
        notes.append(f"{len(page) - len(with_work_left)} upload event(s) already ingested: no run for them")
    for upload in page:
        if upload.upload_id not in with_work_left:
            continue
        wanted[f"{upload.tenant_id}|{upload.partition_month}"] = (
            f"{upload.tenant_id}|{upload.partition_month}|upload|{upload.upload_id}")
    next_upload_id = page[-1].upload_id if page else cursor.upload_id

    for (tenant, month), gone in missing.items():
        wanted.setdefault(f"{tenant}|{month}", removed_files_run_key(tenant, month, gone))

    # A tenant erased since its uploads were read (or while held back): no run, and no partition added again.
    erased = {key.split("|")[0] for key in wanted} & store.tenants.erased() if wanted else set()
    if erased:
        wanted = {key: run_key for key, run_key in wanted.items() if key.split("|")[0] not in erased}
        notes.append(f"tenant(s) {', '.join(sorted(erased))} erased: no run requested")
    busy = tenants_with_runs_in_progress(context) if wanted else set()
    deferred = {key: run_key for key, run_key in wanted.items() if key.split("|")[0] in busy}
    requests = [
        RunRequest(run_key=run_key,
                   partition_key=MultiPartitionKey({TENANT_DIMENSION: key.split("|")[0],
                                                    MONTH_DIMENSION: key.split("|")[1]}))
        for key, run_key in sorted(wanted.items()) if key not in deferred
    ]
    known = set(context.instance.get_dynamic_partitions(tenant_partitions.name))
    new_tenants = sorted({key.split("|")[0] for key in wanted} - known)

    cursor = UploadCursor(upload_id=next_upload_id, deferred=deferred, folders=folders_state, verified=verified)
    summary = (f"{len(walked)} tenant folder(s) walked, {len(page)} upload event(s), {dropped} dropped file(s) "
               f"recorded, {len(missing)} partition(s) "
               f"with removed files; {len(requests)} run(s) requested, {len(deferred)} held back (tenant busy: "
               f"{', '.join(sorted({k.split('|')[0] for k in deferred})) or 'none'}) in "
               f"{time.monotonic() - started:.2f} s")
    context.log.info(summary + ("; " + "; ".join(notes) if notes else ""))
    if not requests and not new_tenants:
        context.update_cursor(cursor.dump())
        reason = "no new uploads" if not wanted else f"{len(deferred)} partition(s) held back: their tenant has a run"
        return SkipReason("; ".join([reason, *notes]))
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[tenant_partitions.build_add_request(new_tenants)] if new_tenants else [],
        cursor=cursor.dump(),
    )
