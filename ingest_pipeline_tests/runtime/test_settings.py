"""Settings, the development master key and the DSN handling of environment.py."""

import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from ingest_pipeline.core.crypto import KEY_BYTES, MasterKeyError, generate_master_key
from ingest_pipeline.core.sandbox import ExtractionSandbox, SandboxLimits
from ingest_pipeline.runtime.settings import ConfigurationError, Settings, development_master_key, sqlalchemy_url

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ocr"


def no_tenants() -> bool:
    return False


def test_development_key_is_generated_once_private_and_announced(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        first = development_master_key(tmp_path, no_tenants)
    assert len(first) == KEY_BYTES
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    assert "DEVELOPMENT master key" in caplog.text
    assert first.hex() not in caplog.text
    caplog.clear()
    assert development_master_key(tmp_path, no_tenants) == first
    assert caplog.text == ""


def test_development_key_readable_by_others_is_refused(tmp_path):
    development_master_key(tmp_path, no_tenants)
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        development_master_key(tmp_path, no_tenants)


def test_dagster_gets_a_psycopg2_url_and_a_non_url_dsn_is_refused():
    assert sqlalchemy_url("postgresql://u:p@db:5432/ingest") == "postgresql+psycopg2://u:p@db:5432/ingest"
    assert sqlalchemy_url("postgres://u@/x?host=/tmp") == "postgresql+psycopg2://u@/x?host=/tmp"
    with pytest.raises(ValueError, match="must be a URL"):
        sqlalchemy_url("host=db dbname=ingest")


def test_no_new_development_key_for_an_installation_that_already_has_tenants(tmp_path):
    with pytest.raises(MasterKeyError, match="INGEST_MASTER_KEY is not set") as error:
        development_master_key(tmp_path, has_tenants=lambda: True)
    assert "already holds tenants" in str(error.value)
    assert not (tmp_path / "master.key").exists()
    # An existing development key keeps working: it is the key those tenants were written with.
    key = development_master_key(tmp_path, no_tenants)
    assert development_master_key(tmp_path, has_tenants=lambda: True) == key


def test_settings_are_read_from_the_environment_given_at_call_time(tmp_path):
    settings = Settings.from_env({"INGEST_HOME": str(tmp_path), "INGEST_PG_DSN": "postgresql://db/x"})
    assert settings.profile == "development" and settings.pg_dsn == "postgresql://db/x"
    assert settings.home == tmp_path and settings.master_key == "" and settings.cyborgdb_url == ""


def test_production_profile_names_every_missing_required_variable(tmp_path):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"INGEST_PROFILE": "production", "INGEST_HOME": str(tmp_path), "INGEST_PG_DSN": ""})
    message = str(error.value)
    for name in ("INGEST_PG_DSN", "INGEST_MASTER_KEY", "INGEST_CYBORGDB_URL", "INGEST_KEYS_DSN"):
        assert name in message
    assert "INGEST_HOME" not in message
    complete = {"INGEST_PROFILE": "production", "INGEST_HOME": str(tmp_path), "INGEST_PG_DSN": "postgresql://db/x",
                "INGEST_MASTER_KEY": generate_master_key(), "INGEST_CYBORGDB_URL": "https://cyborgdb.internal",
                "INGEST_KEYS_DSN": "postgresql://vault/keys"}
    assert Settings.from_env(complete).profile == "production"
    # The key vault is never defaulted to the ledger's server in production: the variable is named.
    with pytest.raises(ConfigurationError, match="INGEST_KEYS_DSN is not set"):
        Settings.from_env({**complete, "INGEST_KEYS_DSN": ""})
    with pytest.raises(ConfigurationError, match="INGEST_PROFILE must be"):
        Settings.from_env({"INGEST_PROFILE": "prod"})


def test_ocr_settings_default_on_in_english_and_can_be_switched_off(tmp_path):
    default = Settings.from_env({"INGEST_HOME": str(tmp_path)}).ocr
    assert default.enabled and default.languages == "eng"
    off = Settings.from_env({"INGEST_HOME": str(tmp_path), "INGEST_OCR": "OFF"}).ocr
    assert not off.enabled
    bounded = Settings.from_env({"INGEST_HOME": str(tmp_path), "INGEST_OCR_PAGE_TIMEOUT_S": "5",
                                 "INGEST_OCR_MAX_PAGES": "7"}).ocr
    assert (bounded.page_timeout_s, bounded.max_pages) == (5.0, 7)
    for name, value in (("INGEST_OCR", "maybe"), ("INGEST_OCR_MAX_PAGES", "0"), ("INGEST_OCR_PAGE_TIMEOUT_S", "x"),
                        ("INGEST_OCR_LANGUAGES", "eng;deu")):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({"INGEST_HOME": str(tmp_path), name: value})


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed (`make install` does it)")
def test_ocr_languages_are_checked_against_tesseract_and_reach_the_worker(tmp_path):
    with pytest.raises(ConfigurationError, match="INGEST_OCR_LANGUAGES") as error:
        Settings.from_env({"INGEST_HOME": str(tmp_path), "INGEST_OCR_LANGUAGES": "eng+zzz"})
    assert "tesseract-ocr-zzz" in str(error.value)
    # With OCR off the languages are not needed, so not checked.
    assert not Settings.from_env({"INGEST_HOME": str(tmp_path), "INGEST_OCR": "off",
                                  "INGEST_OCR_LANGUAGES": "zzz"}).ocr.enabled
    # The setting travels to the sandboxed worker's tesseract: its orientation-and-script model reads no English.
    shutil.copy(FIXTURES / "receipt.png", tmp_path / "receipt.png")
    for languages, english in (("eng", True), ("osd", False)):
        ocr = Settings.from_env({"INGEST_HOME": str(tmp_path), "INGEST_OCR_LANGUAGES": languages}).ocr
        with ExtractionSandbox(SandboxLimits(ocr=ocr)) as sandbox:
            assert ("violin" in sandbox.run(tmp_path, "receipt.png").text) is english
