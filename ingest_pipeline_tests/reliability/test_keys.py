"""Keys: random per-tenant keys wrapped under the master key in a vault of their own, rotation (resumable,
while search keeps working), master-key re-wrapping, legacy installations migrating without re-embedding,
and tenant erasure by crypto-shredding, interrupted and finished."""

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import psycopg
import pytest
from dagster import RunsFilter

from ingest_pipeline.core.crypto import DecryptionError, VectorEncryptor, derive_tenant_keys, generate_master_key
from ingest_pipeline.core.crypto import parse_master_key as parse
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.runtime.instance import PROJECT_ROOT, dagster_instance
from ingest_pipeline.stores import locks
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline_tests.helpers import ledger_chunks
from ingest_pipeline_tests.reliability.invariant import assert_invariant, search_fingerprint

# The last release before envelope encryption: its tenants' keys were derived from the master key.
LEGACY_RELEASE = "932af4e"
QUERY = "What does the license say about patents?"


def faults(pipeline, tmp_path, spec: str) -> dict:
    return {**os.environ, **pipeline.env, "INGEST_FAULTS": spec, "INGEST_FAULTS_STATE": str(tmp_path / "faults")}


def cli(pipeline, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest_pipeline.cli", *args],
                          env=env or {**os.environ, **pipeline.env}, capture_output=True, text=True, timeout=600)


def versions_in_rows(pipeline, tenant: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for row in ledger_chunks(pipeline.ledger(), tenant).values():
        counts[row["key_version"]] = counts.get(row["key_version"], 0) + 1
    return counts


def vault_rows(tenant: str) -> dict[int, str]:
    store = build_resources()["keyring"].store
    return {version: row["master_key_id"] for version, row in store.vault.wrapped(tenant).items()}


def citations_of(rows: dict[str, dict], tenant: str) -> dict:
    """The decrypted citation of each of these chunk rows (`ledger_chunks`), by chunk id."""
    keyring = build_resources()["keyring"]
    return {cid: keyring.encryptor(tenant, row["key_version"]).decrypt_citation(
        cid, row["citation_ciphertext"], row["text_mac"], row["seal_format"]) for cid, row in rows.items()}


def test_new_tenants_get_random_keys_kept_only_in_the_vault(embedded_pipeline, docs, scenario):
    scenario.category = "keys"
    acme, globex = embedded_pipeline.tenant("acme"), embedded_pipeline.tenant("globex")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt")
    embedded_pipeline.upload(globex, docs / "apache-license-2.0.txt")
    embedded_pipeline.ingest()
    keyring = build_resources()["keyring"]
    master = parse(embedded_pipeline.env["INGEST_MASTER_KEY"])
    row = next(iter(ledger_chunks(embedded_pipeline.ledger(), acme).values()))
    # Not derivable from the master key: only the vault's wrapped key opens the rows.
    derived = VectorEncryptor(derive_tenant_keys(master, acme))
    with pytest.raises(DecryptionError):
        derived.decrypt_text(row["chunk_id"], row["text_ciphertext"], row["text_mac"])
    assert keyring.encryptor(acme).decrypt_text(row["chunk_id"], row["text_ciphertext"], row["text_mac"])
    assert keyring.tenant_keys(acme).data_key != keyring.tenant_keys(globex).data_key
    assert set(vault_rows(acme)) == {0, 1}

    # The ledger's database holds no key: every byte string of the tenants' keys is absent from its rows.
    secrets = [keyring.tenant_keys(t).data_key for t in (acme, globex)] + [
        keyring.tenant_keys(t).mac_key for t in (acme, globex)] + [keyring.tenant_keys(acme).index_key]
    ledger = embedded_pipeline.ledger()
    with ledger.connect() as conn:
        dump = b"".join(
            bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            for table in ("tenants", "tenant_keys", "chunks", "documents", "uploads")
            for record in conn.execute(f"SELECT * FROM ingest.{table}").fetchall()  # noqa: S608
            for value in record.values() if value is not None
        )
    assert not [secret for secret in secrets if secret in dump]
    assert not [secret for secret in secrets if secret.hex().encode() in dump]


def test_rotate_key_moves_every_row_resumably_while_search_keeps_working(embedded_pipeline, docs, tmp_path,
                                                                          scenario):
    scenario.category = "keys"
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs)
    embedded_pipeline.ingest()
    before = search_fingerprint(embedded_pipeline, acme)
    computed = embedded_pipeline.ledger().tenants.status(acme).embeddings_computed
    rows = sum(versions_in_rows(embedded_pipeline, acme).values())
    assert versions_in_rows(embedded_pipeline, acme) == {1: rows}
    sealed_before = ledger_chunks(embedded_pipeline.ledger(), acme)
    citations = citations_of(sealed_before, acme)
    assert any(citation.section for citation in citations.values())  # the Markdown and HTML headings

    # The re-encryption job is SIGKILLed after its first batch of 20 rows.
    killed = cli(embedded_pipeline, "rotate-key", "--tenant", acme, "--batch-size", "20", "--json",
                 env=faults(embedded_pipeline, tmp_path, "reencrypt:after-batch=kill-once"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    mixed = versions_in_rows(embedded_pipeline, acme)
    assert mixed == {1: rows - 20, 2: 20}
    # Mid-way, both versions are readable: search answers as before, and new data goes under version 2.
    assert search_fingerprint(embedded_pipeline, acme) == before
    (tmp_path / "new.md").write_text("# Rotation\n\nKey rotation writes new chunks under the new data key.\n")
    embedded_pipeline.upload(acme, tmp_path / "new.md")
    embedded_pipeline.ingest()
    new_doc = [r for r in ledger_chunks(embedded_pipeline.ledger(), acme).values() if r["key_version"] == 2]
    assert len(new_doc) == 20 + 1

    resumed = cli(embedded_pipeline, "rotate-key", "--tenant", acme, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout)
    assert report["success"] and report["rows_left"] == 0
    assert report["versions_before"] == [1, 2] and report["versions_after"] == [2]
    assert versions_in_rows(embedded_pipeline, acme) == {2: rows + 1}
    assert set(vault_rows(acme)) == {0, 2}  # version 1's wrapped key is gone from the vault
    # Each citation was re-sealed with its row: it opens under version 2 to what it was, and no ciphertext of
    # version 1 is left.
    sealed_after = ledger_chunks(embedded_pipeline.ledger(), acme)
    assert {cid: c for cid, c in citations_of(sealed_after, acme).items() if cid in citations} == citations
    assert not {bytes(row["citation_ciphertext"]) for row in sealed_before.values()} & {
        bytes(row["citation_ciphertext"]) for row in sealed_after.values()}
    # Nothing was embedded again; the invariant holds; search answers exactly as before.
    assert embedded_pipeline.ledger().tenants.status(acme).embeddings_computed == computed + 1
    found = assert_invariant(acme, {"apache-license-2.0.txt", "new.md"})
    scenario.add_invariant(found)
    assert search_fingerprint(embedded_pipeline, acme) == before
    scenario.survived()

    # The ledger itself refuses to retire a key a row still needs.
    with embedded_pipeline.ledger().connect() as conn, pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("DELETE FROM ingest.tenant_keys WHERE tenant_id = %s AND key_version = 2", (acme,))
    # The run is in Dagster, with what it did.
    runs = dagster_instance().get_run_records()
    assert any(r.dagster_run.job_name == "reencrypt_job" and r.dagster_run.tags.get("ingest/tenant") == acme
               for r in runs)


def test_rotating_the_master_key_rewraps_keys_without_touching_a_row(embedded_pipeline, docs, monkeypatch, scenario):
    scenario.category = "keys"
    acme = embedded_pipeline.tenant("acme")
    embedded_pipeline.upload(acme, docs / "apache-license-2.0.txt", docs / "pip-dependency-resolution.md")
    embedded_pipeline.ingest()
    before_rows = {cid: bytes(row["text_ciphertext"]) for cid, row in
                   ledger_chunks(embedded_pipeline.ledger(), acme).items()}
    answer = embedded_pipeline.search(acme, QUERY, 3)
    old_ids = set(vault_rows(acme).values())

    new_key = generate_master_key()
    missing = cli(embedded_pipeline, "rotate-master-key")
    assert missing.returncode == 2 and "INGEST_NEW_MASTER_KEY" in missing.stderr
    done = cli(embedded_pipeline, "rotate-master-key", "--json",
               env={**os.environ, **embedded_pipeline.env, "INGEST_NEW_MASTER_KEY": new_key})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["keys_rewrapped"] == 2 and result["old_master_key_id"] != result["new_master_key_id"]
    assert set(vault_rows(acme).values()) == {result["new_master_key_id"]} != old_ids
    after_rows = {cid: bytes(row["text_ciphertext"]) for cid, row in ledger_chunks(embedded_pipeline.ledger(),
                                                                                  acme).items()}
    assert after_rows == before_rows  # not one row re-encrypted

    # The old master key no longer opens anything, with an error that says so; the new one does.
    refused = cli(embedded_pipeline, "search", "--tenant", acme, QUERY)
    assert refused.returncode == 2 and "master key" in refused.stderr and result["new_master_key_id"] in refused.stderr
    monkeypatch.setenv("INGEST_MASTER_KEY", new_key)
    embedded_pipeline.env["INGEST_MASTER_KEY"] = new_key
    assert embedded_pipeline.search(acme, QUERY, 3) == answer
    scenario.add_invariant(assert_invariant(acme, {"apache-license-2.0.txt", "pip-dependency-resolution.md"}))


def _legacy_release(tmp_path: Path) -> Path:
    """The last release before envelope encryption, from this repository's history."""
    try:
        archive = subprocess.run(["git", "-C", str(PROJECT_ROOT), "archive", LEGACY_RELEASE],
                                 capture_output=True, check=True, timeout=120).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.fail(f"cannot read release {LEGACY_RELEASE} from git history ({exc}); clone with history")
    target = tmp_path / "legacy-release"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def _rounded(hits: list[dict]) -> list[dict]:
    """Hits with scores to 5 places: the legacy index's distances move in the 6th once its rows are re-upserted."""
    return [{**hit, "score": round(hit["score"], 5)} for hit in hits]


def test_an_installation_from_before_envelope_encryption_migrates_without_re_embedding(
        embedded_pipeline, docs, tmp_path, monkeypatch, scenario):
    scenario.category = "keys"
    acme = embedded_pipeline.tenant("acme")
    legacy = _legacy_release(tmp_path)
    legacy_env = {**os.environ, **embedded_pipeline.env, "PYTHONPATH": str(legacy)}
    for args in (("upload", "--tenant", acme, str(docs / "apache-license-2.0.txt")), ("ingest", "--tenant", acme)):
        result = subprocess.run([sys.executable, "-m", "ingest_pipeline.cli", *args], env=legacy_env, cwd=legacy,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    ledger = embedded_pipeline.ledger()  # this release: applies migration 0006
    with ledger.connect() as conn:
        schemes = conn.execute("SELECT key_version, scheme, origin FROM ingest.tenant_keys WHERE tenant_id = %s"
                               " ORDER BY 1", (acme,)).fetchall()
    assert [(r["key_version"], r["scheme"]) for r in schemes] == [(0, "derived"), (1, "derived")]
    computed = ledger.tenants.status(acme).embeddings_computed
    assert computed > 0

    # The first use wraps the derived keys into the vault as they are: the legacy rows read, search works.
    hits = embedded_pipeline.search(acme, QUERY, 3)
    assert hits and hits[0]["source"] == "apache-license-2.0.txt"
    with ledger.connect() as conn:
        schemes = conn.execute("SELECT scheme, origin FROM ingest.tenant_keys WHERE tenant_id = %s", (acme,)).fetchall()
    assert {(r["scheme"], r["origin"]) for r in schemes} == {("wrapped", "derived")}
    assert set(vault_rows(acme)) == {0, 1}
    embedded_pipeline.upload(acme, docs / "pip-dependency-resolution.md")
    embedded_pipeline.ingest()
    new_chunks = ledger.tenants.status(acme).embeddings_computed - computed
    assert 0 < new_chunks == sum(1 for r in ledger_chunks(ledger, acme).values()
                                 if r["doc_id"] != hits[0]["doc_id"])  # only the new document was embedded

    # A rotation then moves the tenant off the derived data key (the legacy rows of seal format 1 included).
    rotated = cli(embedded_pipeline, "rotate-key", "--tenant", acme, "--json")
    assert rotated.returncode == 0, rotated.stderr[-2000:]
    assert json.loads(rotated.stdout)["versions_after"] == [2]
    assert {(r["key_version"], r["seal_format"]) for r in ledger_chunks(ledger, acme).values()} == {(2, 2)}
    assert _rounded(embedded_pipeline.search(acme, QUERY, 3)) == _rounded(hits)

    # An adoption that stopped between its vault commit and the ledger's update (the vault holds the secret, the
    # ledger still says derived) does not stop a master-key rotation: it finishes, and the new key opens the tenant.
    with ledger.connect() as conn:
        conn.execute("UPDATE ingest.tenant_keys SET scheme = 'derived' WHERE tenant_id = %s AND key_version = 0",
                     (acme,))
    new_key = generate_master_key()
    rotated = cli(embedded_pipeline, "rotate-master-key", "--json",
                  env={**os.environ, **embedded_pipeline.env, "INGEST_NEW_MASTER_KEY": new_key})
    assert rotated.returncode == 0, rotated.stderr[-2000:]
    assert set(vault_rows(acme).values()) == {json.loads(rotated.stdout)["new_master_key_id"]}
    monkeypatch.setenv("INGEST_MASTER_KEY", new_key)
    embedded_pipeline.env["INGEST_MASTER_KEY"] = new_key
    assert _rounded(embedded_pipeline.search(acme, QUERY, 3)) == _rounded(hits)
    scenario.add_invariant(assert_invariant(acme, {"apache-license-2.0.txt", "pip-dependency-resolution.md"}))


@pytest.mark.parametrize("pipeline", ["embedded", "service"], indirect=True)
def test_erase_tenant_destroys_keys_first_and_an_interrupted_erasure_finishes(pipeline, docs, tmp_path, scenario):
    scenario.category = "keys"
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    pipeline.upload(acme, docs)
    pipeline.upload(globex, docs / "apache-license-2.0.txt")
    pipeline.ingest()
    globex_before = search_fingerprint(pipeline, globex)
    backup = list(ledger_chunks(pipeline.ledger(), acme).values())  # what a ledger backup holds
    resources = build_resources()
    indexes = resources["cyborgdb"].indexes
    assert indexes.exists(acme)

    refused = cli(pipeline, "erase-tenant", "--tenant", acme)
    assert refused.returncode == 2 and "--yes" in refused.stdout

    # The erasure is SIGKILLed right after the keys are destroyed.
    killed = cli(pipeline, "erase-tenant", "--tenant", acme, "--yes", "--json",
                 env=faults(pipeline, tmp_path, "erase:after-keys=kill-once"))
    assert killed.returncode == -9, killed.stderr[-2000:]
    # Nothing is readable: no key in the vault, the index gone, search refuses, the backup is noise.
    assert vault_rows(acme) == {}
    assert not indexes.exists(acme)
    midway = cli(pipeline, "search", "--tenant", acme, QUERY)
    assert midway.returncode == 1 and "being erased" in midway.stderr
    with pytest.raises(TenantErased):
        resources["keyring"].keyset(acme)
    master = parse(pipeline.env["INGEST_MASTER_KEY"])
    with pytest.raises(DecryptionError):
        VectorEncryptor(derive_tenant_keys(master, acme)).decrypt_text(
            backup[0]["chunk_id"], backup[0]["text_ciphertext"], backup[0]["text_mac"])

    finished = cli(pipeline, "erase-tenant", "--tenant", acme, "--yes", "--json")
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(finished.stdout)
    assert report["resumed"] and report["completed"] and report["rows_deleted"]["chunks"] == len(backup)
    assert report["landing_files_deleted"] == 4 and report["dagster_runs_deleted"] >= 1
    scenario.survived()

    ledger = pipeline.ledger()
    with ledger.connect() as conn:
        for table in ("chunks", "documents", "uploads", "quarantine", "embedding_log", "tenants", "tenant_keys"):
            assert conn.execute(f"SELECT count(*) AS n FROM ingest.{table} WHERE tenant_id = %s",  # noqa: S608
                                (acme,)).fetchone()["n"] == 0, table
    assert not (pipeline.home / "landing" / acme).exists()
    instance = dagster_instance()
    assert not instance.has_dynamic_partition("tenants", acme)
    assert not instance.get_run_records(filters=RunsFilter(tags={"dagster/partition/tenant": acme}))
    status = json.loads(cli(pipeline, "status", "--json").stdout)["tenants"]
    assert acme not in status and globex in status
    after = cli(pipeline, "search", "--tenant", acme, QUERY)
    assert after.returncode == 1 and "was erased" in after.stderr

    # The other tenant is untouched.
    assert search_fingerprint(pipeline, globex) == globex_before
    scenario.add_invariant(assert_invariant(globex, {"apache-license-2.0.txt"}))


# ---- an erased tenant stays erased ---------------------------------------------------------------------------

TENANT_TABLES = ("chunks", "documents", "uploads", "quarantine", "embedding_log", "tenants", "tenant_keys")


def tenant_rows(pipeline, tenant: str) -> dict[str, int]:
    """The tenant's rows per ledger table, and its wrapped keys in the vault: all 0 when nothing of it is left."""
    with pipeline.ledger().connect() as conn:
        counts = {table: conn.execute(f"SELECT count(*) AS n FROM ingest.{table} WHERE tenant_id = %s",  # noqa: S608
                                      (tenant,)).fetchone()["n"] for table in TENANT_TABLES}
    return {**counts, "vault_keys": len(vault_rows(tenant))}


def tenant_runs(tenant: str) -> list:
    return [record for tag in ("dagster/partition/tenant", "ingest/tenant")
            for record in dagster_instance().get_run_records(filters=RunsFilter(tags={tag: tenant}))]


def test_writers_that_read_the_tenant_before_its_erasure_write_nothing_after_it(embedded_pipeline, docs, tmp_path,
                                                                               scenario):
    from dagster import MultiPartitionKey, build_asset_context, build_sensor_context
    from dagster._core.errors import DagsterUnknownPartitionError

    from ingest_pipeline import cli as cli_module
    from ingest_pipeline.cli import keys as cli_keys
    from ingest_pipeline.definitions import build_definitions
    from ingest_pipeline.defs.assets import RawDocumentsConfig, raw_documents
    from ingest_pipeline.defs.shared import TenantWasErased
    from ingest_pipeline.stores.landing_zone import LandingZone
    from ingest_pipeline.work.uploads import current_month, record_dropped_files, record_file
    from ingest_pipeline_tests.helpers import materialize_partition

    scenario.category = "keys"
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    pipeline.upload(acme, docs / "apache-license-2.0.txt")
    landed = pipeline.home / "landing" / acme / "apache-license-2.0.txt"
    stat = landed.stat()  # what a sensor tick or an upload that read the tenant before the erasure holds
    assert cli_keys.erase(acme)["completed"]
    nothing = dict.fromkeys([*TENANT_TABLES, "vault_keys"], 0)
    assert tenant_rows(pipeline, acme) == nothing

    resources = build_resources()
    ledger, store = resources["ledger"].ledger, resources["keyring"].store
    # Creating keys under the tenant's lock, as a queued run's first stage does.
    with ledger.tenant_writer(acme) as session, pytest.raises(TenantErased, match="was erased"):
        store.open(session.conn, acme, create=True)
    # Recording the upload of a file hashed before the erasure (the sensor, `upload`).
    with ledger.connect() as conn, pytest.raises(TenantErased, match="was erased"):
        record_file(ledger, conn, acme, "apache-license-2.0.txt", stat, "0" * 64, current_month())
    # Files dropped into the tenant's folder again: neither the sensor nor `ingest` records them, and no run.
    landed.parent.mkdir(parents=True)
    landed.write_text("Licensed under the Apache License.\n")
    with pytest.raises(TenantErased):
        record_dropped_files(ledger, LandingZone(pipeline.home / "landing"), acme, limit=10)
    with build_sensor_context(instance=dagster_instance(), resources=resources) as context:
        from ingest_pipeline.defs.sensors import upload_sensor

        ticked = upload_sensor(context)
    assert not getattr(ticked, "run_requests", None) and "was erased" in ticked.skip_message
    # The first stage of a run that was queued before the erasure: it fails at once, clearly, without retries
    # and without writing. (Dagster itself refuses to start a new run of the partition the erasure deleted.)
    partition = MultiPartitionKey({"tenant": acme, "month": current_month()})
    with build_asset_context(partition_key=partition, instance=dagster_instance()) as context, \
            pytest.raises(TenantWasErased, match="was erased") as failed:
        raw_documents(context, RawDocumentsConfig(), ledger=resources["ledger"], landing=resources["landing"],
                      keyring=resources["keyring"])
    assert failed.value.allow_retries is False and "nothing was written" in failed.value.description
    with pytest.raises(DagsterUnknownPartitionError):
        materialize_partition(acme)
    # Reconcile, rebuild and re-encryption of the tenant say so and write nothing.
    definitions = build_definitions()
    reconciled = definitions.resolve_job_def("reconcile_job").execute_in_process(
        run_config={"ops": {"reconcile_tenants": {"config": {"tenants": [acme]}}}}, instance=dagster_instance(),
        raise_on_error=False)
    assert not reconciled.success
    rebuilt = definitions.resolve_job_def("rebuild_tenant_index_job").execute_in_process(
        run_config={"ops": {"rebuild_index_from_cold_copy": {"config": {"tenant": acme}}}},
        instance=dagster_instance(), raise_on_error=False)
    assert not rebuilt.success
    rotated = cli_keys.rotate_key(acme)
    assert not rotated["success"] and "was erased" in rotated["error"]
    # The commands refuse, and say why; `upload` leaves no file behind.
    landed.unlink()
    with pytest.raises(TenantErased, match="was erased"):
        pipeline.upload(acme, docs / "apache-license-2.0.txt")
    assert not landed.exists()
    for verb in (lambda: cli_module.ingest(acme, show_progress=False), lambda: pipeline.search(acme, QUERY),
                 lambda: pipeline.status(acme)):
        with pytest.raises(TenantErased, match="was erased"):
            verb()
    # Not even a database client writing uploads by hand gets a row in.
    with ledger.connect() as conn, pytest.raises(psycopg.errors.CheckViolation, match="was erased"):
        conn.execute("INSERT INTO ingest.uploads (tenant_id, doc_id, doc_name, partition_month) VALUES"
                     " (%s, gen_random_uuid(), 'x.md', %s)", (acme, current_month()))
    assert tenant_rows(pipeline, acme) == nothing
    assert not instance_partition(acme)


def instance_partition(tenant: str) -> bool:
    return dagster_instance().has_dynamic_partition("tenants", tenant)


def test_a_run_waiting_for_the_lock_through_an_erasure_writes_nothing_until_the_tenant_is_readmitted(
        embedded_pipeline, docs, tmp_path, capsys, scenario):
    import threading
    import time

    from ingest_pipeline import cli as cli_module
    from ingest_pipeline.cli import keys as cli_keys
    from ingest_pipeline.definitions import build_definitions
    from ingest_pipeline.runtime.instance import TENANT_JOB_TAG
    from ingest_pipeline_tests.helpers import materialize_partition

    scenario.category = "keys"
    pipeline = embedded_pipeline
    acme = pipeline.tenant("acme")
    document = docs / "apache-license-2.0.txt"
    pipeline.upload(acme, document)
    pipeline.ingest()
    assert pipeline.search(acme, QUERY, 1)
    ledger = pipeline.ledger()

    # The erasure stops with its keys destroyed, holding the tenant's lock; meanwhile a run for the tenant starts
    # (queued before the erasure, or a backfill) and waits for that lock.
    (tmp_path / "late.md").write_text("# Late\n\nAn upload the erasure overtakes.\n")
    pipeline.upload(acme, tmp_path / "late.md")
    held = tmp_path / "faults" / "erase__after-keys.held"
    erasure = subprocess.Popen([sys.executable, "-m", "ingest_pipeline.cli", "erase-tenant", "--tenant", acme, "--yes"],
                               env=faults(pipeline, tmp_path, "erase:after-keys=hold"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not held.exists():
        assert erasure.poll() is None and time.monotonic() < deadline, erasure.communicate()
        time.sleep(0.1)
    outcome = {}
    waiting_run = threading.Thread(target=lambda: outcome.update(run=materialize_partition(acme)))
    waiting_run.start()
    with ledger.connect() as conn:
        while not conn.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                               " AND classid = %s", (locks.TENANT.classid,)).fetchone()["n"]:
            assert waiting_run.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.1)
    held.unlink()  # the erasure finishes, then the run gets the lock
    assert erasure.wait(timeout=120) == 0, erasure.stderr.read()[-2000:]
    waiting_run.join(timeout=300)
    run = outcome["run"]
    failures = [event for event in run.all_events if event.is_step_failure]
    assert not run.success and [event.step_key for event in failures] == ["raw_documents"]
    assert "was erased" in failures[0].step_failure_data.user_failure_data.description
    assert tenant_rows(pipeline, acme) == dict.fromkeys([*TENANT_TABLES, "vault_keys"], 0)
    with pytest.raises(TenantErased, match="was erased"):
        pipeline.search(acme, QUERY)
    assert cli_module.ingest(show_progress=False)["runs"] == []
    scenario.survived()

    # An operator re-admits the tenant: the record says who and when, and uploads create it anew.
    assert cli_module.main(["readmit-tenant", "--tenant", acme]) == 2
    assert cli_module.main(["readmit-tenant", "--tenant", acme, "--yes", "--by", "ops@example", "--json"]) == 0
    readmitted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert readmitted["readmitted"] and readmitted["readmitted_by"] == "ops@example" and readmitted["erased_at"]
    pipeline.upload(acme, document)
    pipeline.ingest()
    assert pipeline.search(acme, QUERY, 1)[0]["source"] == document.name

    # A rebuild's runs carry the tenant, from the CLI and from the launchpad (no tags given): the erasure of the
    # re-created tenant deletes them with the rest.
    assert cli_module.rebuild(acme)["success"]
    launched = build_definitions().resolve_job_def("rebuild_tenant_index_job").execute_in_process(
        run_config={"ops": {"rebuild_index_from_cold_copy": {"config": {"tenant": acme}}}},
        instance=dagster_instance())
    assert launched.success
    rebuilds = [r for r in dagster_instance().get_run_records(filters=RunsFilter(job_name="rebuild_tenant_index_job"))]
    assert len(rebuilds) == 2 and all(r.dagster_run.tags.get(TENANT_JOB_TAG) == acme for r in rebuilds)
    report = cli_keys.erase(acme)
    assert report["completed"] and report["keys_destroyed"] == 2 and not report["resumed"]
    assert not tenant_runs(acme)
    assert not dagster_instance().get_run_records(filters=RunsFilter(job_name="rebuild_tenant_index_job"))
    assert tenant_rows(pipeline, acme) == dict.fromkeys([*TENANT_TABLES, "vault_keys"], 0)
    with pytest.raises(TenantErased, match="was erased"):
        pipeline.search(acme, QUERY)
