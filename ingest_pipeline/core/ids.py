"""Deterministic identifiers for tenants, documents, chunks and indexes."""

from __future__ import annotations

import re
import unicodedata
import uuid
from pathlib import PurePosixPath

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DOC_NAMESPACE = uuid.UUID("6f1d0a52-8a7e-5c39-9a55-3c8d2f6b7e10")


class InvalidName(ValueError):
    """A tenant id or document name that the pipeline refuses to store."""


def validate_tenant(tenant_id: str) -> str:
    """Return the tenant id if it is a safe identifier (lowercase letters, digits, '-' and '_')."""
    if not isinstance(tenant_id, str) or not TENANT_PATTERN.fullmatch(tenant_id):
        raise InvalidName(
            f"invalid tenant id {tenant_id!r}: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return tenant_id


# Characters no document name may hold: control characters (C0, C1, DEL), line and paragraph separators,
# lone surrogates (a file name whose bytes are not UTF-8), private-use characters, and the invisible format
# characters that reorder or hide text (bidirectional overrides and marks, BOM); zero-width (non-)joiners are
# kept for the scripts and emoji that need them.
_REFUSED_CATEGORIES = {"Cc", "Cs", "Co", "Zl", "Zp"}
_ALLOWED_FORMAT_CHARACTERS = {"\u200c", "\u200d"}


def _refused_character(name: str) -> str | None:
    for character in name:
        category = unicodedata.category(character)
        if category in _REFUSED_CATEGORIES or (category == "Cf" and character not in _ALLOWED_FORMAT_CHARACTERS):
            return character
    return None


def validate_document_name(name: str) -> str:
    """Return a normalised relative document name, refusing absolute paths, '..' components, hidden files
    and names with control, separator, surrogate or invisible formatting characters."""
    if not isinstance(name, str):
        raise InvalidName(f"invalid document name {name!r}: not a string")
    refused = _refused_character(name)
    if refused is not None:
        raise InvalidName(
            f"invalid document name {name[:80]!r}: it holds the character U+{ord(refused):04X} "
            "(control, separator or invisible formatting characters are not accepted)"
        )
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise InvalidName(f"invalid document name {name!r}: it must be a relative path without '..'")
    if any(part.startswith(".") for part in path.parts):
        raise InvalidName(f"invalid document name {name!r}: hidden files are not accepted")
    if len(str(path)) > 512:
        raise InvalidName(f"invalid document name {name[:40]!r}...: longer than 512 characters")
    return str(path)


def document_id(tenant_id: str, document_name: str) -> str:
    """The document's id: stable for a (tenant, document name) pair, different across tenants."""
    return str(uuid.uuid5(_DOC_NAMESPACE, f"{validate_tenant(tenant_id)}/{document_name}"))


def chunk_id(doc_id: str, sequence: int) -> str:
    """The chunk's id, as in the original design: uuid5(NAMESPACE_DNS, f"{doc_id}_{sequence}")."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{doc_id}_{sequence}"))


def index_name(tenant_id: str, generation: int = 1) -> str:
    """The name of one generation of the tenant's own CyborgDB index.

    Generation 1 keeps the original name; later ones (made by a rebuild) get a prefix that no
    tenant id can produce, since every generation-1 name starts with "tenant_".
    """
    if generation < 1:
        raise ValueError(f"index generation must be at least 1, got {generation}")
    tenant_id = validate_tenant(tenant_id)
    return f"tenant_{tenant_id}" if generation == 1 else f"tenant-g{generation}_{tenant_id}"
