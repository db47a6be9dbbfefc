"""Key life-cycle faults on the real ledger and vault, without ingesting: a retirement interrupted between its two
deletions, keys of another installation (or of a newer ledger) never replaced, a master-key rotation fenced against
wraps under the old key and erasures, resumable over a mixed vault, re-encryption paging by chunk_id, and a
retried rotation step that rotates once."""

import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ingest_pipeline.cli import keys as cli_keys
from ingest_pipeline.core import faults
from ingest_pipeline.core.crypto import SEAL_FORMAT, generate_master_key, parse_master_key
from ingest_pipeline.core.faults import InjectedFault
from ingest_pipeline.definitions import build_resources
from ingest_pipeline.stores.key_vault import KeyStore, KeyVaultConflict, MasterKeyRotated
from ingest_pipeline.stores.ledger import Ledger, TenantKeyMismatch
from ingest_pipeline.work.reencryption import reencrypt_tenant
from ingest_pipeline_tests.helpers import ledger_chunks


@pytest.fixture
def keys(embedded_pipeline, fault_state):
    """The installation's ledger, keyring and key store (on the embedded server), with the fault injector ready."""
    embedded_pipeline.ledger()  # migrates, and sets the Dagster environment up
    resources = build_resources()
    return embedded_pipeline, resources["ledger"].ledger, resources["keyring"], resources["keyring"].store


def create(ledger: Ledger, store: KeyStore, tenant: str):
    with ledger.tenant_writer(tenant) as session:
        return store.open(session.conn, tenant, create=True)


def opened(ledger: Ledger, store: KeyStore, tenant: str):
    with ledger.connect() as conn:
        return store.open(conn, tenant)


def registered(ledger: Ledger, tenant: str) -> list[int]:
    with ledger.connect() as conn:
        return [row["key_version"] for row in conn.execute(
            "SELECT key_version FROM ingest.tenant_keys WHERE tenant_id = %s ORDER BY 1", (tenant,)).fetchall()]


def vault(store: KeyStore, tenant: str) -> dict[int, dict]:
    return store.vault.wrapped(tenant)


def test_a_retirement_interrupted_between_its_deletions_leaves_a_tenant_the_next_command_finishes(keys, monkeypatch):
    pipeline, ledger, keyring, store = keys
    acme = pipeline.tenant("acme")
    create(ledger, store, acme)
    with ledger.tenant_writer(acme) as session:
        assert store.rotate(session.conn, acme) == 2

    # The retirement stops after its first step (the ledger's registration of version 1 deleted and committed).
    monkeypatch.setenv(faults.ENV, "retire:before-vault=raise-once")
    with pytest.raises(InjectedFault):
        reencrypt_tenant(ledger, keyring, acme)
    assert registered(ledger, acme) == [0, 2]
    assert set(vault(store, acme)) == {0, 1, 2}  # a leftover nothing reads
    assert opened(ledger, store, acme).data_keys.keys() == {2}  # ingest and search open the tenant

    # The next command (`rotate-key --resume`) finishes: the leftover goes from the vault.
    report = reencrypt_tenant(ledger, keyring, acme)
    assert report.rows_left == 0 and set(vault(store, acme)) == {0, 2}
    assert opened(ledger, store, acme).data_keys.keys() == {2}


def test_erase_tenant_finishes_when_a_registered_key_is_already_gone_from_the_vault(keys):
    pipeline, ledger, _, store = keys
    acme = pipeline.tenant("acme")
    create(ledger, store, acme)
    with ledger.tenant_writer(acme) as session:
        store.rotate(session.conn, acme)
    with store.vault.connect() as conn:  # what the old retirement order left after a crash
        store.vault.delete(conn, acme, [1])
    report = cli_keys.erase(acme)
    assert report["completed"] and report["keys_destroyed"] == 2
    assert vault(store, acme) == {} and registered(ledger, acme) == []


def test_keys_in_the_vault_that_this_ledger_does_not_know_are_never_replaced(keys, monkeypatch):
    pipeline, ledger, _, store = keys
    acme, globex = pipeline.tenant("acme"), pipeline.tenant("globex")
    created = create(ledger, store, acme)
    before = {version: bytes(row["wrapped_key"]) for version, row in vault(store, acme).items()}
    with ledger.connect() as conn:
        mine = KeyStore.installation_id(conn)
    assert {row["installation_id"] for row in vault(store, acme).values()} == {mine}

    # A second installation (its own ledger) pointed at the same vault.
    name = f"second_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    second = Ledger(make_conninfo(ledger.dsn, dbname=name))
    second.migrate()
    with second.connect() as conn:
        other = KeyStore.installation_id(conn)
    assert other != mine
    with pytest.raises(KeyVaultConflict) as refused:
        create(second, store, acme)
    assert f"belong to installation {mine}; this ledger is installation {other}" in str(refused.value)

    # This ledger restored from a backup older than the tenant.
    with ledger.connect() as conn:
        conn.execute("DELETE FROM ingest.tenants WHERE tenant_id = %s", (acme,))
    with pytest.raises(KeyVaultConflict, match="restored from a backup older than the tenant"):
        create(ledger, store, acme)
    assert {version: bytes(row["wrapped_key"]) for version, row in vault(store, acme).items()} == before
    assert created.secret not in str(refused.value).encode()

    # The leftovers of this installation's own create, stopped before the ledger commit, are replaced.
    monkeypatch.setenv(faults.ENV, "keys:create-after-vault=raise-once")
    with pytest.raises(InjectedFault):
        create(ledger, store, globex)
    assert {row["pending"] for row in vault(store, globex).values()} == {True}
    keyset = create(ledger, store, globex)
    assert opened(ledger, store, globex).secret == keyset.secret
    assert {row["pending"] for row in vault(store, globex).values()} == {False}


def test_a_master_key_rotation_is_fenced_resumable_and_never_undoes_an_erasure(keys, monkeypatch, fault_state):
    pipeline, ledger, _, store = keys
    tenants = [pipeline.tenant(name) for name in ("acme", "globex", "hooli", "initech")]
    for tenant in tenants:
        create(ledger, store, tenant)
    acme, globex, hooli, initech = tenants
    new_master = parse_master_key(generate_master_key())
    rotated = KeyStore(new_master, store.vault)

    # (a) An erasure commits while the rotation is between tenants (after acme): it is not undone.
    monkeypatch.setenv(faults.ENV, "rewrap:between-tenants=hold-once")
    outcome: dict = {}
    rotation = threading.Thread(target=lambda: outcome.update(count=store.rewrap_all(ledger, new_master)))
    rotation.start()
    held = faults.marker("rewrap:between-tenants", ".held")
    deadline = time.monotonic() + 60
    while not held.exists():
        assert time.monotonic() < deadline and rotation.is_alive(), "the rotation never reached the seam"
        time.sleep(0.05)
    # Meanwhile the old key can no longer wrap a new key (a sensor creating a tenant): refused, nothing written.
    late = pipeline.tenant("late")
    with pytest.raises(MasterKeyRotated, match=f"being rotated to {rotated.master_key_id}"):
        create(ledger, store, late)
    assert cli_keys.erase(globex)["completed"]
    held.unlink()
    rotation.join(60)
    assert outcome["count"] == 3 * 2
    assert vault(store, globex) == {}
    for tenant in (acme, hooli, initech):
        assert {row["master_key_id"] for row in vault(store, tenant).values()} == {rotated.master_key_id}
        assert opened(ledger, rotated, tenant).secret

    # (c) After the switch, a process still holding the old key cannot create a tenant: nothing is written.
    with pytest.raises(MasterKeyRotated) as refused:
        create(ledger, store, late)
    assert f"rotated to {rotated.master_key_id}: set INGEST_MASTER_KEY to the new key" in str(refused.value)
    assert vault(store, late) == {} and registered(ledger, late) == []
    with pytest.raises(TenantKeyMismatch, match="another master key"):
        opened(ledger, store, acme)

    # (b) A second rotation stops after its first tenant: the vault mixes both keys; running it again finishes.
    third = parse_master_key(generate_master_key())
    final = KeyStore(third, store.vault)
    monkeypatch.setenv(faults.ENV, "rewrap:between-tenants=raise")
    with pytest.raises(InjectedFault):
        rotated.rewrap_all(ledger, third)
    assert {row["master_key_id"] for t in (acme, hooli, initech) for row in vault(store, t).values()} == {
        rotated.master_key_id, final.master_key_id}
    monkeypatch.delenv(faults.ENV)
    assert rotated.rewrap_all(ledger, third) == 2 * 2  # hooli's and initech's keys; acme's are skipped
    for tenant in (acme, hooli, initech):
        assert opened(ledger, final, tenant).secret
    assert rotated.rewrap_all(ledger, third) == 0  # done
    create(ledger, final, late)  # the new key wraps
    assert {row["master_key_id"] for row in vault(store, late).values()} == {final.master_key_id}


def test_reencryption_pages_through_the_tenant_by_chunk_id(keys, tmp_path):
    pipeline, ledger, keyring, store = keys
    acme = pipeline.tenant("acme")
    (tmp_path / "tiny.md").write_text("# Tiny\n\nA document.\n")
    pipeline.upload(acme, tmp_path / "tiny.md")
    keyset = create(ledger, store, acme)
    encryptor, texts = keyset.encryptor(), {}
    with ledger.connect() as conn, conn.transaction():
        upload = conn.execute("SELECT upload_id, doc_id FROM ingest.uploads WHERE tenant_id = %s", (acme,)).fetchone()
        conn.execute("INSERT INTO ingest.documents (doc_id, tenant_id, doc_name, upload_id, partition_month, status)"
                     " VALUES (%s, %s, 'tiny.md', %s, '2026-12', 'chunked')",
                     (upload["doc_id"], acme, upload["upload_id"]))
        for sequence in range(45):
            chunk_id, text = str(uuid.uuid4()), f"chunk {sequence} of the tiny document"
            mac = encryptor.text_mac(text)
            conn.execute("INSERT INTO ingest.chunks (chunk_id, tenant_id, doc_id, sequence, token_count, text_mac,"
                         " text_ciphertext, key_version, state) VALUES (%s, %s, %s, %s, 5, %s, %s, 1, 'chunked')",
                         (chunk_id, acme, upload["doc_id"], sequence, mac, encryptor.encrypt_text(chunk_id, text)))
            texts[chunk_id] = (text, mac)
    with ledger.tenant_writer(acme) as session:
        store.rotate(session.conn, acme)

    report = reencrypt_tenant(ledger, keyring, acme, batch_size=10)
    assert (report.rows_moved, report.batches, report.rows_left, report.retired_versions) == (45, 5, 0, [1])
    rows = ledger_chunks(ledger, acme)
    new = opened(ledger, store, acme).encryptor()
    assert {row["key_version"] for row in rows.values()} == {2}
    assert {cid: new.decrypt_text(cid, row["text_ciphertext"], row["text_mac"]) for cid, row in rows.items()} == {
        cid: text for cid, (text, _) in texts.items()}

    # Each batch starts at the cursor on the (tenant_id, chunk_id) index instead of scanning the tenant again.
    with ledger.connect() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        query, params = ledger.chunks.reseal_query(acme, sorted(rows)[20], 2, SEAL_FORMAT, 10).statement()
        plan = conn.execute(sql.SQL("EXPLAIN ") + query, params).fetchall()
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    assert "chunks_tenant_chunk_idx" in text and "chunk_id >" in text, text


def test_a_retried_rotation_step_rotates_once(keys, monkeypatch):
    pipeline, ledger, _, store = keys
    acme = pipeline.tenant("acme")
    create(ledger, store, acme)
    monkeypatch.setenv(faults.ENV, "reencrypt:after-rotate=raise-once")  # the step fails once, after rotating
    result = cli_keys.rotate_key(acme)
    assert result["success"], result["error"]
    assert result["versions_before"] == [1] and result["versions_after"] == [2]
    assert set(vault(store, acme)) == {0, 2}


def test_a_vault_from_before_installation_ids_is_upgraded_once(keys):
    pipeline, ledger, _, store = keys
    acme = pipeline.tenant("acme")
    create(ledger, store, acme)
    with store.vault.connect() as conn:
        conn.execute("ALTER TABLE ingest_keys.wrapped_keys DROP COLUMN installation_id, DROP COLUMN pending")
    store.vault.migrate()
    store.vault.migrate()  # nothing left to add
    assert {(row["installation_id"], row["pending"]) for row in vault(store, acme).values()} == {(None, False)}
    assert opened(ledger, store, acme).secret
    with ledger.connect() as conn:
        conn.execute("DELETE FROM ingest.tenants WHERE tenant_id = %s", (acme,))
    with pytest.raises(KeyVaultConflict, match="belong to installation unknown"):  # never replaced either
        create(ledger, store, acme)
