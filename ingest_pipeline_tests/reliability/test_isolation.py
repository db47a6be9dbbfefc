"""Tenant isolation, end to end: no path (search, status, the reconcile report, the asset checks) returns or
counts another tenant's chunks; another tenant's index key opens nothing, on either CyborgDB backend, even when
the SDK's own checks are bypassed; a ciphertext moved between rows or tenants in Postgres fails authentication
and is never shown; the CyborgDB service refuses clients without its key and listens on loopback only.

test_security.py covers the encryptor-level versions of these (a forged TenantKeys through our own wrapper, a
ciphertext decrypted under the wrong row): these tests go through the product's paths and the raw engines."""

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest

from ingest_pipeline import cli
from ingest_pipeline.cli.reconcile import reconcile
from ingest_pipeline.core.crypto import DecryptionError
from ingest_pipeline.core.ids import index_name
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.defs.checks import compare_index_with_ledger, sampled_recall
from ingest_pipeline.stores.ledger import Ledger
from ingest_pipeline_tests.helpers import CORPUS, ledger_chunks, materialize_partition

# The first paragraphs of the pip guide: in both tenants' notes.md (kept short: the runtime is mostly embedding).
_PIP_GUIDE = (CORPUS / "globex" / "pip-dependency-resolution.md").read_text()
SHARED = _PIP_GUIDE[:_PIP_GUIDE.index("\n\n", 4000)]
ACME_ONLY = ("Acme keeps its zebra feeding schedule in the north warehouse ledger. The zebra quota for the spring "
             "quarter is forty-two bales of timothy hay, delivered every second Tuesday by the Wile courier.")
GLOBEX_ONLY = ("Globex requires every volcano inspection to be signed by two hammock engineers. Hammock tension is "
               "logged in kilonewtons at dawn and again at dusk, and a slack hammock halts the lair tour.")


def _two_tenants_same_names(pipeline, folder: Path) -> tuple[str, str]:
    """acme and globex, each with `apache-license-2.0.txt` and `notes.md`: same names, different documents,
    the notes overlapping (both start with the same pip guide). acme's documents are the longer ones."""
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    for tenant, license_text, own in ((acme, (CORPUS / "acme" / "apache-license-2.0.txt").read_text(), ACME_ONLY),
                                      (globex, "\n\n".join([GLOBEX_ONLY] * 3), GLOBEX_ONLY)):
        (folder / tenant).mkdir()
        (folder / tenant / "apache-license-2.0.txt").write_text(license_text)
        (folder / tenant / "notes.md").write_text(f"{SHARED}\n\n## Internal\n\n{own}\n")
        pipeline.upload(tenant, folder / tenant / "apache-license-2.0.txt", folder / tenant / "notes.md")
    pipeline.ingest()
    return acme, globex


def _own_rows(ledger: Ledger, tenant: str) -> dict[str, dict]:
    """The tenant's chunks with their documents, decrypted: what the tenant may see."""
    with ledger.connect() as conn:
        rows = conn.execute(
            "SELECT c.chunk_id::text AS chunk_id, c.doc_id::text AS doc_id, c.state, c.key_version, c.seal_format,"
            " c.text_mac, c.text_ciphertext, d.doc_name FROM ingest.chunks c JOIN ingest.documents d USING (doc_id)"
            " WHERE c.tenant_id = %s", (tenant,)).fetchall()
    keyring = build_resources()["keyring"]
    for row in rows:
        row["text"] = keyring.encryptor(tenant, row["key_version"]).decrypt_text(
            row["chunk_id"], row["text_ciphertext"], row["text_mac"], row["seal_format"])
    return {row["chunk_id"]: row for row in rows}


def _check_metadata(result) -> dict[str, dict]:
    return {c.check_name: {k: v.value for k, v in c.metadata.items()} for c in result.get_asset_check_evaluations()}


def test_no_path_returns_or_counts_another_tenants_chunks(pipeline, tmp_path, scenario):
    """Search, status, the reconcile report and the asset checks of a partition each show a tenant only its own
    chunks, though both tenants have documents of the same names and overlapping content."""
    scenario.category = "isolation"
    acme, globex = _two_tenants_same_names(pipeline, tmp_path)
    ledger = pipeline.ledger()
    own = {tenant: _own_rows(ledger, tenant) for tenant in (acme, globex)}
    assert not set(own[acme]) & set(own[globex])
    assert len(own[acme]) > len(own[globex]) > 3  # different counts: a mixed-up figure would show

    probes = 0
    for tenant, other, foreign in ((globex, acme, ACME_ONLY), (acme, globex, GLOBEX_ONLY)):
        for query in (foreign, "Apache License grant of patent license", "How does pip resolve dependencies?"):
            hits = pipeline.search(tenant, query, 10)
            assert hits, (tenant, query)
            for hit in hits:
                probes += 1
                mine = own[tenant].get(hit["chunk_id"])
                assert mine is not None, f"{tenant} got chunk {hit['chunk_id']} of {other}"
                assert (hit["doc_id"], hit["source"], hit["text"]) == (mine["doc_id"], mine["doc_name"], mine["text"])
                assert foreign[:60] not in hit["text"]
        # The overlapping pip guide: the tenant's own copy, never the other tenant's identical chunk.
        assert {h["chunk_id"] for h in pipeline.search(tenant, SHARED[200:400], 3)} <= set(own[tenant])

    for tenant in (acme, globex):
        indexed = sum(row["state"] == "indexed" for row in own[tenant].values())
        expected = {"documents": 2, "chunks": len(own[tenant]), "indexed": indexed, "quarantined": 0,
                    "index_vectors": indexed}
        status = pipeline.status(tenant)
        assert {name: status.get(name) for name in expected} == expected, status
        report = reconcile(tenant, repair=False)
        assert report["success"] and set(report["tenants"]) == {tenant}, report
        figures = report["tenants"][tenant]
        assert (figures["ledger_indexed"], figures["index_vectors_before"], figures["missing"], figures["orphans"]) \
            == (indexed, indexed, 0, 0), figures
        checks = _check_metadata(materialize_partition(tenant))
        assert checks["ciphertexts_decrypt"] == {"ciphertexts_checked": 3 * len(own[tenant]),
                                                 "ciphertexts_failed": 0}, checks
        # The index checks of that run (which wrote nothing) return at once; launched on their own, they count
        # and sample this tenant only.
        resources = build_resources()
        engines = (resources["ledger"].ledger, resources["cyborgdb"].indexes, resources["keyring"], tenant, None)
        passed, matches = compare_index_with_ledger(*engines)
        assert passed and (matches["ledger_indexed"], matches["index_vectors"]) == (indexed, indexed), matches
        passed, sampled = sampled_recall(*engines)
        assert passed and sampled["queries"] == sampled["retrieved_first"] == min(20, indexed), sampled
        # Exact search ran over this tenant's vectors only (all of them: fewer than the baseline's bound).
        assert sampled["baseline_vectors"] == indexed and sampled["recall_at_10"] == 1.0, sampled
        assert sampled["hits_not_indexed_here"] == 0, sampled
    everyone = reconcile(None, repair=False)
    assert {t: f["ledger_indexed"] for t, f in everyone["tenants"].items()} == {
        t: sum(r["state"] == "indexed" for r in own[t].values()) for t in (acme, globex)}
    scenario.details = {"search_hits_checked": probes, "acme_chunks": len(own[acme]),
                        "globex_chunks": len(own[globex])}


def _service_call(service: dict, path: str, body: dict | None = None, api_key: str | None = "root") -> tuple[int, str]:
    """(HTTP status, body) of a raw call to cyborgdb-service; api_key "root" means the service's own key."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["X-API-Key"] = service["api_key"] if api_key == "root" else api_key
    request = urllib.request.Request(f"{service['url']}{path}", headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_tenants_index_key_opens_no_other_index(pipeline, tmp_path, request, scenario):
    """With acme's index key, globex's index neither loads nor answers, on the raw engine: cyborgdb-core on disk,
    or the service's REST API called directly (after globex's own requests put the index in its cache)."""
    scenario.category = "isolation"
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    for tenant, name in ((acme, "acme/apache-license-2.0.txt"), (globex, "globex/pip-dependency-resolution.md")):
        (tmp_path / Path(name).name).write_bytes((CORPUS / name).read_bytes())
        pipeline.upload(tenant, tmp_path / Path(name).name)
    pipeline.ingest()
    keyring = build_resources()["keyring"]
    acme_key, globex_key = keyring.tenant_keys(acme).index_key, keyring.tenant_keys(globex).index_key
    name = index_name(globex)
    expected = {row["chunk_id"] for row in ledger_chunks(pipeline.ledger(), globex).values()}
    refused = 0
    if pipeline.backend == "embedded":
        import cyborgdb_core

        client = cyborgdb_core.Client(
            storage_config=cyborgdb_core.StorageConfig.disk(str(pipeline.home / "cyborgdb")))
        assert set(client.load_index(name, globex_key).list_ids(index_key=globex_key)) == expected
        for wrong in (acme_key, bytes(32)):
            with pytest.raises(Exception, match="(?i)unwrap|key"):
                client.load_index(name, wrong)
            refused += 1
        # An index opened with its own key does not serve a caller who passes another key per call.
        handle = client.load_index(name, globex_key)
        with pytest.raises(Exception, match="(?i)unwrap|key"):
            handle.list_ids(index_key=acme_key)
        refused += 1
    else:
        service = request.getfixturevalue("cyborgdb_service")
        status, body = _service_call(service, "/v1/vectors/list_ids", {"index_name": name,
                                                                         "index_key": globex_key.hex()})
        assert status == 200 and set(json.loads(body)["ids"]) == expected
        vector = [0.05] * 384
        for path, extra in (("/v1/vectors/list_ids", {}),
                            ("/v1/vectors/query", {"query_vectors": vector, "top_k": 3}),
                            ("/v1/vectors/get", {"ids": sorted(expected)[:2], "include": ["vector"]})):
            for wrong in (acme_key.hex(), bytes(32).hex()):
                status, body = _service_call(service, path, {"index_name": name, "index_key": wrong, **extra})
                assert 400 <= status < 500, (path, status)
                assert not any(chunk_id in body for chunk_id in expected)
                refused += 1
    # And through the product: search as acme never reaches globex's vectors.
    assert {hit["source"] for hit in pipeline.search(acme, "How does pip resolve dependencies?", 10)} == {
        "apache-license-2.0.txt"}
    scenario.details = {"wrong_key_attempts_refused": refused}


def test_a_moved_ciphertext_fails_authentication_and_is_never_shown(embedded_pipeline, tmp_path, scenario):
    """Text and embedding ciphertexts swapped between two rows of a tenant, and copied from one tenant's row into
    another's, directly in Postgres: search fails with a DecryptionError that quotes nothing, the partition's
    checks count exactly the moved ciphertexts as failed, and no moved text is ever shown."""
    scenario.category = "isolation"
    pipeline = embedded_pipeline
    acme, globex = _two_tenants_same_names(pipeline, tmp_path)
    ledger = pipeline.ledger()
    own = {tenant: _own_rows(ledger, tenant) for tenant in (acme, globex)}
    first, second, third = sorted(own[acme].values(), key=lambda r: r["chunk_id"])[:3]
    victim = sorted(own[globex].values(), key=lambda r: r["chunk_id"])[0]
    columns = "text_mac, text_ciphertext, embedding_ciphertext"
    with psycopg.connect(ledger.dsn, autocommit=True) as conn:
        conn.execute(  # swap two acme rows' sealed text and embedding (with their MACs)
            f"UPDATE ingest.chunks c SET ({columns}) = (o.text_mac, o.text_ciphertext, o.embedding_ciphertext)"
            " FROM ingest.chunks o WHERE (c.chunk_id, o.chunk_id) IN ((%s::uuid, %s::uuid), (%s::uuid, %s::uuid))",
            (first["chunk_id"], second["chunk_id"], second["chunk_id"], first["chunk_id"]))
        conn.execute(  # copy an acme row's sealed text and embedding into a globex row
            f"UPDATE ingest.chunks c SET ({columns}) = (o.text_mac, o.text_ciphertext, o.embedding_ciphertext)"
            " FROM ingest.chunks o WHERE c.chunk_id = %s::uuid AND o.chunk_id = %s::uuid",
            (victim["chunk_id"], third["chunk_id"]))
    moved = {first["text"], second["text"], third["text"]}
    shown = 0
    for tenant, row in ((acme, first), (acme, second), (globex, victim), (globex, third)):
        try:
            hits = pipeline.search(tenant, row["text"], 10)
        except DecryptionError as exc:
            assert not any(text[:40] in str(exc) for text in moved | {victim["text"]}), str(exc)
            continue
        shown += len(hits)
        for hit in hits:
            assert hit["chunk_id"] in own[tenant] and hit["text"] == own[tenant][hit["chunk_id"]]["text"]
            assert hit["chunk_id"] not in {first["chunk_id"], second["chunk_id"], victim["chunk_id"]}
    checks = {tenant: _check_metadata(materialize_partition(tenant)) for tenant in (acme, globex)}
    # Text, citation and embedding of each row whose text and MAC were moved (the citation stayed, bound to the
    # MAC that left).
    assert checks[acme]["ciphertexts_decrypt"] == {"ciphertexts_checked": 3 * len(own[acme]),
                                                   "ciphertexts_failed": 6}, checks
    assert checks[globex]["ciphertexts_decrypt"] == {"ciphertexts_checked": 3 * len(own[globex]),
                                                     "ciphertexts_failed": 3}, checks
    # Ingesting more for globex: the run's checks report the moved ciphertext, nothing is shown.
    (tmp_path / "more.txt").write_text("\n\n".join([GLOBEX_ONLY.replace("Globex", "Globex East")] * 2))
    pipeline.upload(globex, tmp_path / "more.txt")
    summary = cli.ingest(globex, show_progress=False)
    (run,) = summary["runs"]
    assert "ciphertexts_decrypt" in run["checks_failed"], run
    assert not any(text[:40] in json.dumps(run) for text in moved | {victim["text"]}), run
    try:  # the new document is searchable, unless a hit is the tampered row: then the search fails clearly
        hits = pipeline.search(globex, "Globex East hammock engineers", 10)
    except DecryptionError:
        hits = []
    assert not {hit["text"] for hit in hits} & moved
    scenario.details = {"ciphertexts_moved": 6, "hits_shown": shown,
                        "checks_failed": {t: c["ciphertexts_decrypt"]["ciphertexts_failed"] for t, c in checks.items()}}


def test_the_service_refuses_clients_without_its_key_and_listens_on_loopback_only(cyborgdb_service, scenario):
    """No key or a wrong key: 401/403 from the REST API and from the SDK; the listening socket is 127.0.0.1 only,
    and the port is closed on every other address of this machine."""
    scenario.category = "isolation"
    import cyborgdb

    assert _service_call(cyborgdb_service, "/v1/indexes/list")[0] == 200
    real_key = cyborgdb_service["api_key"]
    one_character_off = real_key[:-1] + ("1" if real_key.endswith("0") else "0")
    wrong_keys = {"no key": None, "another key": "not-the-key", "one character off": one_character_off}
    for label, key in wrong_keys.items():
        status, body = _service_call(cyborgdb_service, "/v1/indexes/list", api_key=key)
        assert status in (401, 403) and "tenant_" not in body, (label, status)
    with pytest.raises(Exception, match="(?i)401|403|auth|key"):
        cyborgdb.Client(base_url=cyborgdb_service["url"], api_key=None).list_indexes()

    port = int(cyborgdb_service["url"].rsplit(":", 1)[1])
    listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}, listening
    others = sorted({a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                     if a.family == socket.AF_INET and not a.address.startswith("127.")})
    for address in others:
        with pytest.raises(ConnectionRefusedError), socket.create_connection((address, port), timeout=5):
            pass
    scenario.details = {"unauthenticated_refused": 4, "other_addresses_refused": len(others)}
