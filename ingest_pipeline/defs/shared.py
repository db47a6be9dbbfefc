"""What the assets, jobs and checks share: the group, the retry policy, failing fast, and the tenant's session."""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import AssetCheckExecutionContext, AssetExecutionContext, Backoff, Failure, Jitter, RetryPolicy

from ingest_pipeline.core.crypto import MasterKeyError
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.defs.partitions import MONTH_DIMENSION, TENANT_DIMENSION
from ingest_pipeline.defs.resources import TenantKeyring
from ingest_pipeline.runtime.instance import TENANT_JOB_TAG
from ingest_pipeline.runtime.settings import ConfigurationError
from ingest_pipeline.stores.key_vault import TenantErased
from ingest_pipeline.stores.ledger import Ledger, TenantKeyMismatch, TenantSession

GROUP = "ingestion"
# Transient failures (a dropped connection, a busy service) retry with exponential backoff and jitter;
# errors that retrying cannot fix raise Failure(allow_retries=False).
STORAGE_RETRY = RetryPolicy(max_retries=3, delay=1.0, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def tenant_and_month(context: AssetExecutionContext | AssetCheckExecutionContext) -> tuple[str, str]:
    """The (tenant, month) of the context's partition, the tenant validated."""
    keys = context.partition_key.keys_by_dimension
    return validate_tenant(keys[TENANT_DIMENSION]), keys[MONTH_DIMENSION]


def fail_fast(message: str) -> Failure:
    """A failure that retrying cannot fix: the step fails at once, without its retries."""
    return Failure(description=message, allow_retries=False)


class TenantWasErased(Failure):
    """The tenant was erased (or is being erased) when its lock was taken: nothing was written for it."""


@contextmanager
def tenant_session(store: Ledger, keyring: TenantKeyring, tenant: str) -> Iterator[TenantSession]:
    """Be the tenant's one writer (a connection holding its lock), with the tenant's keys opened on it.

    A new tenant gets random keys here. A wrong, unreadable or missing master key fails the run before
    anything is written, without retries; so does a tenant erased (or being erased), even by an erasure
    that finished while this run was queued or waited for the lock (TenantWasErased: it is never created
    again). `session.keys` are read under the lock, so a key rotation or retirement by another process is
    always seen.
    """
    with store.tenant_writer(tenant) as session:
        try:
            session.keys = keyring.open_tenant(session.conn, tenant)
        except TenantErased as exc:
            raise TenantWasErased(description=f"{exc}; nothing was written", metadata={"tenant_erased": True},
                                  allow_retries=False) from None
        except (MasterKeyError, PermissionError, ConfigurationError, TenantKeyMismatch) as exc:
            raise fail_fast(str(exc)) from None
        yield session


def tag_run_with_tenant(context, tenant_id: str) -> None:
    """Tag the op's run with the tenant it writes for (`TENANT_JOB_TAG`), unless its launcher did: however it was
    launched (the CLI, the launchpad), erasing the tenant then deletes the run with the rest of its history."""
    if context.get_tag(TENANT_JOB_TAG) != tenant_id:
        context.instance.add_run_tags(context.run_id, {TENANT_JOB_TAG: tenant_id})
