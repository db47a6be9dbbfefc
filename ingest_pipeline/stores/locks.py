"""Every advisory lock the project takes, in one registry: one purpose, one lock class.

PostgreSQL's two-key advisory locks (`pg_advisory_lock(classid, objid)`) are one key space per class. Each purpose
below owns its class, so no two purposes can wait on, or release, each other's locks. A lock is either keyed per
tenant (`hashtext(tenant_id)`) or by one fixed key. Locks taken inside a migration's SQL (a trigger function) name
the same numbers; `ingest_pipeline_tests/stores/test_ledger.py` checks that they match.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True, slots=True)
class AdvisoryLock:
    """One purpose's advisory lock: its class and, for a single lock, its fixed key (None: keyed per tenant)."""

    purpose: str
    classid: int
    key: int | None = None

    def args(self, tenant_id: str | None = None) -> tuple[sql.Composable, tuple]:
        """The lock's two arguments as SQL and their parameters: `%s, hashtext(%s)` for a tenant's lock,
        `%s, %s` for a fixed one."""
        if self.key is None:
            if tenant_id is None:
                raise ValueError(f"the {self.purpose} lock is keyed by tenant")
            return sql.SQL("%s, hashtext(%s)"), (self.classid, tenant_id)
        return sql.SQL("%s, %s"), (self.classid, self.key)

    def call(self, function: str, tenant_id: str | None = None) -> tuple[sql.Composed, tuple]:
        """`SELECT <function>(<this lock>)` and its parameters, e.g. call("pg_advisory_xact_lock")."""
        arguments, params = self.args(tenant_id)
        return sql.SQL("SELECT {}({})").format(sql.Identifier(function), arguments), params


# A tenant's one writer (exclusive) and its readers (shared), held for a session: the ledger's tenant locks.
TENANT = AdvisoryLock("tenant writer and readers", 0x1D6E)
# Admission of a tenant's new rows: shared by writers of uploads and tenants (also in migration 0009's trigger),
# exclusive while an erasure records its request or a re-admission lifts it.
ADMISSION = AdvisoryLock("tenant admission", 0x1D6F)
# A process that opens a tenant's embedded index outside the tenant lock (a CLI search) holds this one, shared,
# while it uses the index: nothing takes it exclusively, so it never waits; it only tells a long-lived reader (the
# search service, which keeps the index open) to let go.
INDEX_WANTED = AdvisoryLock("embedded index wanted by a reader", 0x1D72)
# The ledger's schema migrations (until 0013 they took key 0 of the tenant class).
LEDGER_MIGRATIONS = AdvisoryLock("ledger migrations", 0x1D70, 0)
# Upload ids drawn in commit order (migration 0013's trigger; until then key 1 of the tenant class).
UPLOAD_ORDER = AdvisoryLock("upload order", 0x1D71, 0)
# The key vault's schema.
KEY_VAULT_MIGRATIONS = AdvisoryLock("key vault migrations", 7243, 0)
# Creating Dagster's storage tables on a new installation.
DAGSTER_STORAGE = AdvisoryLock("dagster storage creation", 7245, 1)

REGISTRY: tuple[AdvisoryLock, ...] = (
    TENANT, ADMISSION, INDEX_WANTED, LEDGER_MIGRATIONS, UPLOAD_ORDER, KEY_VAULT_MIGRATIONS, DAGSTER_STORAGE,
)
