"""Tenants' keys, random and wrapped under the master key (envelope encryption), kept in a key vault.

A tenant has a secret (its MAC and CyborgDB index keys, stored as key version 0) and one data key per
key version (1, 2, ...); `ingest.tenants.data_key_version` names the one new data is written under.
Every key is random and stored wrapped (AES-256-GCM) under a key-encryption key derived from the
master key, in the key vault: a database of its own (INGEST_KEYS_DSN; by default a sibling database
`<ledger database>_keys` on the ledger's server), so that no backup of the ledger holds a key. The
ledger registers which versions exist (`ingest.tenant_keys`, no key bytes). So:

- a data key can be rotated: new rows are written under a new version at once, old rows are moved by
  the re-encryption job (`reencryption.py`), then the old version is retired (a foreign key in the
  ledger refuses while any row still needs it) and its wrapped key deleted from the vault;
- the master key can be changed by re-wrapping the vault's keys, without touching a row;
- a tenant is erased by deleting its wrapped keys from the vault, which makes every copy of its
  ciphertext unreadable, ledger backups included (`erasure.py`). Backups of the vault itself must
  therefore be kept no longer than erasures may take to become final.

Tenants created before envelope encryption had keys derived from the master key; migration 0006
registers them as 'derived' and the first process that holds the master key wraps them into the vault
as they are, so nothing is re-encrypted or re-embedded.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from ingest_pipeline.core.crypto import (
    TENANT_SECRET_VERSION,
    KeyUnwrapError,
    TenantKeys,
    VectorEncryptor,
    legacy_data_key,
    legacy_tenant_secret,
    master_key_id,
    new_data_key,
    new_tenant_secret,
    tenant_keys_from,
    unwrap_key,
    wrap_key,
)
from ingest_pipeline.ledger import TenantKeyMismatch

FIRST_DATA_KEY_VERSION = 1


class UnknownTenant(LookupError):
    """No data was ever written for this tenant (or it was erased and not re-created)."""


class TenantErased(LookupError):
    """The tenant was erased (or its erasure is under way): its keys are destroyed and its data unreadable."""


def _key_check(mac_key: bytes) -> bytes:
    return hmac.new(mac_key, b"ingest-pipeline/key-check", hashlib.sha256).digest()


@dataclass(repr=False)
class TenantKeySet:
    """One tenant's unwrapped keys: every data-key version still held, and which one new data uses."""

    tenant_id: str
    active_version: int
    secret: bytes
    data_keys: dict[int, bytes]
    _encryptors: dict[int, VectorEncryptor] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TenantKeySet(tenant_id={self.tenant_id!r}, versions={sorted(self.data_keys)})"

    def keys(self, version: int | None = None) -> TenantKeys:
        version = self.active_version if version is None else version
        if version not in self.data_keys:
            raise TenantKeyMismatch(f"tenant {self.tenant_id!r} has no data key version {version} (retired?)")
        return tenant_keys_from(self.tenant_id, version, self.data_keys[version], self.secret)

    def encryptor(self, version: int | None = None) -> VectorEncryptor:
        version = self.active_version if version is None else version
        if version not in self._encryptors:
            self._encryptors[version] = VectorEncryptor(self.keys(version))
        return self._encryptors[version]

    @property
    def key_check(self) -> bytes:
        return _key_check(self.keys().mac_key)


class KeyVaultMissingKey(LookupError):
    """The ledger registers a key the vault does not hold (a wrong INGEST_KEYS_DSN, or a lost vault)."""


class KeyVault:
    """The database that holds tenants' wrapped keys, apart from the ledger and its backups."""

    SCHEMA = """
        CREATE SCHEMA IF NOT EXISTS ingest_keys;
        CREATE TABLE IF NOT EXISTS ingest_keys.wrapped_keys (
            tenant_id     text        NOT NULL,
            key_version   integer     NOT NULL,
            wrapped_key   bytea       NOT NULL,  -- AES-256-GCM under the master's key-encryption key
            master_key_id text        NOT NULL,  -- which master key wrapped it (a public name)
            created_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, key_version)
        );
        -- Each erasure that destroyed a tenant's keys here, named by the time the ledger recorded its request:
        -- lets an interrupted erasure tell "destroyed by me" from "this is not the tenant's vault".
        CREATE TABLE IF NOT EXISTS ingest_keys.erasures (
            tenant_id    text        NOT NULL,
            requested_at timestamptz NOT NULL,
            destroyed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, requested_at)
        );
    """

    def __init__(self, dsn: str, connect_timeout_s: int = 15):
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s

    @classmethod
    def beside(cls, ledger_dsn: str) -> KeyVault:
        """The default vault: database `<ledger database>_keys` on the ledger's server, created if missing."""
        params = conninfo_to_dict(ledger_dsn)
        name = f"{params.get('dbname') or params.get('user') or 'postgres'}_keys"
        with psycopg.connect(ledger_dsn, autocommit=True, connect_timeout=15) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                with suppress(psycopg.errors.DuplicateDatabase):  # created meanwhile by another process
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return cls(make_conninfo(ledger_dsn, dbname=name))

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row,
                             connect_timeout=self.connect_timeout_s) as conn:
            yield conn

    def migrate(self) -> None:
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7243, 0)")
            conn.execute(self.SCHEMA)

    def wrapped(self, tenant_id: str) -> dict[int, dict]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT key_version, wrapped_key, master_key_id FROM ingest_keys.wrapped_keys WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchall()
        return {row["key_version"]: row for row in rows}

    def put(self, conn: psycopg.Connection, tenant_id: str, version: int, wrapped: bytes, master_id: str) -> None:
        conn.execute(
            "INSERT INTO ingest_keys.wrapped_keys (tenant_id, key_version, wrapped_key, master_key_id)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, key_version)"
            " DO UPDATE SET wrapped_key = EXCLUDED.wrapped_key, master_key_id = EXCLUDED.master_key_id",
            (tenant_id, version, wrapped, master_id),
        )

    def delete(self, conn: psycopg.Connection, tenant_id: str, versions: list[int] | None = None) -> int:
        if versions is None:
            return conn.execute("DELETE FROM ingest_keys.wrapped_keys WHERE tenant_id = %s", (tenant_id,)).rowcount
        return conn.execute(
            "DELETE FROM ingest_keys.wrapped_keys WHERE tenant_id = %s AND key_version = ANY(%s)",
            (tenant_id, versions),
        ).rowcount


class KeyStore:
    """Creates, opens, rotates, re-wraps and destroys tenants' keys under one master key.

    Methods take a connection to the ledger (for the register and the tenant's row; callers that change
    keys hold the tenant's writer lock on it) and use the vault for the key bytes.
    """

    def __init__(self, master_key: bytes, vault: KeyVault):
        self._master = master_key
        self.vault = vault
        self.master_key_id = master_key_id(master_key)

    def _wrap(self, tenant_id: str, version: int, key: bytes) -> bytes:
        return wrap_key(self._master, tenant_id, version, key)

    # ---- opening -------------------------------------------------------------------------------

    def open(
        self, conn: psycopg.Connection, tenant_id: str, create: bool = False, erasing: bool = False,
    ) -> TenantKeySet:
        """The tenant's keys; with `create`, a tenant never seen gets new random keys (hold its lock).

        Raises UnknownTenant, TenantErased, KeyVaultMissingKey, or TenantKeyMismatch when the master key
        is not the one the tenant's keys were wrapped (or derived) with. `erasing`: the erasure itself
        opens the keys of a tenant whose erasure is under way (to drop its index before they are gone).
        """
        erasure = conn.execute(
            "SELECT keys_destroyed_at, completed_at FROM ingest.tenant_erasures WHERE tenant_id = %s"
            " AND readmitted_at IS NULL", (tenant_id,)  # a re-admitted tenant is created anew
        ).fetchone()
        if erasure is not None and erasure["completed_at"] is None and not erasing:
            raise TenantErased(f"tenant {tenant_id!r} is being erased: run `ingest-pipeline erase-tenant --tenant "
                               f"{tenant_id} --yes` again to finish")
        tenant = conn.execute(
            "SELECT key_check, data_key_version FROM ingest.tenants WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()
        if tenant is None:
            if erasure is not None and not erasing:  # a tombstone: never created again, not even with `create`
                raise TenantErased(f"tenant {tenant_id!r} was erased on {erasure['completed_at']:%Y-%m-%d %H:%M} UTC; "
                                   "it has no data")
            if not create:
                raise UnknownTenant(f"no data was ever ingested for tenant {tenant_id!r}")
            self._create(conn, tenant_id)
            return self.open(conn, tenant_id)
        registered = conn.execute(
            "SELECT key_version, scheme FROM ingest.tenant_keys WHERE tenant_id = %s ORDER BY key_version",
            (tenant_id,),
        ).fetchall()
        wrapped = self.vault.wrapped(tenant_id)
        material: dict[int, bytes] = {}
        for row in registered:
            version = row["key_version"]
            if row["scheme"] == "destroyed":
                raise TenantErased(f"the keys of tenant {tenant_id!r} are destroyed")
            if row["scheme"] == "derived":
                material[version] = self._adopt_derived(conn, tenant_id, version, bytes(tenant["key_check"]))
            elif version not in wrapped:
                raise KeyVaultMissingKey(
                    f"the key vault holds no key version {version} of tenant {tenant_id!r}: is INGEST_KEYS_DSN the "
                    "vault this ledger was written with?"
                )
            else:
                material[version] = self._unwrap(tenant_id, version, wrapped[version])
        if TENANT_SECRET_VERSION not in material:
            raise TenantKeyMismatch(f"tenant {tenant_id!r} has no key secret registered in the ledger")
        secret = material.pop(TENANT_SECRET_VERSION)
        if not hmac.compare_digest(_key_check(secret[:32]), bytes(tenant["key_check"])):
            raise TenantKeyMismatch(f"the keys of tenant {tenant_id!r} do not match its key check")
        return TenantKeySet(tenant_id, tenant["data_key_version"], secret, material)

    def _unwrap(self, tenant_id: str, version: int, row: dict) -> bytes:
        try:
            return unwrap_key(self._master, tenant_id, version, row["wrapped_key"])
        except KeyUnwrapError:
            raise TenantKeyMismatch(
                f"tenant {tenant_id!r} was written under another master key (its keys are wrapped under master key "
                f"{row['master_key_id']}, INGEST_MASTER_KEY is {self.master_key_id}): check INGEST_MASTER_KEY"
            ) from None

    def _adopt_derived(self, conn: psycopg.Connection, tenant_id: str, version: int, key_check: bytes) -> bytes:
        """Wrap a pre-envelope tenant's derived key into the vault as it is (idempotent across processes)."""
        if version == TENANT_SECRET_VERSION:
            key = legacy_tenant_secret(self._master, tenant_id)
            if not hmac.compare_digest(_key_check(key[:32]), key_check):
                raise TenantKeyMismatch(
                    f"tenant {tenant_id!r} was written under another master key: check INGEST_MASTER_KEY"
                )
        else:
            key = legacy_data_key(self._master, tenant_id, version)
        with self.vault.connect() as vault:
            self.vault.put(vault, tenant_id, version, self._wrap(tenant_id, version, key), self.master_key_id)
        conn.execute(
            "UPDATE ingest.tenant_keys SET scheme = 'wrapped' WHERE tenant_id = %s AND key_version = %s"
            " AND scheme = 'derived'",
            (tenant_id, version),
        )
        return key

    def _create(self, conn: psycopg.Connection, tenant_id: str) -> None:
        keys = {TENANT_SECRET_VERSION: new_tenant_secret(), FIRST_DATA_KEY_VERSION: new_data_key()}
        # The vault first: a ledger row never names a key the vault lacks. A crash in between leaves keys of
        # a tenant that does not exist; the caller holds the tenant's lock and found no tenant row, so any
        # keys the vault holds for it are such leftovers, replaced here.
        with self.vault.connect() as vault, vault.transaction():
            self.vault.delete(vault, tenant_id)
            for version, key in keys.items():
                vault.execute(
                    "INSERT INTO ingest_keys.wrapped_keys (tenant_id, key_version, wrapped_key, master_key_id)"
                    " VALUES (%s, %s, %s, %s)",
                    (tenant_id, version, self._wrap(tenant_id, version, key), self.master_key_id),
                )
        with conn.transaction():
            inserted = conn.execute(
                "INSERT INTO ingest.tenants (tenant_id, key_check, data_key_version) VALUES (%s, %s, %s)"
                " ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
                (tenant_id, _key_check(keys[TENANT_SECRET_VERSION][:32]), FIRST_DATA_KEY_VERSION),
            ).fetchone()
            if inserted is None:
                raise TenantKeyMismatch(f"tenant {tenant_id!r} was created by another process meanwhile; retry")
            for version in keys:
                conn.execute("INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme) VALUES (%s, %s, "
                             "'wrapped')", (tenant_id, version))

    # ---- rotation ------------------------------------------------------------------------------

    def rotate(self, conn: psycopg.Connection, tenant_id: str) -> int:
        """Add a new random data key version and write new data under it from now on (hold the tenant's lock).

        Rows under older versions stay readable until the re-encryption job moves them."""
        self.open(conn, tenant_id)  # proves the master key, and wraps derived keys first
        version = conn.execute(
            "SELECT max(key_version) + 1 AS next FROM ingest.tenant_keys WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()["next"]
        with self.vault.connect() as vault:
            self.vault.put(vault, tenant_id, version, self._wrap(tenant_id, version, new_data_key()),
                           self.master_key_id)
        with conn.transaction():
            conn.execute("INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme) VALUES (%s, %s, 'wrapped')",
                         (tenant_id, version))
            conn.execute("UPDATE ingest.tenants SET data_key_version = %s WHERE tenant_id = %s", (version, tenant_id))
        return version

    def retire_unused(self, conn: psycopg.Connection, tenant_id: str) -> list[int]:
        """Retire every data key version that is not the active one and that no row needs any more: its
        registration goes from the ledger, then its wrapped key from the vault (hold the tenant's lock)."""
        rows = conn.execute(
            "DELETE FROM ingest.tenant_keys k USING ingest.tenants t"
            " WHERE k.tenant_id = %s AND t.tenant_id = k.tenant_id AND k.key_version <> %s"
            " AND k.key_version <> t.data_key_version"
            " AND NOT EXISTS (SELECT 1 FROM ingest.chunks c WHERE c.tenant_id = k.tenant_id"
            "                 AND c.key_version = k.key_version)"
            " RETURNING k.key_version",
            (tenant_id, TENANT_SECRET_VERSION),
        ).fetchall()
        registered = [row["key_version"] for row in conn.execute(
            "SELECT key_version FROM ingest.tenant_keys WHERE tenant_id = %s", (tenant_id,)).fetchall()]
        with self.vault.connect() as vault:
            # Also any key an interrupted rotation or retirement left in the vault without a registration.
            vault.execute("DELETE FROM ingest_keys.wrapped_keys WHERE tenant_id = %s AND NOT key_version = ANY(%s)",
                          (tenant_id, registered))
        return sorted(row["key_version"] for row in rows)

    def rewrap_all(self, conn: psycopg.Connection, new_master: bytes) -> int:
        """Re-wrap every tenant's keys under `new_master` in one vault transaction; no row of data changes.

        Derived keys of tenants from before envelope encryption are wrapped on the way."""
        target = KeyStore(new_master, self.vault)
        tenants = [row["tenant_id"] for row in conn.execute(
            "SELECT tenant_id FROM ingest.tenants ORDER BY tenant_id").fetchall()]
        keysets = []
        for tenant_id in tenants:
            try:  # a tenant whose erasure is under way too: it still needs its keys to finish
                keysets.append(self.open(conn, tenant_id, erasing=True))
            except (TenantErased, KeyVaultMissingKey):  # keys already destroyed
                continue
        count = 0
        with self.vault.connect() as vault, vault.transaction():
            for keyset in keysets:
                for version, key in ((TENANT_SECRET_VERSION, keyset.secret), *keyset.data_keys.items()):
                    self.vault.put(vault, keyset.tenant_id, version, target._wrap(keyset.tenant_id, version, key),
                                   target.master_key_id)
                    count += 1
        return count

    def destroy(self, vault: psycopg.Connection, tenant_id: str, requested_at) -> int:
        """Delete the tenant's wrapped keys from the vault (on `vault`, a connection to it, in the caller's
        transaction) and record the erasure there: from the commit on, none of its ciphertext can be read."""
        vault.execute("INSERT INTO ingest_keys.erasures (tenant_id, requested_at) VALUES (%s, %s)"
                      " ON CONFLICT DO NOTHING", (tenant_id, requested_at))
        return self.vault.delete(vault, tenant_id)

    def destroyed_by(self, tenant_id: str, requested_at) -> bool:
        """Whether the erasure requested at `requested_at` already destroyed the tenant's keys in this vault."""
        with self.vault.connect() as vault:
            return vault.execute("SELECT 1 FROM ingest_keys.erasures WHERE tenant_id = %s AND requested_at = %s",
                                 (tenant_id, requested_at)).fetchone() is not None

    @staticmethod
    def mark_destroyed(conn: psycopg.Connection, tenant_id: str) -> None:
        conn.execute("UPDATE ingest.tenant_keys SET scheme = 'destroyed' WHERE tenant_id = %s", (tenant_id,))
