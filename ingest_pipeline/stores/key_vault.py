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
- the master key can be changed by re-wrapping the vault's keys, without touching a row. The vault records
  which master key it expects (`ingest_keys.master`), and every wrap checks it under a lock in the
  transaction that writes the key, so no process can wrap a new key under a master key being retired;
- a key in the vault is never replaced: each records the installation (`ingest.installation`) that wrote
  it, and a tenant whose keys the ledger does not know is refused, unless they are the leftovers of this
  installation's own interrupted create;
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
from ingest_pipeline.core.faults import fault_point
from ingest_pipeline.stores import locks
from ingest_pipeline.stores.ledger import TenantKeyMismatch

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

    def index_keys(self) -> TenantKeys:
        """The keys that open the tenant's CyborgDB index (its index key comes from the secret alone)."""
        version = self.active_version if self.active_version in self.data_keys else next(iter(self.data_keys), 0)
        return tenant_keys_from(self.tenant_id, version, self.data_keys.get(version, b""), self.secret)

    @property
    def key_check(self) -> bytes:
        return _key_check(self.keys().mac_key)


class KeyVaultMissingKey(LookupError):
    """The ledger registers a key the vault does not hold (a wrong INGEST_KEYS_DSN, or a lost vault)."""


class KeyVaultConflict(TenantKeyMismatch):
    """The vault holds keys this ledger does not know (another installation's, or a newer ledger's): never replaced."""


class MasterKeyRotated(TenantKeyMismatch):
    """A wrap under a master key that the vault no longer expects (it was, or is being, rotated away)."""


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
        -- The master key every new wrap must be under: `current`, or `next` while a rotation to it is under way.
        CREATE TABLE IF NOT EXISTS ingest_keys.master (
            singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            current_master_key_id text NOT NULL,
            next_master_key_id    text
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

    # Columns added since the table's first release, each applied once (ALTER TABLE takes an exclusive lock even
    # when the column exists, which would queue every reader behind a vault transaction at each process start).
    COLUMNS = {
        # The installation (ingest.installation in its ledger) that wrote the key; NULL: from before it was recorded.
        "installation_id": "ALTER TABLE ingest_keys.wrapped_keys ADD COLUMN IF NOT EXISTS installation_id text",
        # Written by a tenant's create whose ledger commit is not confirmed yet: only such keys may be replaced.
        "pending": "ALTER TABLE ingest_keys.wrapped_keys ADD COLUMN IF NOT EXISTS pending boolean NOT NULL"
                   " DEFAULT false",
    }

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
            conn.execute(*locks.KEY_VAULT_MIGRATIONS.call("pg_advisory_xact_lock"))
            conn.execute(self.SCHEMA)
            present = {row["column_name"] for row in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ingest_keys'"
                " AND table_name = 'wrapped_keys'").fetchall()}
            for column, statement in self.COLUMNS.items():
                if column not in present:
                    conn.execute(statement)

    def wrapped(self, tenant_id: str) -> dict[int, dict]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT key_version, wrapped_key, master_key_id, installation_id, pending FROM ingest_keys.wrapped_keys"
                " WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchall()
        return {row["key_version"]: row for row in rows}

    def put(
        self, conn: psycopg.Connection, tenant_id: str, version: int, wrapped: bytes, master_id: str,
        installation_id: str | None, pending: bool = False,
    ) -> bool:
        """Insert a wrapped key; False (nothing written) when the vault already holds that version: a key is
        never overwritten here (only `rewrap` replaces a key's wrapping, keeping its material)."""
        return conn.execute(
            "INSERT INTO ingest_keys.wrapped_keys (tenant_id, key_version, wrapped_key, master_key_id, installation_id,"
            " pending) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, key_version) DO NOTHING"
            " RETURNING key_version",
            (tenant_id, version, wrapped, master_id, installation_id, pending),
        ).fetchone() is not None

    @staticmethod
    def rewrap(conn: psycopg.Connection, tenant_id: str, version: int, wrapped: bytes, master_id: str) -> bool:
        """Replace the wrapping of a key the vault still holds (never inserts: an erased key stays gone)."""
        return conn.execute(
            "UPDATE ingest_keys.wrapped_keys SET wrapped_key = %s, master_key_id = %s"
            " WHERE tenant_id = %s AND key_version = %s",
            (wrapped, master_id, tenant_id, version),
        ).rowcount == 1

    def confirm(self, tenant_id: str) -> None:
        """The tenant's ledger row exists: its keys are no longer the leftovers of an interrupted create."""
        with self.connect() as conn:
            conn.execute("UPDATE ingest_keys.wrapped_keys SET pending = false WHERE tenant_id = %s AND pending",
                         (tenant_id,))

    @staticmethod
    def master_row(conn: psycopg.Connection, claim: str, lock: str = "SHARE") -> dict:
        """The vault's expected master key(s), locked (FOR SHARE or FOR UPDATE) until the caller's transaction
        ends. A vault without the record gets one: the master key all its keys are under, else `claim`."""
        query = ("SELECT current_master_key_id AS current, next_master_key_id AS next FROM ingest_keys.master"
                 f" FOR {'UPDATE' if lock == 'UPDATE' else 'SHARE'}")
        row = conn.execute(query).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO ingest_keys.master (current_master_key_id) SELECT coalesce((SELECT min(master_key_id)"
                " FROM ingest_keys.wrapped_keys HAVING count(DISTINCT master_key_id) = 1), %s) ON CONFLICT DO NOTHING",
                (claim,),
            )
            row = conn.execute(query).fetchone()
        return row

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
                if erasing and version != TENANT_SECRET_VERSION:  # erasure destroys what exists
                    continue
                raise KeyVaultMissingKey(
                    f"the key vault holds no key version {version} of tenant {tenant_id!r}: is INGEST_KEYS_DSN the "
                    "vault this ledger was written with?"
                )
            else:
                material[version] = self._unwrap(tenant_id, version, wrapped[version])
        if any(row["pending"] for row in wrapped.values()):  # a create that stopped after the ledger commit
            self.vault.confirm(tenant_id)
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

    def _fence(self, vault: psycopg.Connection) -> None:
        """Refuse to wrap under a master key the vault no longer expects. Call it first in the vault transaction
        that writes the key: its row lock (FOR SHARE) holds off a rotation's start until that transaction ends."""
        row = KeyVault.master_row(vault, claim=self.master_key_id)
        expected = row["next"] or row["current"]
        if expected != self.master_key_id:
            state = "is being rotated" if row["next"] else "was rotated"
            raise MasterKeyRotated(
                f"the master key {state} to {expected}: set INGEST_MASTER_KEY to the new key (INGEST_MASTER_KEY is "
                f"{self.master_key_id}; no key was written)"
            )

    @staticmethod
    def installation_id(conn: psycopg.Connection) -> str:
        """This ledger's installation id (migration 0008), recorded with every key it writes to the vault."""
        return conn.execute("SELECT installation_id FROM ingest.installation").fetchone()["installation_id"]

    def _put_new(self, vault: psycopg.Connection, tenant_id: str, version: int, key: bytes, installation: str,
                 reuse: bool = False) -> bytes:
        """Store a key of this installation, returning the material stored. A version the vault already holds is
        never replaced: if it is the same key (or, with `reuse`, a key of this installation under this master key
        that no registration names yet) it is kept; anything else is a KeyVaultConflict."""
        if self.vault.put(vault, tenant_id, version, self._wrap(tenant_id, version, key), self.master_key_id,
                          installation):
            return key
        row = vault.execute("SELECT wrapped_key, master_key_id, installation_id FROM ingest_keys.wrapped_keys"
                            " WHERE tenant_id = %s AND key_version = %s FOR UPDATE", (tenant_id, version)).fetchone()
        if row is not None and row["installation_id"] == installation:
            with suppress(KeyUnwrapError):
                held = unwrap_key(self._master, tenant_id, version, row["wrapped_key"])
                if reuse or hmac.compare_digest(held, key):
                    return held
        raise KeyVaultConflict(
            f"the key vault already holds another key version {version} of tenant {tenant_id!r} "
            f"({_belongs(row, installation)}): it is never replaced; check INGEST_KEYS_DSN and the ledger"
        )

    def _adopt_derived(self, conn: psycopg.Connection, tenant_id: str, version: int, key_check: bytes,
                       legacy_master: bytes | None = None) -> bytes:
        """Wrap a pre-envelope tenant's derived key into the vault as it is (idempotent across processes).

        `legacy_master`: the master key it was derived from, when it is not this store's (a master-key rotation)."""
        derive_from = legacy_master or self._master
        if version == TENANT_SECRET_VERSION:
            key = legacy_tenant_secret(derive_from, tenant_id)
            if not hmac.compare_digest(_key_check(key[:32]), key_check):
                raise TenantKeyMismatch(
                    f"tenant {tenant_id!r} was written under another master key: check INGEST_MASTER_KEY"
                )
        else:
            key = legacy_data_key(derive_from, tenant_id, version)
        installation = self.installation_id(conn)
        with self.vault.connect() as vault, vault.transaction():
            self._fence(vault)
            self._put_new(vault, tenant_id, version, key, installation)
        conn.execute(
            "UPDATE ingest.tenant_keys SET scheme = 'wrapped' WHERE tenant_id = %s AND key_version = %s"
            " AND scheme = 'derived'",
            (tenant_id, version),
        )
        return key

    def _create(self, conn: psycopg.Connection, tenant_id: str) -> None:
        keys = {TENANT_SECRET_VERSION: new_tenant_secret(), FIRST_DATA_KEY_VERSION: new_data_key()}
        installation = self.installation_id(conn)
        # The vault first: a ledger row never names a key the vault lacks. Its keys stay `pending` until the
        # ledger row is committed; the caller holds the tenant's lock and found no tenant row, so pending keys of
        # this installation are the leftovers of a create that stopped in between, and only those are replaced.
        with self.vault.connect() as vault, vault.transaction():
            self._fence(vault)
            held = vault.execute("SELECT key_version, installation_id, pending FROM ingest_keys.wrapped_keys"
                                 " WHERE tenant_id = %s FOR UPDATE", (tenant_id,)).fetchall()
            foreign = [row for row in held if row["installation_id"] != installation or not row["pending"]]
            if foreign:
                raise KeyVaultConflict(_not_replaced(tenant_id, foreign[0], installation))
            self.vault.delete(vault, tenant_id)
            for version, key in keys.items():
                self.vault.put(vault, tenant_id, version, self._wrap(tenant_id, version, key), self.master_key_id,
                               installation, pending=True)
        fault_point("keys:create-after-vault")
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
        self.vault.confirm(tenant_id)

    # ---- rotation ------------------------------------------------------------------------------

    def rotate(self, conn: psycopg.Connection, tenant_id: str, run_id: str | None = None) -> int:
        """Add a new random data key version and write new data under it from now on (hold the tenant's lock).

        Rows under older versions stay readable until the re-encryption job moves them. With `run_id`, a
        version that run already created is returned instead of a new one (a retried step rotates once)."""
        self.open(conn, tenant_id)  # proves the master key, and wraps derived keys first
        if run_id is not None:
            done = conn.execute("SELECT max(key_version) AS version FROM ingest.tenant_keys WHERE tenant_id = %s"
                                " AND created_by_run = %s", (tenant_id, run_id)).fetchone()["version"]
            if done is not None:
                return done
        version = conn.execute(
            "SELECT max(key_version) + 1 AS next FROM ingest.tenant_keys WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()["next"]
        installation = self.installation_id(conn)
        with self.vault.connect() as vault, vault.transaction():
            self._fence(vault)
            # A key an interrupted rotation left at this version (never registered, so never used) is kept.
            self._put_new(vault, tenant_id, version, new_data_key(), installation, reuse=True)
        with conn.transaction():
            conn.execute("INSERT INTO ingest.tenant_keys (tenant_id, key_version, scheme, created_by_run)"
                         " VALUES (%s, %s, 'wrapped', %s)", (tenant_id, version, run_id))
            conn.execute("UPDATE ingest.tenants SET data_key_version = %s WHERE tenant_id = %s", (version, tenant_id))
        return version

    def retire_unused(self, conn: psycopg.Connection, tenant_id: str) -> list[int]:
        """Retire every data key version that is not the active one and that no row needs any more: its
        registration goes from the ledger (committed first), then its wrapped key from the vault (hold the
        tenant's lock; call it outside a transaction). A crash in between leaves a key in the vault that no
        registration names, which nothing reads and the next retirement deletes."""
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise RuntimeError("retire_unused commits on its own: call it outside a transaction")
        with conn.transaction():
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
        fault_point("retire:before-vault")
        if registered:  # none: the tenant is gone (erased meanwhile), and its erasure owns its keys
            with self.vault.connect() as vault:
                # Also any key an interrupted rotation or retirement left in the vault without a registration.
                vault.execute("DELETE FROM ingest_keys.wrapped_keys WHERE tenant_id = %s"
                              " AND NOT key_version = ANY(%s)", (tenant_id, registered))
        return sorted(row["key_version"] for row in rows)

    def rewrap_all(self, ledger, new_master: bytes) -> int:
        """Re-wrap every key in the vault under `new_master`, no row of data changing; resumable.

        The vault first records the rotation (`next_master_key_id`): from then on only `new_master` may wrap new
        keys. Then each tenant's keys are re-wrapped in a vault transaction of their own, under a row lock, by
        UPDATE only (a tenant erased meanwhile stays erased); keys already under `new_master` are skipped, so a
        rotation stopped half-way is finished by running it again. Last, `new_master` becomes the current one.
        Derived keys of tenants from before envelope encryption are wrapped (under `new_master`) on the way.
        Returns the number of keys re-wrapped (or wrapped) by this call."""
        target = KeyStore(new_master, self.vault)
        if target.master_key_id == self.master_key_id:
            raise ValueError("the new master key is the current one")
        with self.vault.connect() as vault, vault.transaction():
            state = KeyVault.master_row(vault, claim=self.master_key_id, lock="UPDATE")
            if state["current"] == target.master_key_id and state["next"] is None:
                return 0  # done already
            if state["next"] not in (None, target.master_key_id):
                raise MasterKeyRotated(f"a rotation to master key {state['next']} is under way: run it again with "
                                       "INGEST_NEW_MASTER_KEY set to that key")
            if state["current"] != self.master_key_id:
                raise MasterKeyRotated(f"the key vault's master key is {state['current']}, INGEST_MASTER_KEY is "
                                       f"{self.master_key_id}: set INGEST_MASTER_KEY to the vault's master key")
            vault.execute("UPDATE ingest_keys.master SET next_master_key_id = %s", (target.master_key_id,))
        count = 0
        with ledger.connect() as conn:
            derived = conn.execute("SELECT k.tenant_id, k.key_version FROM ingest.tenant_keys k JOIN ingest.tenants t"
                                   " USING (tenant_id) WHERE k.scheme = 'derived' ORDER BY 1, 2").fetchall()
        for row in derived:
            with ledger.tenant_writer(row["tenant_id"]) as session:  # an erasure holds it throughout
                tenant = session.conn.execute(
                    "SELECT t.key_check FROM ingest.tenants t JOIN ingest.tenant_keys k USING (tenant_id)"
                    " WHERE tenant_id = %s AND k.key_version = %s AND k.scheme = 'derived'",
                    (row["tenant_id"], row["key_version"])).fetchone()
                if tenant is None:
                    continue
                if row["key_version"] in self.vault.wrapped(row["tenant_id"]):
                    # An adoption that stopped after its vault commit: the key is there, under the old master
                    # key; registered as wrapped here, the re-wrap below moves it to the new one.
                    session.conn.execute("UPDATE ingest.tenant_keys SET scheme = 'wrapped' WHERE tenant_id = %s"
                                         " AND key_version = %s AND scheme = 'derived'",
                                         (row["tenant_id"], row["key_version"]))
                    continue
                target._adopt_derived(session.conn, row["tenant_id"], row["key_version"],
                                      bytes(tenant["key_check"]), legacy_master=self._master)
                count += 1
        with self.vault.connect() as vault:
            tenants = [row["tenant_id"] for row in vault.execute(
                "SELECT DISTINCT tenant_id FROM ingest_keys.wrapped_keys WHERE master_key_id <> %s ORDER BY 1",
                (target.master_key_id,)).fetchall()]
        for position, tenant_id in enumerate(tenants):
            if position:
                fault_point("rewrap:between-tenants")
            with self.vault.connect() as vault, vault.transaction():
                rows = vault.execute("SELECT key_version, wrapped_key, master_key_id FROM ingest_keys.wrapped_keys"
                                     " WHERE tenant_id = %s FOR UPDATE", (tenant_id,)).fetchall()
                for row in rows:
                    if row["master_key_id"] == target.master_key_id:
                        continue
                    key = self._unwrap(tenant_id, row["key_version"], row)
                    self.vault.rewrap(vault, tenant_id, row["key_version"],
                                      target._wrap(tenant_id, row["key_version"], key), target.master_key_id)
                    count += 1
        with self.vault.connect() as vault:
            vault.execute("UPDATE ingest_keys.master SET current_master_key_id = next_master_key_id,"
                          " next_master_key_id = NULL WHERE next_master_key_id = %s", (target.master_key_id,))
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


def _belongs(row: dict | None, installation: str) -> str:
    if row is None:
        return "erased meanwhile"
    owner = row["installation_id"] or "unknown (written before installations were recorded)"
    return f"written by installation {owner}; this ledger is installation {installation}"


def _not_replaced(tenant_id: str, row: dict, installation: str) -> str:
    if row["installation_id"] == installation:
        return (f"tenant {tenant_id!r} has keys in the key vault written by this installation ({installation}) but "
                "no row in this ledger: was the ledger restored from a backup older than the tenant? No key was "
                "replaced; restore the newer ledger, or erase the tenant to start it anew")
    owner = row["installation_id"] or "unknown (its keys were written before installations were recorded)"
    return (f"tenant {tenant_id!r}'s keys in the key vault belong to installation {owner}; this ledger is "
            f"installation {installation}: is INGEST_KEYS_DSN this installation's vault? No key was replaced")
