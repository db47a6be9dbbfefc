"""`ingest-pipeline rotate-key`, `rotate-master-key`, `erase-tenant` and `readmit-tenant`: the tenant keys' life
cycle.

`rotate-key` writes new data under a new data key at once, then runs `reencrypt_job` on the shared
Dagster instance (the run is in the UI; a run that stops is resumed by running it, or the command,
again). `rotate-master-key` re-wraps every tenant's keys under a new master key without touching a
row (resumable: run it again after an interruption). `erase-tenant` crypto-shreds a tenant (see erasure.py), which then
stays erased until `readmit-tenant`.
"""

from __future__ import annotations

import argparse
import os

from ingest_pipeline.cli import render
from ingest_pipeline.cli.runs import execute_job
from ingest_pipeline.core.crypto import master_key_id, parse_master_key
from ingest_pipeline.core.ids import validate_tenant
from ingest_pipeline.runtime.instance import InstanceHistory, dagster_instance, prepare_environment

NEW_MASTER_KEY_ENV = "INGEST_NEW_MASTER_KEY"


def _resources() -> dict:
    from ingest_pipeline.definitions import build_resources

    prepare_environment()
    return build_resources()


def key_versions(ledger, tenant: str) -> list[int]:
    with ledger.connect() as conn:
        rows = conn.execute(
            "SELECT key_version FROM ingest.tenant_keys WHERE tenant_id = %s AND key_version > 0 ORDER BY 1",
            (tenant,),
        ).fetchall()
    return [row["key_version"] for row in rows]


def rotate_key(tenant: str, rotate: bool = True, batch_size: int | None = None) -> dict:
    """Rotate the tenant's data key (unless `rotate` is False: then only finish moving rows) and move
    every row to it through `reencrypt_job`."""
    from ingest_pipeline.defs.reencryption import reencrypt_job
    from ingest_pipeline.work.reencryption import rows_to_move

    tenant = validate_tenant(tenant)
    resources = _resources()
    ledger = resources["ledger"].ledger
    before = key_versions(ledger, tenant)
    config = {"tenant": tenant, "rotate_first": rotate, **({"batch_size": batch_size} if batch_size else {})}
    result = execute_job(reencrypt_job, {"ops": {"reencrypt_tenant_rows": {"config": config}}}, dagster_instance(),
                         tenant=tenant, resources=resources)
    error = None
    for event in result.all_events:
        if event.is_step_failure:
            described = event.step_failure_data.user_failure_data
            error = described.description if described else event.step_failure_data.error.message.strip()
    with ledger.connect() as conn:
        active = conn.execute("SELECT data_key_version FROM ingest.tenants WHERE tenant_id = %s",
                              (tenant,)).fetchone()
        left = rows_to_move(conn, tenant) if active else 0
    return {"tenant": tenant, "run_id": result.run_id, "success": result.success, "error": error,
            "versions_before": before, "versions_after": key_versions(ledger, tenant),
            "active_version": active["data_key_version"] if active else None, "rows_left": left}


def rotate_master_key() -> dict:
    """Re-wrap every tenant's keys from INGEST_MASTER_KEY to INGEST_NEW_MASTER_KEY, tenant by tenant; run it
    again (same keys) to finish a rotation that stopped."""
    encoded = os.environ.get(NEW_MASTER_KEY_ENV, "")
    if not encoded:
        raise ValueError(f"set {NEW_MASTER_KEY_ENV} to the new master key (base64, 32 bytes; "
                         "`python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'`)")
    new_master = parse_master_key(encoded)
    resources = _resources()
    store = resources["keyring"].store
    rewrapped = store.rewrap_all(resources["ledger"].ledger, new_master)
    return {"keys_rewrapped": rewrapped, "old_master_key_id": store.master_key_id,
            "new_master_key_id": master_key_id(new_master)}


def erase(tenant: str) -> dict:
    from ingest_pipeline.defs.partitions import tenant_partitions
    from ingest_pipeline.runtime.settings import Settings
    from ingest_pipeline.work.erasure import erase_tenant

    tenant = validate_tenant(tenant)
    resources = _resources()
    report = erase_tenant(
        resources["ledger"].ledger, resources["keyring"].store, resources["cyborgdb"].indexes,
        Settings.from_env().landing_dir, InstanceHistory(dagster_instance(), tenant_partitions.name), tenant,
    )
    return report.as_dict()


def readmit(tenant: str, by: str | None = None) -> dict:
    """Lift an erased tenant's tombstone (recording who and when): its next upload creates it anew."""
    from ingest_pipeline.work.erasure import readmit_tenant

    tenant = validate_tenant(tenant)
    _, ledger = prepare_environment()
    return readmit_tenant(ledger, tenant, by or _operator()).as_dict()


def _operator() -> str:
    """Who runs this command, for the record: the OS user at this host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("rotate-key", help="write a tenant's new data under a new data key and move its "
                                 "rows to it (resumable), then retire the old key")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--resume", action="store_true", help="do not rotate again: finish moving rows only")
    parser.add_argument("--batch-size", type=int, help="rows per transaction (default 500)")
    parser.add_argument("--json", action="store_true")

    parser = commands.add_parser("rotate-master-key", help=f"re-wrap every tenant's keys under {NEW_MASTER_KEY_ENV}"
                                 " (no row is re-encrypted); then set INGEST_MASTER_KEY to it")
    parser.add_argument("--json", action="store_true")

    parser = commands.add_parser("erase-tenant", help="crypto-shred a tenant: destroy its keys, then its rows, "
                                 "index, landing files and Dagster history")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    parser.add_argument("--json", action="store_true")

    parser = commands.add_parser("readmit-tenant", help="lift an erased tenant's tombstone, so that its next upload "
                                 "creates it anew (an erased tenant otherwise stays erased)")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--yes", action="store_true", help="confirm: uploads for this tenant id are accepted again")
    parser.add_argument("--by", help="who re-admits it, for the record (default: the OS user at this host)")
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.command == "rotate-key":
        result = rotate_key(args.tenant, rotate=not args.resume, batch_size=args.batch_size)
        render.print_json(result) if args.json else render.print_rotate_key(result)
        return 0 if result["success"] else 1
    if args.command == "rotate-master-key":
        result = rotate_master_key()
        render.print_json(result) if args.json else render.print_rotate_master_key(result)
        return 0
    if args.command == "erase-tenant":
        if not args.yes:
            render.print_erase_needs_confirmation(args.tenant)
            return 2
        result = erase(args.tenant)
        render.print_json(result) if args.json else render.print_erased(result)
        return 0
    if args.command == "readmit-tenant":
        if not args.yes:
            render.print_readmit_needs_confirmation(args.tenant)
            return 2
        result = readmit(args.tenant, args.by)
        render.print_json(result) if args.json else render.print_readmitted(result)
        return 0
    raise ValueError(f"unknown command {args.command}")
