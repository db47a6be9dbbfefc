"""The ledger's chunk query builder, its typed rows and the advisory-lock registry, on a real embedded Postgres."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import psycopg
import pytest

from ingest_pipeline.core.ids import chunk_id, document_id
from ingest_pipeline.runtime.settings import postgres_dsn, stop_embedded_postgres
from ingest_pipeline.stores import locks
from ingest_pipeline.stores.ledger import (
    Chunk,
    ChunkQuery,
    ChunkToEmbed,
    ChunkWrite,
    Document,
    EmbeddingWrite,
    Hit,
    Ledger,
    SealedEmbedding,
    TenantStatus,
    Upload,
)

MONTH = "2026-11-01"
PACKAGE = Path(__file__).resolve().parents[2] / "ingest_pipeline"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """A migrated ledger on an embedded server of its own."""
    home = tmp_path_factory.mktemp("ledger-home")
    ledger = Ledger(postgres_dsn("", home))
    ledger.migrate()
    yield ledger
    stop_embedded_postgres(home)


def _document(ledger: Ledger, conn, tenant: str, name: str, chunks: int, key_version: int = 1) -> Document:
    """A document of `chunks` chunks (fake sealed bytes: the ledger stores what it is given)."""
    doc = document_id(tenant, name)
    upload_id = ledger.uploads.record(conn, tenant_id=tenant, doc_id=doc, doc_name=name, content_sha256="0" * 64,
                                      size_bytes=1, is_delete=False, partition_month=MONTH)
    ledger.documents.register(conn, Upload(upload_id, tenant, doc, name, "0" * 64, False, MONTH), "0" * 64)
    document = ledger.documents.find(conn, doc)
    rows = [ChunkWrite(chunk_id(doc, seq), seq, 10 + seq, b"mac-%d" % seq, b"text-%d" % seq, key_version, None)
            for seq in range(chunks)]
    ledger.chunks.store(conn, document, "0" * 64, rows)
    return ledger.documents.find(conn, doc)


@pytest.fixture(scope="module")
def tenant(ledger):
    """A tenant of three documents: `a` (3 chunks, indexed), `b` (2 chunks, embedded), `c` (2 chunks, chunked, one
    of them stale), and another tenant's document beside it."""
    tenant, other = "acme-ledger", "globex-ledger"
    with ledger.connect() as conn, conn.transaction():
        # Registered with stand-in keys (the ledger stores sealed bytes; it never opens them).
        for name in (tenant, other):
            conn.execute("INSERT INTO ingest.tenants (tenant_id, key_check) VALUES (%s, 'check')", (name,))
            conn.execute("INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme) VALUES (%s, 1, 'derived'),"
                         " (%s, 2, 'derived')", (name, name))
        a, b = _document(ledger, conn, tenant, "a.md", 3), _document(ledger, conn, tenant, "b.md", 2)
        c = _document(ledger, conn, tenant, "c.md", 2, key_version=2)
        _document(ledger, conn, other, "a.md", 2)
        embedded = [chunk_id(a.doc_id, seq) for seq in range(3)] + [chunk_id(b.doc_id, seq) for seq in range(2)]
        ledger.chunks.store_embeddings(conn, tenant, [EmbeddingWrite(b"vec-" + cid.encode(), cid, b"mac-%d" % seq)
                                                      for cid, seq in zip(embedded, [0, 1, 2, 0, 1], strict=True)])
        ledger.chunks.mark_indexed(conn, embedded[:3])
        conn.execute("UPDATE ingest.chunks SET state = 'stale' WHERE chunk_id = %s", (chunk_id(c.doc_id, 1),))
    return {"id": tenant, "other": other, "a": a, "b": b, "c": c,
            "indexed": sorted(embedded[:3]), "embedded": sorted(embedded[3:]),
            "chunked": [chunk_id(c.doc_id, 0)], "stale": [chunk_id(c.doc_id, 1)]}


def test_the_state_and_partition_variants_read_the_tenants_chunks_only(ledger, tenant):
    t = tenant["id"]
    with ledger.connect() as conn:
        indexed = ledger.chunks.in_state(conn, t, MONTH, "indexed")
        assert [(row.doc_id, row.sequence) for row in indexed] == [(tenant["a"].doc_id, seq) for seq in range(3)]
        assert all(type(row) is Chunk and row.state == "indexed" and row.embedding_ciphertext for row in indexed)
        assert len(ledger.chunks.in_state(conn, t, MONTH, "indexed", limit=2)) == 2
        with conn.transaction():
            assert [row.chunk_id for row in ledger.chunks.in_state(conn, t, MONTH, "stale", for_update=True)] \
                == tenant["stale"]
        assert ledger.chunks.in_state(conn, t, "2020-01-01", "indexed") == []
        partition = ledger.chunks.in_partition(conn, t, MONTH)
        assert sorted(row.chunk_id for row in partition) == sorted(
            tenant["indexed"] + tenant["embedded"] + tenant["chunked"])  # never the stale one, never globex's
        assert ledger.chunks.ids_by_state(conn, t) == {state: set(tenant[state]) for state in
                                                       ("chunked", "embedded", "indexed", "stale")}
        assert ledger.chunks.indexed_ids(conn, t) == set(tenant["indexed"])
        assert ledger.chunks.indexed_count(conn, t) == 3
        assert ledger.chunks.indexed_count(conn, tenant["other"]) == 0


def test_pages_by_chunk_id_and_by_id_variants(ledger, tenant):
    t = tenant["id"]
    with ledger.connect() as conn:
        both = sorted(tenant["indexed"] + tenant["embedded"])
        assert [row.chunk_id for row in ledger.chunks.with_embeddings(conn, t)] == both
        first = ledger.chunks.with_embeddings(conn, t, limit=2)
        rest = ledger.chunks.with_embeddings(conn, t, after=first[-1].chunk_id)
        assert [row.chunk_id for row in first + rest] == both

        to_embed = ledger.chunks.to_embed(conn, t, MONTH, None, 10)
        assert [(type(row), row.chunk_id, row.token_count) for row in to_embed] == [(ChunkToEmbed, *tenant["chunked"],
                                                                                    10)]
        assert ledger.chunks.to_embed(conn, t, MONTH, tenant["chunked"][0], 10) == []

        with conn.transaction():
            wanted = tenant["indexed"] + tenant["embedded"]
            assert [row.chunk_id for row in ledger.chunks.by_id(conn, t, wanted, "embedded")] == tenant["embedded"]
        indexed = ledger.chunks.indexed(conn, t, tenant["embedded"] + tenant["indexed"][:1])
        assert [(type(row), row.chunk_id) for row in indexed] == [(SealedEmbedding, tenant["indexed"][0])]
        assert ledger.chunks.indexed(conn, t, []) == []
        assert ledger.chunks.indexed(conn, tenant["other"], tenant["indexed"]) == []  # another tenant's ids

        hits = ledger.chunks.hits(conn, t, tenant["indexed"] + tenant["embedded"])
        assert sorted(hits) == tenant["indexed"]
        assert {type(hit) for hit in hits.values()} == {Hit} and {hit.doc_name for hit in hits.values()} == {"a.md"}

        embeddings = ledger.chunks.embeddings_of(conn, tenant["b"].doc_id)
        assert sorted(row.chunk_id for row in embeddings) == tenant["embedded"]
        assert ledger.chunks.embeddings_of(conn, tenant["c"].doc_id) == []

        with conn.transaction():
            resealable = ledger.chunks.to_reseal(conn, t, "00000000-0000-0000-0000-000000000000", 1, 2, 100)
        assert sorted(row.chunk_id for row in resealable) == sorted(tenant["chunked"] + tenant["stale"])


def test_a_chunks_sealed_citation_is_stored_read_and_follows_its_texts_key_version(ledger):
    """The citation column is written and read by every chunk row type; a re-chunked document's unchanged text
    takes its new citation when both are sealed alike, and keeps its own when the row's text stays under an older
    key version (re-encryption moves it later); a chunk stored without one reads None."""
    tenant = "initech-ledger"
    with ledger.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO ingest.tenants (tenant_id, key_check) VALUES (%s, 'check')", (tenant,))
        conn.execute("INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme) VALUES (%s, 1, 'derived'),"
                     " (%s, 2, 'derived')", (tenant, tenant))
        document = _document(ledger, conn, tenant, "cited.md", 2)
        doc = str(document.doc_id)
        first, second = chunk_id(doc, 0), chunk_id(doc, 1)

        def store(key_version: int, citations: list[bytes | None]) -> dict[str, bytes | None]:
            rows = [ChunkWrite(chunk_id(doc, seq), seq, 10 + seq, b"mac-%d" % seq, b"text-%d" % seq, key_version,
                               None, citation) for seq, citation in enumerate(citations)]
            ledger.chunks.store(conn, document, "0" * 64, rows)
            return {row.chunk_id: row.citation_ciphertext for row in ledger.chunks.in_partition(conn, tenant, MONTH)}

        assert store(1, [None, None]) == {first: None, second: None}  # as if stored before citations
        assert store(1, [b"cite-0", b"cite-1"]) == {first: b"cite-0", second: b"cite-1"}
        # Same text, now sealed under version 2: the rows keep their version-1 text, and so their citation.
        assert store(2, [b"cite-0 v2", b"cite-1 v2"]) == {first: b"cite-0", second: b"cite-1"}
        ledger.chunks.mark_indexed(conn, [first, second])
        hits = ledger.chunks.hits(conn, tenant, [first])
        assert hits[first].citation_ciphertext == b"cite-0"
        resealable = ledger.chunks.to_reseal(conn, tenant, "00000000-0000-0000-0000-000000000000", 2, 2, 10)
        assert {row.chunk_id: row.citation_ciphertext for row in resealable} == {first: b"cite-0", second: b"cite-1"}
        conn.execute("DELETE FROM ingest.chunks WHERE tenant_id = %s", (tenant,))  # the module's other tests


def test_a_documents_format_is_recorded_with_its_chunks_and_a_new_one_indexes_them_again(ledger):
    """The format is stored with the chunks (None: not known) and read by Document and Chunk rows; unchanged
    indexed chunks stay indexed under the same format, and go back to embedded (to be written to the index again
    with the new format field) when the format changes."""
    tenant = "umbrella-ledger"
    with ledger.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO ingest.tenants (tenant_id, key_check) VALUES (%s, 'check')", (tenant,))
        conn.execute("INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme) VALUES (%s, 1, 'derived')",
                     (tenant,))
        document = _document(ledger, conn, tenant, "notes.md", 2)  # stored as before formats were recorded
        assert document.format is None
        doc = str(document.doc_id)
        rows = [ChunkWrite(chunk_id(doc, seq), seq, 10 + seq, b"mac-%d" % seq, b"text-%d" % seq, 1, None)
                for seq in range(2)]
        ledger.chunks.store_embeddings(conn, tenant, [EmbeddingWrite(b"vec", row.chunk_id, row.text_mac)
                                                      for row in rows])
        ledger.chunks.mark_indexed(conn, [row.chunk_id for row in rows])

        def store(doc_format: str | None) -> set[tuple[str | None, str]]:
            ledger.chunks.store(conn, ledger.documents.find(conn, doc), "0" * 64, rows, doc_format=doc_format)
            return {(row.format, row.state) for row in ledger.chunks.in_partition(conn, tenant, MONTH)}

        assert store("markdown") == {("markdown", "embedded")}  # the index items get a format field
        assert ledger.documents.find(conn, doc).format == "markdown"
        ledger.chunks.mark_indexed(conn, [row.chunk_id for row in rows])
        assert store("markdown") == {("markdown", "indexed")}
        conn.execute("DELETE FROM ingest.chunks WHERE tenant_id = %s", (tenant,))  # the module's other tests


def test_a_sample_is_a_random_subset_of_the_indexed_chunks(ledger, tenant):
    with ledger.connect() as conn:
        whole = ledger.chunks.sample_indexed(conn, tenant["id"], 10, random.Random(1))
        assert sorted(row.chunk_id for row in whole) == tenant["indexed"]  # fewer than the size: all of them
        some = ledger.chunks.sample_indexed(conn, tenant["id"], 2, random.Random(2), runs=2)
        assert len(some) == 2 and {row.chunk_id for row in some} < set(tenant["indexed"])


def test_the_query_builder_composes_parameters_never_values(ledger, tenant):
    query = ChunkQuery(Hit, tenant="x'; DROP TABLE ingest.chunks; --", month=MONTH, states=("indexed", "embedded"),
                       ids=[tenant["indexed"][0]], after=tenant["indexed"][0], order="chunk", limit=5,
                       for_update=True)
    statement, params = query.statement()
    with ledger.connect() as conn:
        text = statement.as_string(conn)
        assert "DROP" not in text and MONTH not in text and tenant["indexed"][0] not in text
        assert params[0].startswith("x'") and params[-1] == 5
        assert text.startswith('SELECT "c"."chunk_id"::text AS "chunk_id"') and '"d"."doc_name"' in text
        assert "JOIN ingest.documents d" in text and text.endswith("ORDER BY c.chunk_id LIMIT %s FOR UPDATE OF c")
        with conn.transaction():
            assert query.fetch(conn) == []  # no such tenant; the chunks table is still there
        # No document column and no month: no join; a count reads no column, so only a month joins.
        assert "JOIN" not in ChunkQuery(SealedEmbedding, tenant="t").statement()[0].as_string(conn)
        assert "JOIN" in ChunkQuery(tenant="t").statement()[0].as_string(conn)  # Chunk carries its document's name
        assert "JOIN" not in ChunkQuery(tenant="t", states=("indexed",)).count_statement()[0].as_string(conn)
        assert "JOIN" in ChunkQuery(tenant="t", month=MONTH).count_statement()[0].as_string(conn)
    with pytest.raises(ValueError, match="unknown chunk state"):
        ChunkQuery(states=("deleted",)).statement()
    with pytest.raises(ValueError, match="unknown chunk order"):
        ChunkQuery(order="random").statement()


def test_rows_are_typed_and_frozen(ledger, tenant):
    with ledger.connect() as conn:
        row = ledger.chunks.in_state(conn, tenant["id"], MONTH, "indexed")[0]
        document = ledger.documents.find(conn, tenant["a"].doc_id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.state = "stale"
    assert (document.doc_name, document.status, document.chunk_count, document.token_count) == ("a.md", "chunked",
                                                                                               3, 33)
    assert ledger.tenants.status(tenant["id"]) == TenantStatus(documents=3, quarantined=0, pending_documents=0,
                                                               chunks=6, indexed=3, embedded=5,
                                                               embeddings_computed=5)
    with ledger.connect() as conn:
        generations = ledger.tenants.generations(conn, tenant["id"])
    assert (generations.live, generations.rebuilding, generations.cursor) == (1, None, None)


# ---- the advisory-lock registry --------------------------------------------------------------------------------


def test_no_two_purposes_share_a_lock_class():
    classes = [lock.classid for lock in locks.REGISTRY]
    assert len(set(classes)) == len(classes), classes
    assert len({lock.purpose for lock in locks.REGISTRY}) == len(locks.REGISTRY)
    named = {value for value in vars(locks).values() if isinstance(value, locks.AdvisoryLock)}
    assert named == set(locks.REGISTRY)  # every lock defined there is registered


def test_no_advisory_lock_number_is_written_outside_the_registry():
    literal = re.compile(r"pg_advisory\w*\(\s*\d")
    found = [str(path) for path in PACKAGE.rglob("*.py")
             if path.name != "locks.py" and literal.search(path.read_text())]
    assert found == []


def _held(conn) -> set[tuple[int, int, str]]:
    return {(row["classid"], row["objid"], row["mode"]) for row in conn.execute(
        "SELECT classid::int AS classid, objid::int AS objid, mode FROM pg_locks WHERE locktype = 'advisory'"
        " AND pid = pg_backend_pid() AND granted").fetchall()}


def test_the_upload_triggers_take_the_registrys_locks(ledger):
    with ledger.connect() as conn:
        for function, lock in (("uploads_in_commit_order", locks.UPLOAD_ORDER),
                               ("refuse_erased_tenant", locks.ADMISSION)):
            source = conn.execute("SELECT pg_get_functiondef(%s::regproc) AS s", (f"ingest.{function}",)).fetchone()
            assert f"({lock.classid}, " in source["s"], source["s"]
        with conn.transaction():
            ledger.uploads.record(conn, tenant_id="initech-ledger", doc_id=document_id("initech-ledger", "x.md"),
                                  doc_name="x.md", content_sha256=None, size_bytes=None, is_delete=True,
                                  partition_month=MONTH)
            tenant_hash = conn.execute("SELECT hashtext('initech-ledger') AS h").fetchone()["h"]
            assert _held(conn) == {(locks.UPLOAD_ORDER.classid, locks.UPLOAD_ORDER.key, "ExclusiveLock"),
                                   (locks.ADMISSION.classid, tenant_hash, "ShareLock")}


def test_the_tenant_lock_is_the_registrys_and_migrations_no_longer_share_its_class(ledger):
    with ledger.tenant_writer("acme-ledger") as session:
        hashed = session.conn.execute("SELECT hashtext('acme-ledger') AS h").fetchone()["h"]
        assert _held(session.conn) == {(locks.TENANT.classid, hashed, "ExclusiveLock")}
        session.fence()
    impatient = Ledger(ledger.dsn, statement_timeout_s=0.5)
    with psycopg.connect(ledger.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, 0)", (locks.TENANT.classid,))  # the migrations' old key
        assert impatient.migrate() == []
        holder.execute(*locks.LEDGER_MIGRATIONS.call("pg_advisory_lock"))
        with pytest.raises((psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):  # waited, gave up
            impatient.migrate()
