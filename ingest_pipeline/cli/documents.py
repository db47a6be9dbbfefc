"""`ingest-pipeline upload`, `ingest`, `status` and `rebuild`: a tenant's documents into the landing zone, through
the asset graph, and into its index."""

from __future__ import annotations

from ingest_pipeline.cli import render, runs
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import dagster_instance, prepare_environment
from ingest_pipeline.stores.landing_zone import LandingZone
from ingest_pipeline.work.uploads import refuse_erased, sweep_landing_zone, upload_files


def upload(tenant: str, paths: list[str], delete: bool = False) -> dict[str, list[str]]:
    """Register documents for a tenant: copy into the landing zone and record the upload event (see
    `work.uploads.upload_files`); a tenant's first upload adds its partition to the Dagster instance."""
    from ingest_pipeline.defs.partitions import tenant_partitions

    tenant = validate_tenant(tenant)
    settings, ledger = prepare_environment()
    outcome = upload_files(ledger, LandingZone(settings.landing_dir), tenant, paths, delete=delete)
    if outcome["uploaded"] or outcome["deleted"]:
        instance = dagster_instance()
        if not instance.has_dynamic_partition(tenant_partitions.name, tenant):
            instance.add_dynamic_partitions(tenant_partitions.name, [tenant])
    return outcome


def ingest(tenant: str | None = None, show_progress: bool = True, allow_mass_delete: bool = False) -> dict:
    """Materialize the asset graph for every (tenant, month) partition with pending work.

    Files copied straight into the landing zone are recorded as uploads first, as the upload sensor records
    them, and partitions with a live document whose file was removed are run too. A landing zone or tenant
    folder that cannot be read raises LandingZoneUnavailable: an outage to fix, never a reason to delete.
    `allow_mass_delete` confirms that documents missing from the landing zone were removed on purpose,
    even when more than the allowed share of a partition is gone at once.
    """
    if tenant:
        validate_tenant(tenant)
    settings, ledger = prepare_environment()
    if tenant:
        with ledger.connect() as conn, conn.transaction():
            refuse_erased(ledger, conn, tenant)  # TenantErased: nothing to ingest, and it says why
    instance = dagster_instance()
    defs, resources = runs.definitions()
    sweep = sweep_landing_zone(ledger, LandingZone(settings.landing_dir), tenant)
    for erased in sweep.skipped:
        render.print_skipped_tenant(erased)
    if sweep.outage is not None:
        raise sweep.outage
    return runs.ingest_pending(
        defs, resources, instance, ledger, tenant, sweep.removed, allow_mass_delete,
        progress=lambda tenants: render.ingest_progress(ledger, tenants, enabled=show_progress),
    )


def status(tenant: str | None = None) -> dict:
    """{"tenants": {tenant: {documents, chunks, indexed, quarantined, index_vectors}}}, for one tenant or all."""
    from ingest_pipeline.work.status import tenant_status

    _, ledger = prepare_environment()
    _, resources = runs.definitions()
    keyring, indexes = resources["keyring"], resources["cyborgdb"].indexes
    tenants = [validate_tenant(tenant)] if tenant else ledger.tenants.with_uploads()
    return {"tenants": tenant_status(ledger, indexes, keyring.tenant_keys, tenants)}


def rebuild(tenant: str, lock_segment_s: float | None = None) -> dict:
    """Rebuild the tenant's index from the Postgres cold copy (a run of `rebuild_tenant_index_job`); returns the run's
    id and success with the tenant's status after it."""
    tenant = validate_tenant(tenant)
    prepare_environment()
    result = runs.rebuild_index(tenant, dagster_instance(), lock_segment_s)
    return {"run_id": result.run_id, "success": result.success, **status(tenant)["tenants"][tenant]}
