"""What both benchmarks share: a throw-away installation, and figures printed as an aligned table."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_installation(prefix: str) -> Iterator[Path]:
    """A temporary INGEST_HOME with its own master key; its embedded Postgres is stopped afterwards."""
    from ingest_pipeline.core.crypto import generate_master_key
    from ingest_pipeline.runtime.settings import stop_embedded_postgres

    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        os.environ.update({"INGEST_HOME": home, "INGEST_MASTER_KEY": generate_master_key()})
        try:
            yield Path(home)
        finally:
            stop_embedded_postgres(home)


def print_figures(figures: dict) -> None:
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
