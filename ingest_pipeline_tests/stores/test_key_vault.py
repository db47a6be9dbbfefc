"""ingest_pipeline.stores.key_vault against a real PostgreSQL (one embedded server for the module, a new ledger
database and its vault per test): random keys stored wrapped, never replaced, opened only under their master
key, rotated and retired; the vault's master-key fence."""

import secrets

import psycopg
import pytest
from psycopg import sql

from ingest_pipeline.core.crypto import TENANT_SECRET_VERSION, generate_master_key, master_key_id, parse_master_key
from ingest_pipeline.runtime.settings import embedded_postgres_uri, stop_embedded_postgres
from ingest_pipeline.stores.key_vault import (
    FIRST_DATA_KEY_VERSION,
    KeyStore,
    KeyVault,
    KeyVaultConflict,
    KeyVaultMissingKey,
    MasterKeyRotated,
    UnknownTenant,
)
from ingest_pipeline.stores.ledger import Ledger, TenantKeyMismatch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One embedded PostgreSQL server for the module's databases."""
    home = tmp_path_factory.mktemp("key-vault-server")
    yield embedded_postgres_uri(home)
    stop_embedded_postgres(home)


@pytest.fixture
def ledger(server) -> Ledger:
    """A migrated ledger in a database of its own (its vault goes beside it, as in development)."""
    name = f"ledger_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    ledger = Ledger(psycopg.conninfo.make_conninfo(server, dbname=name))
    ledger.migrate()
    return ledger


@pytest.fixture
def vault(ledger) -> KeyVault:
    vault = KeyVault.beside(ledger.dsn)
    vault.migrate()
    return vault


def _store(vault: KeyVault, master: str | None = None) -> KeyStore:
    return KeyStore(parse_master_key(master or generate_master_key()), vault)


def test_the_vault_is_a_database_beside_the_ledger_created_once_and_migrated_idempotently(ledger, vault):
    assert psycopg.conninfo.conninfo_to_dict(vault.dsn)["dbname"] == (
        psycopg.conninfo.conninfo_to_dict(ledger.dsn)["dbname"] + "_keys")
    assert KeyVault.beside(ledger.dsn).dsn == vault.dsn  # the database exists: joined, not created again
    vault.migrate()
    with vault.connect() as conn:
        columns = {row["column_name"] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ingest_keys'"
            " AND table_name = 'wrapped_keys'").fetchall()}
    assert {"installation_id", "pending", "wrapped_key", "master_key_id"} <= columns
    with ledger.connect() as conn:  # no key bytes in the ledger's database
        assert conn.execute("SELECT to_regclass('ingest_keys.wrapped_keys') AS t").fetchone()["t"] is None


def test_a_new_tenant_gets_random_keys_stored_wrapped_and_opens_again_to_the_same_keys(ledger, vault):
    store = _store(vault)
    with ledger.connect() as conn:
        with pytest.raises(UnknownTenant):
            store.open(conn, "acme")
        created = store.open(conn, "acme", create=True)
        other = store.open(conn, "globex", create=True)
        again = store.open(conn, "acme")
        installation = KeyStore.installation_id(conn)
    assert created.active_version == FIRST_DATA_KEY_VERSION and sorted(created.data_keys) == [1]
    assert again.secret == created.secret and again.data_keys == created.data_keys
    assert other.secret != created.secret and other.data_keys[1] != created.data_keys[1]
    assert "secret" not in repr(created) and created.secret.hex() not in repr(created)
    wrapped = vault.wrapped("acme")
    assert sorted(wrapped) == [TENANT_SECRET_VERSION, FIRST_DATA_KEY_VERSION]
    for version, key in ((0, created.secret), (1, created.data_keys[1])):
        row = wrapped[version]
        assert key not in bytes(row["wrapped_key"]) and row["master_key_id"] == store.master_key_id
        assert row["pending"] is False and row["installation_id"] == installation


def test_another_master_key_opens_nothing_and_the_error_names_key_ids_only(ledger, vault):
    right = generate_master_key()
    with ledger.connect() as conn:
        _store(vault, right).open(conn, "acme", create=True)
        wrong = generate_master_key()
        with pytest.raises(TenantKeyMismatch, match="another master key") as refused:
            _store(vault, wrong).open(conn, "acme")
    message = str(refused.value)
    assert master_key_id(parse_master_key(right)) in message and master_key_id(parse_master_key(wrong)) in message
    assert right not in message and wrong not in message


def test_a_key_in_the_vault_is_never_overwritten_and_a_rewrap_never_inserts(ledger, vault):
    store = _store(vault)
    with ledger.connect() as conn:
        store.open(conn, "acme", create=True)
    before = vault.wrapped("acme")[1]["wrapped_key"]
    with vault.connect() as conn:
        assert vault.put(conn, "acme", 1, b"other bytes", "other-master", "other-installation") is False
        assert KeyVault.rewrap(conn, "acme", 7, b"wrapped", store.master_key_id) is False
    assert vault.wrapped("acme")[1]["wrapped_key"] == before and 7 not in vault.wrapped("acme")


def test_keys_another_installation_left_in_the_vault_are_refused_not_replaced(ledger, vault):
    store = _store(vault)
    with vault.connect() as conn:
        vault.put(conn, "acme", TENANT_SECRET_VERSION, b"someone else's", store.master_key_id, "other-installation")
    with ledger.connect() as conn, pytest.raises(KeyVaultConflict, match="belong to installation other-installation"):
        store.open(conn, "acme", create=True)
    assert bytes(vault.wrapped("acme")[TENANT_SECRET_VERSION]["wrapped_key"]) == b"someone else's"


def test_a_ledger_key_the_vault_lacks_is_named_not_guessed(ledger, vault):
    store = _store(vault)
    with ledger.connect() as conn:
        store.open(conn, "acme", create=True)
        with vault.connect() as keys:
            assert vault.delete(keys, "acme", [FIRST_DATA_KEY_VERSION]) == 1
        with pytest.raises(KeyVaultMissingKey, match="holds no key version 1 of tenant 'acme'"):
            store.open(conn, "acme")


def test_a_rotation_writes_new_data_under_a_new_version_and_retires_the_old_one_when_no_row_needs_it(ledger, vault):
    store = _store(vault)
    with ledger.connect() as conn:
        first = store.open(conn, "acme", create=True)
        assert store.rotate(conn, "acme", run_id="run-1") == 2
        assert store.rotate(conn, "acme", run_id="run-1") == 2  # a retried step rotates once
        rotated = store.open(conn, "acme")
        assert rotated.active_version == 2 and rotated.data_keys[1] == first.data_keys[1]
        assert rotated.data_keys[2] != first.data_keys[1] and rotated.secret == first.secret
        assert store.retire_unused(conn, "acme") == [1]  # no chunk is written under version 1
        assert sorted(store.open(conn, "acme").data_keys) == [2]
    assert sorted(vault.wrapped("acme")) == [TENANT_SECRET_VERSION, 2]


def test_after_a_master_key_rotation_only_the_new_master_key_opens_or_wraps_keys(ledger, vault):
    old, new = generate_master_key(), generate_master_key()
    with ledger.connect() as conn:
        keys = _store(vault, old).open(conn, "acme", create=True)
    assert _store(vault, old).rewrap_all(ledger, parse_master_key(new)) == 2
    with ledger.connect() as conn:
        assert _store(vault, new).open(conn, "acme").data_keys == keys.data_keys  # same keys, new wrapping
        with pytest.raises(MasterKeyRotated, match="was rotated"):
            _store(vault, old).open(conn, "globex", create=True)  # the fence: nothing wrapped under the old key
    assert vault.wrapped("globex") == {}
    with vault.connect() as conn, conn.transaction():
        assert KeyVault.master_row(conn, claim="ignored") == {"current": master_key_id(parse_master_key(new)),
                                                              "next": None}
