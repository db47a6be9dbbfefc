"""The chunks table: one query builder for every read of it, and the writes of chunks and embeddings."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql
from psycopg.rows import class_row, tuple_row

from ingest_pipeline.stores.ledger.connection import Database
from ingest_pipeline.stores.ledger.rows import (
    Chunk,
    ChunkId,
    ChunkToEmbed,
    ChunkWrite,
    Document,
    EmbeddingWrite,
    Hit,
    SealedChunk,
    SealedEmbedding,
    columns,
)

_STATES = ("chunked", "embedded", "indexed", "stale")
# Columns read as text (uuids), and columns of the chunk's document rather than of the chunk.
_AS_TEXT = {"chunk_id", "doc_id"}
_OF_DOCUMENT = {"doc_name", "partition_month", "format"}


@dataclass(frozen=True)
class ChunkQuery:
    """A SELECT of `ingest.chunks c`, composed from its parameters (every value a query parameter).

    `row` is the row type (its fields are the columns read); `tenant` the tenant, with `month` its partition (which
    joins the chunk's document); `doc` one document; `states` the states wanted, `not_state` one left out; `ids`
    these chunk ids; `after`/`start`/`before` bound the chunk id (`>`, `>=`, `<`); `with_embedding` only chunks
    holding one; `sealed_other_than` (key version, seal format) only chunks sealed otherwise; `order` "chunk"
    (by id) or "document" (by document and sequence); `limit`; `for_update` locks the chunks read until the
    caller's transaction ends.
    """

    row: type = Chunk
    tenant: str | None = None
    month: str | None = None
    doc: str | None = None
    states: tuple[str, ...] = ()
    not_state: str | None = None
    ids: list[str] | None = None
    after: str | None = None
    start: str | None = None
    before: str | None = None
    with_embedding: bool = False
    sealed_other_than: tuple[int, int] | None = None
    order: str | None = None
    limit: int | None = None
    for_update: bool = False
    names: tuple[str, ...] = field(default=())  # columns to read instead of the row type's (tuple rows)

    def _columns(self) -> tuple[str, ...]:
        return self.names or columns(self.row)

    def _joins_document(self) -> bool:
        return self.month is not None or any(name in _OF_DOCUMENT for name in self._columns())

    def _where(self) -> tuple[list[sql.Composable], list]:
        conditions: list[sql.Composable] = []
        params: list = []

        def where(condition: str, *values) -> None:
            conditions.append(sql.SQL(condition))
            params.extend(values)

        if self.tenant is not None:
            where("d.tenant_id = %s" if self.month is not None else "c.tenant_id = %s", self.tenant)
        if self.month is not None:
            where("d.partition_month = %s", self.month)
        if self.doc is not None:
            where("c.doc_id = %s", self.doc)
        for state in (*self.states, *([self.not_state] if self.not_state else [])):
            if state not in _STATES:
                raise ValueError(f"unknown chunk state {state!r}")
        if len(self.states) == 1:
            where("c.state = %s", self.states[0])
        elif self.states:
            where("c.state = ANY(%s::text[])", list(self.states))
        if self.not_state is not None:
            where("c.state <> %s", self.not_state)
        if self.ids is not None:
            where("c.chunk_id = ANY(%s::uuid[])", list(self.ids))
        if self.after is not None:
            where("c.chunk_id > %s::uuid", self.after)
        if self.start is not None:
            where("c.chunk_id >= %s::uuid", self.start)
        if self.before is not None:
            where("c.chunk_id < %s::uuid", self.before)
        if self.with_embedding:
            where("c.embedding_ciphertext IS NOT NULL")
        if self.sealed_other_than is not None:
            where("(c.key_version <> %s OR c.seal_format <> %s)", *self.sealed_other_than)
        return conditions, params

    def _from(self) -> sql.Composable:
        if self._joins_document():
            return sql.SQL("ingest.chunks c JOIN ingest.documents d USING (doc_id)")
        return sql.SQL("ingest.chunks c")

    def _column(self, name: str) -> sql.Composable:
        table = "d" if name in _OF_DOCUMENT else "c"
        column = sql.Identifier(table, name)
        if name in _AS_TEXT:
            return sql.SQL("{}::text AS {}").format(column, sql.Identifier(name))
        return column

    def statement(self) -> tuple[sql.Composed, list]:
        """The SELECT and its parameters."""
        conditions, params = self._where()
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(self._column(name) for name in self._columns()), self._from())
        if conditions:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)
        if self.order == "chunk":
            query += sql.SQL(" ORDER BY c.chunk_id")
        elif self.order == "document":
            query += sql.SQL(" ORDER BY c.doc_id, c.sequence")
        elif self.order is not None:
            raise ValueError(f"unknown chunk order {self.order!r}")
        if self.limit is not None:
            query += sql.SQL(" LIMIT %s")
            params.append(int(self.limit))
        if self.for_update:
            query += sql.SQL(" FOR UPDATE OF c")
        return query, params

    def count_statement(self) -> tuple[sql.Composed, list]:
        """`SELECT count(*)` of the chunks this query selects (no order, limit or lock)."""
        conditions, params = self._where()
        # A count reads no column: only a month (a column of the document) needs the document.
        table = "ingest.chunks c JOIN ingest.documents d USING (doc_id)" if self.month else "ingest.chunks c"
        query = sql.SQL("SELECT count(*) AS n FROM {}").format(sql.SQL(table))
        if conditions:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)
        return query, params

    def fetch(self, conn: psycopg.Connection) -> list:
        """The rows, as `row` (or tuples of `names`)."""
        factory = tuple_row if self.names else class_row(self.row)
        with conn.cursor(row_factory=factory) as cursor:
            return cursor.execute(*self.statement()).fetchall()

    def count(self, conn: psycopg.Connection) -> int:
        return conn.execute(*self.count_statement()).fetchone()["n"]


class Chunks:
    """The tenants' encrypted chunks: what is read to embed, index, check and search, and their writes."""

    def __init__(self, db: Database):
        self.db = db

    def in_state(
        self, conn: psycopg.Connection, tenant_id: str, month: str, state: str,
        limit: int | None = None, for_update: bool = False,
    ) -> list[Chunk]:
        """The partition's chunks in `state`, in document order."""
        return ChunkQuery(tenant=tenant_id, month=month, states=(state,), order="document", limit=limit,
                          for_update=for_update).fetch(conn)

    def to_embed(
        self, conn: psycopg.Connection, tenant_id: str, month: str, after: str | None, limit: int
    ) -> list[ChunkToEmbed]:
        """The partition's chunks still without an embedding, in chunk-id order after `after` (a page)."""
        return ChunkQuery(ChunkToEmbed, tenant=tenant_id, month=month, states=("chunked",), after=after,
                          order="chunk", limit=limit).fetch(conn)

    def with_embeddings(
        self, conn: psycopg.Connection, tenant_id: str, after: str | None = None, limit: int | None = None
    ) -> list[Chunk]:
        """The tenant's embedded chunks in chunk-id order; page with `after` (the last id seen) and `limit`."""
        return ChunkQuery(tenant=tenant_id, states=("embedded", "indexed"), after=after, order="chunk",
                          limit=limit).fetch(conn)

    def indexed_ids(self, conn: psycopg.Connection, tenant_id: str) -> set[str]:
        return {row.chunk_id for row in ChunkQuery(ChunkId, tenant=tenant_id, states=("indexed",)).fetch(conn)}

    def indexed_count(self, conn: psycopg.Connection, tenant_id: str) -> int:
        """How many of the tenant's chunks are indexed (an index-only count, no row is read)."""
        return ChunkQuery(tenant=tenant_id, states=("indexed",)).count(conn)

    def indexed(self, conn: psycopg.Connection, tenant_id: str, chunk_ids: Iterable[str]) -> list[SealedEmbedding]:
        """Those of these chunks that are indexed, with their sealed embeddings (no row lock)."""
        chunk_ids = list(chunk_ids)
        if not chunk_ids:
            return []
        return ChunkQuery(SealedEmbedding, tenant=tenant_id, states=("indexed",), ids=chunk_ids).fetch(conn)

    def sample_indexed(self, conn: psycopg.Connection, tenant_id: str, size: int, rng,
                       runs: int = 40) -> list[SealedEmbedding]:
        """A random sample of at most `size` of the tenant's indexed chunks, with their sealed embeddings.

        Chunk ids are uuid5 hashes, so the ids that follow a random id are a random subset of the tenant's
        chunks, unrelated to their content: the sample is `runs` short runs of consecutive ids after random
        starting ids (wrapping round), each a range scan of `chunks_tenant_state_id_idx`. Its cost depends on
        `size`, not on the tenant's size (a tenant with fewer chunks is read whole). `rng` is a random.Random.
        """
        per_run = max(1, -(-size // runs))
        indexed = ChunkQuery(SealedEmbedding, tenant=tenant_id, states=("indexed",), order="chunk")
        found: dict[str, SealedEmbedding] = {}
        for _ in range(runs):
            start = str(uuid.UUID(int=rng.getrandbits(128)))
            rows = replace(indexed, start=start, limit=per_run).fetch(conn)
            if len(rows) < per_run:
                rows += replace(indexed, before=start, limit=per_run - len(rows)).fetch(conn)
            for row in rows:
                found.setdefault(row.chunk_id, row)
            if len(found) >= size:
                break
        return list(found.values())[:size]

    def in_partition(self, conn: psycopg.Connection, tenant_id: str, month: str) -> list[Chunk]:
        """The partition's chunks that are not stale."""
        return ChunkQuery(tenant=tenant_id, month=month, not_state="stale").fetch(conn)

    def hits(self, conn: psycopg.Connection, tenant_id: str, chunk_ids: list[str]) -> dict[str, Hit]:
        """These chunks, if indexed, with their sealed text and document name, by chunk id."""
        rows = ChunkQuery(Hit, tenant=tenant_id, ids=chunk_ids, states=("indexed",)).fetch(conn)
        return {row.chunk_id: row for row in rows}

    def ids_by_state(self, conn: psycopg.Connection, tenant_id: str) -> dict[str, set[str]]:
        """Every chunk id of the tenant, grouped by state ('chunked', 'embedded', 'indexed', 'stale').

        Read through a server-side cursor, so a tenant of a million chunks costs its ids, never its rows.
        """
        found: dict[str, set[str]] = {state: set() for state in _STATES}
        with conn.transaction(), conn.cursor(name="chunk_ids_by_state", row_factory=tuple_row) as cursor:
            cursor.itersize = 10_000
            cursor.execute(*ChunkQuery(tenant=tenant_id, names=("chunk_id", "state")).statement())
            for chunk, state in cursor:
                found[state].add(chunk)
        return found

    def by_id(self, conn: psycopg.Connection, tenant_id: str, chunk_ids: Iterable[str], state: str) -> list[Chunk]:
        """The rows of these chunks that are still in `state`, with what an index item is built from.

        Locked `FOR UPDATE` until the caller's transaction ends.
        """
        return ChunkQuery(tenant=tenant_id, ids=list(chunk_ids), states=(state,), order="chunk",
                          for_update=True).fetch(conn)

    @staticmethod
    def reseal_query(tenant_id: str, after: str, key_version: int, seal_format: int, limit: int) -> ChunkQuery:
        """The query of `to_reseal` (a page on the (tenant_id, chunk_id) index)."""
        return ChunkQuery(SealedChunk, tenant=tenant_id, after=after, sealed_other_than=(key_version, seal_format),
                          order="chunk", limit=limit, for_update=True)

    def to_reseal(self, conn: psycopg.Connection, tenant_id: str, after: str, key_version: int, seal_format: int,
                  limit: int) -> list[SealedChunk]:
        """The tenant's next chunks after `after`, in chunk-id order, sealed under another key version or seal
        format than these, locked `FOR UPDATE` until the caller's transaction ends."""
        return self.reseal_query(tenant_id, after, key_version, seal_format, limit).fetch(conn)

    def embeddings_of(self, conn: psycopg.Connection, doc_id: str) -> list[SealedEmbedding]:
        """The document's chunks that hold an embedding (chunk id, text MAC, sealed embedding)."""
        return ChunkQuery(SealedEmbedding, doc=doc_id, with_embedding=True).fetch(conn)

    def store(self, conn: psycopg.Connection, document: Document, content_sha256: str, rows: list[ChunkWrite], *,
              doc_format: str | None = None) -> None:
        """Upsert a document's encrypted chunks; keep the embedding of a chunk whose text is unchanged; record the
        document's content hash and `doc_format` (what its text was extracted as; None: not known).

        The embedding of a ChunkWrite is None, or one already computed for the same text (sealed for this chunk
        id): such a chunk is stored as embedded and is not embedded again. The citation is the new one (a heading
        renamed above unchanged text moves it), unless the row keeps text sealed under another key version or
        seal format than the new citation's: then it keeps its own citation, which re-encryption moves with it.
        An indexed chunk kept as it is goes back to embedded when the document's format changed (one chunked
        before formats were recorded, say), so the index stage writes it again with the new format field.
        """
        rows = [ChunkWrite(*row) for row in rows]
        with conn.cursor() as cur:
            cur.executemany(
                """
                INSERT INTO ingest.chunks AS c (chunk_id, tenant_id, doc_id, sequence, token_count, text_mac,
                                               text_ciphertext, key_version, embedding_ciphertext, state,
                                               citation_ciphertext)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (chunk_id) DO UPDATE SET
                    token_count = EXCLUDED.token_count,
                    citation_ciphertext = CASE
                        WHEN c.text_mac <> EXCLUDED.text_mac
                          OR (c.key_version = EXCLUDED.key_version AND c.seal_format = EXCLUDED.seal_format)
                        THEN EXCLUDED.citation_ciphertext ELSE c.citation_ciphertext END,
                    text_ciphertext = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                           THEN c.text_ciphertext ELSE EXCLUDED.text_ciphertext END,
                    key_version = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                       THEN c.key_version ELSE EXCLUDED.key_version END,
                    seal_format = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                       THEN c.seal_format ELSE EXCLUDED.seal_format END,
                    embedding_ciphertext = CASE WHEN c.text_mac = EXCLUDED.text_mac
                                                THEN c.embedding_ciphertext ELSE EXCLUDED.embedding_ciphertext END,
                    state = CASE WHEN c.text_mac <> EXCLUDED.text_mac THEN EXCLUDED.state
                                 WHEN c.embedding_ciphertext IS NULL THEN 'chunked'
                                 WHEN c.state = 'indexed' THEN 'indexed' ELSE 'embedded' END,
                    text_mac = EXCLUDED.text_mac,
                    updated_at = now()
                """,
                [(row.chunk_id, document.tenant_id, document.doc_id, row.sequence, row.token_count, row.text_mac,
                  row.text_ciphertext, row.key_version, row.embedding_ciphertext,
                  "chunked" if row.embedding_ciphertext is None else "embedded", row.citation_ciphertext)
                 for row in rows],
            )
        conn.execute(
            "UPDATE ingest.chunks SET state = 'stale', updated_at = now() WHERE doc_id = %s AND sequence >= %s",
            (document.doc_id, len(rows)),
        )
        conn.execute(
            "UPDATE ingest.chunks c SET state = 'embedded', updated_at = now() FROM ingest.documents d"
            " WHERE d.doc_id = c.doc_id AND c.doc_id = %s AND c.state = 'indexed' AND d.format IS DISTINCT FROM %s",
            (document.doc_id, doc_format),
        )
        conn.execute(
            "UPDATE ingest.documents SET status = 'chunked', content_sha256 = %s, chunk_count = %s,"
            " token_count = %s, format = %s, extraction_attempts = 0, updated_at = now() WHERE doc_id = %s",
            (content_sha256, len(rows), sum(row.token_count for row in rows), doc_format, document.doc_id),
        )

    def store_embeddings(self, conn: psycopg.Connection, tenant_id: str, rows: list[EmbeddingWrite]) -> int:
        """Write these sealed embeddings. Only chunks still holding that text change."""
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE ingest.chunks SET embedding_ciphertext = %s, state = 'embedded', updated_at = now()"
                " WHERE chunk_id = %s AND text_mac = %s AND state = 'chunked'",
                [tuple(row) for row in rows],
            )
        conn.execute("INSERT INTO ingest.embedding_log (tenant_id, chunk_count) VALUES (%s, %s)",
                     (tenant_id, len(rows)))
        return len(rows)

    def mark_indexed(self, conn: psycopg.Connection, chunk_ids: list[str]) -> None:
        conn.execute(
            "UPDATE ingest.chunks SET state = 'indexed', updated_at = now() WHERE chunk_id = ANY(%s::uuid[])",
            (chunk_ids,),
        )

    def remove(self, conn: psycopg.Connection, chunk_ids: list[str]) -> None:
        """Delete these chunks if stale."""
        conn.execute("DELETE FROM ingest.chunks WHERE chunk_id = ANY(%s::uuid[]) AND state = 'stale'",
                     (chunk_ids,))
