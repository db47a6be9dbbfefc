"""Erasing a tenant (crypto-shredding): its keys first, then everything that held its data.

1. In one transaction of the key vault, the tenant's wrapped keys are deleted and its CyborgDB index
   is dropped (with the index key still in memory); the transaction commits only once the index is
   gone. After that commit no copy of the tenant's ciphertext can be read by anyone, backups of the
   ledger included, and there is never a moment when the keys are gone but an index is left that
   nobody can delete. The vault records the erasure, so a resumed erasure knows its keys are gone.
2. Its rows go: chunks, documents, quarantine records, uploads, the embedding log, its keys' rows.
3. Its landing-zone folder and its Dagster runs, event logs and dynamic partition go (queued runs with them, so
   they never start; a run under way, waiting for the lock, once it has ended, finding the tombstone).

`ingest.tenant_erasures` records each step, so a crash at any point leaves nothing readable (or
nothing changed, before step 1 commits) and running the erasure again finishes it. The record stays, as a
tombstone: from the request on, every writer (uploads, the ingest stages, reconcile, rebuild, re-encryption,
creating keys) checks it under the tenant's lock and writes nothing for the tenant, so work queued before the
erasure cannot bring the tenant back; `status` and `search` say it was erased. `readmit_tenant` lifts the
tombstone (who and when are recorded); the tenant's next upload then creates it anew.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.stores.key_vault import KeyStore, KeyVaultMissingKey, TenantErased, UnknownTenant
from ingest_pipeline.stores.ledger import Ledger, erasure_message
from ingest_pipeline.stores.tenant_index import CyborgIndexes

# Runs under way may still write events: deleted only once they ended (or after this long: a dead run never ends).
RUNS_UNDER_WAY_WAIT_S = 30.0
TENANT_ROWS = ("ingest.chunks", "ingest.quarantine", "ingest.documents", "ingest.embedding_log", "ingest.uploads")


class DagsterHistory(Protocol):
    """The tenant's history in the orchestrator: its runs, their logs, its dynamic partition (the Dagster side is
    runtime/instance.py's InstanceHistory)."""

    def delete(self, tenant_id: str, under_way: bool) -> int:
        """Delete the tenant's runs and its partition; the number of runs deleted. Queued runs go (they never
        start); runs under way only with `under_way`."""

    def wait_for_runs(self, tenant_id: str, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, until none of the tenant's runs is under way."""


@dataclass
class ErasureReport:
    tenant_id: str
    keys_destroyed: int = 0
    indexes_dropped: list[str] = field(default_factory=list)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    api_keys_revoked: int = 0
    landing_files_deleted: int = 0
    dagster_runs_deleted: int = 0
    resumed: bool = False
    completed: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def erase_tenant(
    ledger: Ledger, keystore: KeyStore, indexes: CyborgIndexes, landing_dir: Path, history: DagsterHistory,
    tenant_id: str,
) -> ErasureReport:
    tenant_id = validate_tenant(tenant_id)
    report = ErasureReport(tenant_id)
    with ledger.tenant_writer(tenant_id) as session:
        conn = session.conn
        with conn.transaction():
            # From this commit on the tenant is tombstoned: a writer of its uploads that came first has committed
            # (its rows are erased below), any later one is refused.
            ledger.tenants.lock_admission(conn, tenant_id, exclusive=True)
            erasure = conn.execute(
                "INSERT INTO ingest.tenant_erasures AS e (tenant_id) VALUES (%s) ON CONFLICT (tenant_id) DO UPDATE"
                " SET requested_at = now(), keys_destroyed_at = NULL, completed_at = NULL, readmitted_at = NULL,"
                " readmitted_by = NULL"
                # An earlier erasure: erase again from the start (the tenant may have been re-admitted and created
                # again since, or something written despite the tombstone).
                " WHERE e.completed_at IS NOT NULL"
                " RETURNING requested_at, keys_destroyed_at",
                (tenant_id,),
            ).fetchone()
            # The search service's keys stop working with the tombstone.
            report.api_keys_revoked = ledger.api_keys.revoke_tenant(conn, tenant_id)
        if erasure is None:  # an erasure of this tenant is under way: finish it
            report.resumed = True
            erasure = conn.execute("SELECT requested_at, keys_destroyed_at FROM ingest.tenant_erasures"
                                   " WHERE tenant_id = %s", (tenant_id,)).fetchone()

        if erasure["keys_destroyed_at"] is None:
            if not keystore.destroyed_by(tenant_id, erasure["requested_at"]):
                try:
                    keys = keystore.open(conn, tenant_id, erasing=True)
                except UnknownTenant:  # uploads only, never ingested: no keys, no index
                    keys = None
                except KeyVaultMissingKey:  # its secret is gone from the vault already: no index can be opened
                    keys = None
                # The keys go in a vault transaction that commits only once the index is dropped (with the
                # index key still in memory): never keys gone and an index left that nobody can delete.
                with keystore.vault.connect() as vault, vault.transaction():
                    report.keys_destroyed = keystore.destroy(vault, tenant_id, erasure["requested_at"])
                    if keys is not None:
                        index_keys = keys.index_keys()
                        for generation in _generations(conn, tenant_id):
                            session.fence()
                            if indexes.drop(index_keys, generation):
                                report.indexes_dropped.append(f"generation {generation}")
            with conn.transaction():
                keystore.mark_destroyed(conn, tenant_id)
                conn.execute("UPDATE ingest.tenant_erasures SET keys_destroyed_at = now() WHERE tenant_id = %s",
                             (tenant_id,))
        fault_point("erase:after-keys")

        with conn.transaction():
            for table in TENANT_ROWS:
                report.rows_deleted[table.split(".")[1]] = conn.execute(
                    f"DELETE FROM {table} WHERE tenant_id = %s", (tenant_id,)  # noqa: S608 - fixed table names
                ).rowcount
            report.rows_deleted["tenant_keys"] = conn.execute(
                "DELETE FROM ingest.tenant_keys WHERE tenant_id = %s", (tenant_id,)).rowcount
            conn.execute("DELETE FROM ingest.tenants WHERE tenant_id = %s", (tenant_id,))
        fault_point("erase:after-rows")

        folder = Path(landing_dir) / tenant_id
        if folder.exists():
            report.landing_files_deleted = sum(1 for path in folder.rglob("*") if path.is_file())
            shutil.rmtree(folder)
        report.dagster_runs_deleted = history.delete(tenant_id, under_way=False)

        conn.execute("UPDATE ingest.tenant_erasures SET completed_at = now() WHERE tenant_id = %s", (tenant_id,))
        report.completed = True
    # A run that was under way waited for the lock: now it finds the tombstone and ends at once, writing nothing.
    # Deleted once it has ended, so that no event of it is written after its run is gone.
    history.wait_for_runs(tenant_id, RUNS_UNDER_WAY_WAIT_S)
    report.dagster_runs_deleted += history.delete(tenant_id, under_way=True)
    return report


@dataclass
class Readmission:
    tenant_id: str
    erased_at: datetime | None = None
    readmitted_at: datetime | None = None
    readmitted_by: str | None = None
    readmitted: bool = False  # by this call
    note: str = ""

    def as_dict(self) -> dict:
        return {name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in self.__dict__.items()}


def readmit_tenant(ledger: Ledger, tenant_id: str, by: str) -> Readmission:
    """Lift the tombstone of an erased tenant, recording `by` and when: its next upload creates it anew.

    Raises TenantErased while its erasure is under way (finish that first). A tenant that is not erased is left
    as it is (`readmitted` False, with a note)."""
    tenant_id = validate_tenant(tenant_id)
    with ledger.tenant_writer(tenant_id) as session, session.conn.transaction():
        conn = session.conn
        ledger.tenants.lock_admission(conn, tenant_id, exclusive=True)
        row = conn.execute(
            "UPDATE ingest.tenant_erasures SET readmitted_at = now(), readmitted_by = %s"
            " WHERE tenant_id = %s AND completed_at IS NOT NULL AND readmitted_at IS NULL"
            " RETURNING completed_at, readmitted_at, readmitted_by",
            (by, tenant_id),
        ).fetchone()
        if row is not None:
            return Readmission(tenant_id, row["completed_at"], row["readmitted_at"], row["readmitted_by"], True)
        erasure = conn.execute("SELECT completed_at, readmitted_at, readmitted_by FROM ingest.tenant_erasures"
                               " WHERE tenant_id = %s", (tenant_id,)).fetchone()
    if erasure is None:
        return Readmission(tenant_id, note=f"tenant {tenant_id!r} was never erased: nothing to re-admit")
    if erasure["completed_at"] is None:
        raise TenantErased(erasure_message(tenant_id, erasure["completed_at"]) + " before re-admitting it")
    return Readmission(tenant_id, erasure["completed_at"], erasure["readmitted_at"], erasure["readmitted_by"],
                       note=f"tenant {tenant_id!r} was already re-admitted")


def _generations(conn, tenant_id: str) -> list[int]:
    row = conn.execute("SELECT index_generation, rebuild_generation FROM ingest.tenants WHERE tenant_id = %s",
                       (tenant_id,)).fetchone()
    if row is None:
        return [1]
    return sorted({1, row["index_generation"], *([row["rebuild_generation"]] if row["rebuild_generation"] else [])})


__all__ = ["DagsterHistory", "ErasureReport", "Readmission", "TenantErased", "erase_tenant", "readmit_tenant"]
