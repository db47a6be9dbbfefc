"""Moving a tenant's rows to its active data key (after `rotate-key`), in batches, resumably.

Each batch is a transaction on the tenant's writer lock: its rows (text, citation, embedding) are opened with
the key version they were sealed under and sealed again under the active one (and in the current seal format, which
also upgrades rows of seal format 1). A crash loses at most the batch in flight, and the next run
starts where this one stopped, since it selects the rows still under another version. Batches page
through the tenant's rows by chunk_id (each starts after the last row of the one before, on the index
`(tenant_id, chunk_id)`), so a pass reads each row once; a last pass from the start finds any row
that still needs moving (one an older writer sealed meanwhile) before the job ends. Search keeps
working throughout: each row names the key version it is sealed with. When no row needs an older
version any more, that version is retired (its wrapped key deleted; a foreign key refuses while any
row still needs it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ingest_pipeline.core.crypto import SEAL_FORMAT
from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.stores.ledger import Ledger

DEFAULT_BATCH_SIZE = 500
# The rows of one batch: the next `batch_size` rows of the tenant after the cursor that need moving.
FIRST_CHUNK_ID = "00000000-0000-0000-0000-000000000000"  # below every uuid4: the cursor of a pass's first batch


@dataclass
class ReencryptionReport:
    tenant_id: str
    active_version: int
    rows_moved: int = 0
    batches: int = 0
    retired_versions: list[int] = field(default_factory=list)
    rows_left: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def rows_to_move(conn, tenant_id: str) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM ingest.chunks c JOIN ingest.tenants t USING (tenant_id)"
        " WHERE c.tenant_id = %s AND (c.key_version <> t.data_key_version OR c.seal_format <> %s)",
        (tenant_id, SEAL_FORMAT),
    ).fetchone()["n"]


def reencrypt_tenant(
    ledger: Ledger, keyring, tenant_id: str, batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None, on_batch: Callable[[int], None] | None = None,
) -> ReencryptionReport:
    """Re-seal the tenant's rows under its active data key, then retire versions no row needs.

    `max_batches` stops early (the rest is left for the next run); `on_batch` is told the rows moved so far.
    """
    report = None
    after, moved_this_pass = FIRST_CHUNK_ID, False
    while True:
        # The lock is taken per batch, so an ingest of the same tenant can run between batches.
        with ledger.tenant_writer(tenant_id) as session:
            conn = session.conn
            keys = keyring.keyset(tenant_id, conn)
            if report is None:
                report = ReencryptionReport(tenant_id, keys.active_version)
            with conn.transaction():
                rows = ledger.chunks.to_reseal(conn, tenant_id, after, keys.active_version, SEAL_FORMAT, batch_size)
                if rows:
                    target = keys.encryptor()
                    updates = []
                    for row in rows:
                        source, chunk_id, mac = keys.encryptor(row.key_version), row.chunk_id, row.text_mac
                        text = source.decrypt_text(chunk_id, row.text_ciphertext, mac, row.seal_format)
                        embedding = citation = None
                        if row.embedding_ciphertext is not None:
                            vector = source.decrypt_vector(chunk_id, row.embedding_ciphertext, mac,
                                                           row.seal_format)
                            embedding = target.encrypt_vector(chunk_id, vector, mac)
                        if row.citation_ciphertext is not None:  # None: stored before citations, stays unknown
                            citation = target.encrypt_citation(chunk_id, source.decrypt_citation(
                                chunk_id, row.citation_ciphertext, mac, row.seal_format), mac)
                        updates.append((target.encrypt_text(chunk_id, text), embedding, citation,
                                        target.key_version, SEAL_FORMAT, chunk_id))
                    with conn.cursor() as cursor:
                        cursor.executemany(
                            "UPDATE ingest.chunks SET text_ciphertext = %s, embedding_ciphertext = %s,"
                            " citation_ciphertext = %s, key_version = %s, seal_format = %s"
                            " WHERE chunk_id = %s::uuid",
                            updates,
                        )
                    report.rows_moved += len(rows)
                    report.batches += 1
                    after, moved_this_pass = rows[-1].chunk_id, True
            if rows:
                fault_point("reencrypt:after-batch")
                if on_batch is not None:
                    on_batch(report.rows_moved)
            if not rows and moved_this_pass:  # the pass reached the end: one more from the start, to be sure
                after, moved_this_pass = FIRST_CHUNK_ID, False
                continue
            done = not rows
            if done or (max_batches is not None and report.batches >= max_batches):
                if done:
                    report.retired_versions = keyring.store.retire_unused(conn, tenant_id)
                report.rows_left = rows_to_move(conn, tenant_id)
                return report
