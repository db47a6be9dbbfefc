"""The invariant checked after every reliability scenario, for one tenant:

- the chunk ids marked indexed in Postgres equal the ids CyborgDB itself returns (no vector missing, none extra);
- every stored ciphertext (text and embedding) decrypts and authenticates;
- no chunk exists twice (the index holds each id once, a document has one chunk per sequence);
- every acknowledged document that is readable is fully indexed (none lost);
- optionally, search results equal those of a clean run on the same documents.
"""

from collections import Counter

from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.runtime.instance import prepare_environment
from ingest_pipeline.work.indexing import open_live_index

QUERIES = (
    "What does the license say about patents?",
    "How does pip resolve conflicting dependencies?",
    "Which system users and groups does Debian create?",
    "How are MIME types detected from file contents?",
)


def check_invariant(tenant: str, expected_documents: set[str] | None = None) -> dict:
    """What is wrong with the tenant's state, as counts (all 0 when the invariant holds) and id sets.

    `expected_documents`: names of documents acknowledged by an upload that must end up indexed.
    """
    prepare_environment()
    resources = build_resources()
    ledger, keyring = resources["ledger"].ledger, resources["keyring"]
    with ledger.connect() as conn:
        chunks = conn.execute(
            "SELECT c.chunk_id::text AS chunk_id, c.doc_id::text AS doc_id, c.sequence, c.state, c.text_mac,"
            " c.text_ciphertext, c.embedding_ciphertext, c.key_version, c.seal_format, d.doc_name, d.status"
            " FROM ingest.chunks c JOIN ingest.documents d USING (doc_id) WHERE c.tenant_id = %s",
            (tenant,),
        ).fetchall()
        documents = conn.execute(
            "SELECT doc_name, status FROM ingest.documents WHERE tenant_id = %s", (tenant,)
        ).fetchall()
    indexed = {row["chunk_id"] for row in chunks if row["state"] == "indexed"}
    index = open_live_index(ledger, resources["cyborgdb"].indexes, keyring.tenant_keys(tenant)) if chunks else None
    index_ids = index.list_ids() if index is not None else set()
    index_count = index.count() if index is not None else 0

    undecryptable = 0
    for row in chunks:
        encryptor = keyring.encryptor(tenant, row["key_version"])
        try:
            encryptor.decrypt_text(row["chunk_id"], row["text_ciphertext"], row["text_mac"], row["seal_format"])
            if row["embedding_ciphertext"] is not None:
                encryptor.decrypt_vector(row["chunk_id"], row["embedding_ciphertext"], row["text_mac"],
                                         row["seal_format"])
        except DecryptionError:
            undecryptable += 1

    per_sequence = Counter((row["doc_id"], row["sequence"]) for row in chunks)
    live_names = Counter(doc["doc_name"] for doc in documents if doc["status"] != "deleted")
    duplicates = (
        sum(n - 1 for n in per_sequence.values() if n > 1)
        + sum(n - 1 for n in live_names.values() if n > 1)
        + max(0, index_count - len(index_ids))
    )
    fully_indexed = {row["doc_name"] for row in chunks if row["status"] == "chunked"} - {
        row["doc_name"] for row in chunks if row["status"] == "chunked" and row["state"] in ("chunked", "embedded")
    }
    lost = sorted((expected_documents or set()) - fully_indexed)
    return {
        "missing_from_index": sorted(indexed - index_ids),
        "extra_in_index": sorted(index_ids - indexed),
        "undecryptable": undecryptable,
        "duplicates": duplicates,
        "documents_lost": len(lost),
        "lost_documents": lost,
    }


def assert_invariant(tenant: str, expected_documents: set[str] | None = None) -> dict:
    """check_invariant, failing the test with everything it found when anything is wrong."""
    found = check_invariant(tenant, expected_documents)
    wrong = {key: value for key, value in found.items() if value}
    assert not wrong, f"invariant broken for tenant {tenant}: {wrong}"
    return found


def search_fingerprint(pipeline, tenant: str, queries=QUERIES, top_k: int = 5) -> list[list[tuple[str, int]]]:
    """What search returns, as (document, chunk sequence) per hit: comparable between two installations
    that ingested the same documents (scores may differ in the last digits; ids are per tenant)."""
    return [[(hit["source"], hit["chunk_sequence"]) for hit in pipeline.search(tenant, query, top_k)]
            for query in queries]
