"""The development master key and the DSN handling of environment.py."""

import logging
import os
import stat

import pytest

from ingest_pipeline.core.crypto import KEY_BYTES
from ingest_pipeline.environment import development_master_key, sqlalchemy_url


def test_development_key_is_generated_once_private_and_announced(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        first = development_master_key(tmp_path)
    assert len(first) == KEY_BYTES
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    assert "DEVELOPMENT master key" in caplog.text
    assert first.hex() not in caplog.text
    caplog.clear()
    assert development_master_key(tmp_path) == first
    assert caplog.text == ""


def test_development_key_readable_by_others_is_refused(tmp_path):
    development_master_key(tmp_path)
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        development_master_key(tmp_path)


def test_dagster_gets_a_psycopg2_url_and_a_non_url_dsn_is_refused():
    assert sqlalchemy_url("postgresql://u:p@db:5432/ingest") == "postgresql+psycopg2://u:p@db:5432/ingest"
    assert sqlalchemy_url("postgres://u@/x?host=/tmp") == "postgresql+psycopg2://u@/x?host=/tmp"
    with pytest.raises(ValueError, match="must be a URL"):
        sqlalchemy_url("host=db dbname=ingest")
