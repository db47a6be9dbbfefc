"""A tiny fault injector for the reliability tests: named seams where a test can make the pipeline fail.

`fault_point(name)` does nothing unless the environment variable INGEST_FAULTS is set. Production and
every deployment never set it; only the reliability suite (ingest_pipeline_tests/reliability) does, in
the environment of a process it starts. With it unset a seam costs one dictionary lookup.

INGEST_FAULTS is a comma-separated list of `seam=action`:

    INGEST_FAULTS="index:after-upsert=kill"
    INGEST_FAULTS="index:before-upsert=raise,embed:after-commit=kill"

Actions:

- `kill`: SIGKILL the process itself at the seam (no cleanup, no `finally`, no Dagster event);
- `raise`: raise InjectedFault, which the step's RetryPolicy treats like any other transient error;
- `hold`: stop at the seam until a test has done something to the world (restarted Postgres, killed the
  CyborgDB service): the seam creates `<INGEST_FAULTS_STATE>/<seam>.held` and waits, at most
  HOLD_LIMIT_S, until the test deletes it, then carries on.

Either action may be suffixed `-once` (`kill-once`, `raise-once`): the fault fires the first time the seam
is reached and never again, across processes. That needs INGEST_FAULTS_STATE, a directory where a marker
file per seam records that it fired, so that the retry or the re-run that follows passes the seam.
Without `-once` the fault fires every time the seam is reached.

Seams (where `fault_point` is called):

- `embed:before-commit`, `embed:after-commit`: around each commit of sealed embeddings (chunk_embeddings);
- `index:before-upsert`: a batch locked in Postgres, before it is upserted into CyborgDB;
- `index:after-upsert`: after the CyborgDB upsert, before the Postgres commit that marks it indexed;
- `index:after-commit`: the cyborgdb_index asset has committed everything, before Dagster records success;
- `reencrypt:after-batch`: the re-encryption job has committed a batch of rows under the new data key;
- `erase:after-keys`, `erase:after-rows`: an erasure has destroyed the tenant's keys, then deleted its rows;
- `keys:create-after-vault`: a new tenant's keys are in the vault, its ledger rows not yet committed;
- `retire:before-vault`: a retired key version's registration is committed, its wrapped key not yet deleted;
- `rewrap:between-tenants`: a master-key rotation has re-wrapped a tenant's keys, before the next tenant's;
- `reencrypt:after-rotate`: the re-encryption job has rotated the tenant's data key, before moving rows;
- `extract:fork` (`raise`): starting an extraction worker fails, as a fork refused by the system would;
- `extract:worker-start` (`kill`): an extraction worker dies before it is ready;
- `extract:document` (`kill`): an extraction worker is killed while it reads a document, as the system's
  out-of-memory killer would kill it;
- `rebuild:between-segments`: a rebuild has let go of the tenant's lock between two segments of its work;
- `landing:after-scan`: raw_documents has listed the tenant's landing folder, before it hashes any file.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "INGEST_FAULTS"
STATE_ENV = "INGEST_FAULTS_STATE"
ACTIONS = ("kill", "raise", "hold")
HOLD_LIMIT_S = 120.0
SEAMS = ("embed:before-commit", "embed:after-commit", "index:before-upsert", "index:after-upsert",
         "index:after-commit", "reencrypt:after-batch", "erase:after-keys", "erase:after-rows",
         "keys:create-after-vault", "retire:before-vault", "rewrap:between-tenants", "reencrypt:after-rotate",
         "extract:fork", "extract:worker-start", "extract:document", "landing:after-scan",
         "rebuild:between-segments")


class InjectedFault(RuntimeError):
    """A fault raised on purpose at a seam by the test-only fault injector."""


def _parse(spec: str) -> dict[str, str]:
    faults = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        seam, _, action = item.partition("=")
        seam, action = seam.strip(), action.strip()
        if seam not in SEAMS or action.removesuffix("-once") not in ACTIONS:
            raise ValueError(f"{ENV}: unknown fault {item!r} (seams {', '.join(SEAMS)}; actions "
                             f"{', '.join(ACTIONS)}, optionally with -once)")
        faults[seam] = action
    return faults


def state_dir() -> Path:
    state = os.environ.get(STATE_ENV, "")
    if not state:
        raise ValueError(f"{ENV}: '-once' and 'hold' faults need {STATE_ENV} (a directory for their markers)")
    Path(state).mkdir(parents=True, exist_ok=True)
    return Path(state)


def marker(seam: str, suffix: str = "") -> Path:
    """The file that records a seam's fault in INGEST_FAULTS_STATE."""
    return state_dir() / (seam.replace(":", "__") + suffix)


def _first_time(seam: str) -> bool:
    """True exactly once per seam across processes: the marker file is created atomically."""
    try:
        fd = os.open(marker(seam), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _hold(seam: str) -> None:
    held = marker(seam, ".held")
    held.touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while held.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def fault_point(name: str) -> None:
    """A seam: fail here if (and only if) INGEST_FAULTS asks for it. A no-op in production."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action = _parse(spec).get(name)
    if action is None:
        return
    if action.endswith("-once") and not _first_time(name):
        return
    if action.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("hold"):
        _hold(name)
        return
    raise InjectedFault(f"injected fault at {name}")
