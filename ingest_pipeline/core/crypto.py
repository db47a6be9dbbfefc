"""Tenant keys, their envelope under the master key, and authenticated encryption of chunk text, citations and
embeddings.

The master key never encrypts data itself. Each tenant has random keys (envelope encryption): a data
key per key version (AES-256-GCM), and a MAC key and a CyborgDB index key, all stored in Postgres
wrapped (AES-256-GCM) under a key-encryption key derived from the master key. Data keys can thus be
rotated, the master key changed by re-wrapping alone, and a tenant erased by destroying its wrapped
keys. Tenants created before envelope encryption had keys derived from the master key with
HKDF-SHA256 (`derive_tenant_keys`); they are wrapped as they are on first use. Each record (a chunk's text,
its citation, its embedding) is sealed with AES-256-GCM under a fresh 96-bit nonce, and the associated data
binds tenant, chunk id, key version, field and the content version (the HMAC of the chunk's text), so a
ciphertext copied to another row, tenant or column, or an older ciphertext of the same chunk put back, fails to
decrypt. Text is also checked against its stored MAC after decryption.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
CURRENT_KEY_VERSION = 1
# Seal format 1 bound tenant, chunk, key version and field; format 2 also binds the text's MAC.
LEGACY_SEAL_FORMAT = 1
SEAL_FORMAT = 2


class MasterKeyError(ValueError):
    """A master key that is missing, malformed or too weak."""


class DecryptionError(ValueError):
    """A ciphertext that does not authenticate: wrong key, wrong row, or tampered bytes."""


def parse_master_key(encoded: str) -> bytes:
    """Decode a base64 master key and insist on exactly 32 non-zero bytes."""
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, TypeError):
        raise MasterKeyError("INGEST_MASTER_KEY is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"INGEST_MASTER_KEY must decode to {KEY_BYTES} bytes, got {len(key)}")
    if key == bytes(KEY_BYTES):
        raise MasterKeyError("INGEST_MASTER_KEY is all zero bytes")
    return key


def generate_master_key() -> str:
    """A new random master key, base64-encoded."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _derive(master_key: bytes, purpose: str, tenant_id: str, key_version: int) -> bytes:
    info = f"ingest-pipeline/{purpose}/v{key_version}/{tenant_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master_key)


class KeyUnwrapError(ValueError):
    """A wrapped key that does not open under this master key (another master key, or tampered)."""


# The MAC and index keys are stored as one secret under this version; data keys use versions 1, 2, ...
TENANT_SECRET_VERSION = 0


def _kek(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"ingest-pipeline/key-encryption-key").derive(master_key)


def master_key_id(master_key: bytes) -> str:
    """A short public name of a master key (which key wrapped a row), revealing nothing of it."""
    return hmac.new(_kek(master_key), b"ingest-pipeline/master-key-id", hashlib.sha256).hexdigest()[:16]


def _wrap_aad(tenant_id: str, key_version: int) -> bytes:
    return f"ingest-pipeline/wrapped-key|{tenant_id}|{key_version}".encode()


def wrap_key(master_key: bytes, tenant_id: str, key_version: int, key: bytes) -> bytes:
    """Seal a tenant key under the master key, bound to its tenant and version (nonce || ciphertext || tag)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(_kek(master_key)).encrypt(nonce, key, _wrap_aad(tenant_id, key_version))


def unwrap_key(master_key: bytes, tenant_id: str, key_version: int, wrapped: bytes) -> bytes:
    wrapped = bytes(wrapped)
    try:
        return AESGCM(_kek(master_key)).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                                _wrap_aad(tenant_id, key_version))
    except InvalidTag:
        raise KeyUnwrapError(
            f"key version {key_version} of tenant {tenant_id!r} does not unwrap under this master key"
        ) from None


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def new_tenant_secret() -> bytes:
    """A new tenant's MAC key and index key, stored (wrapped) as one secret."""
    return os.urandom(2 * KEY_BYTES)


def legacy_tenant_secret(master_key: bytes, tenant_id: str) -> bytes:
    """The MAC and index keys a tenant created before envelope encryption had (derived from the master key)."""
    keys = derive_tenant_keys(master_key, tenant_id)
    return keys.mac_key + keys.index_key


def legacy_data_key(master_key: bytes, tenant_id: str, key_version: int) -> bytes:
    return derive_tenant_keys(master_key, tenant_id, key_version).data_key


def tenant_keys_from(tenant_id: str, key_version: int, data_key: bytes, tenant_secret: bytes) -> TenantKeys:
    """A tenant's keys at one data-key version, from its (unwrapped) data key and tenant secret."""
    return TenantKeys(tenant_id=tenant_id, key_version=key_version, data_key=data_key,
                      mac_key=tenant_secret[:KEY_BYTES], index_key=tenant_secret[KEY_BYTES:])


@dataclass(frozen=True, repr=False)
class TenantKeys:
    """The keys of one tenant at one key version. repr() never shows key bytes."""

    tenant_id: str
    key_version: int
    data_key: bytes
    mac_key: bytes
    index_key: bytes

    def __repr__(self) -> str:
        return f"TenantKeys(tenant_id={self.tenant_id!r}, key_version={self.key_version})"

    @property
    def key_check(self) -> bytes:
        """A value that proves which master key derived these keys without revealing anything of it."""
        return hmac.new(self.mac_key, b"ingest-pipeline/key-check", hashlib.sha256).digest()


def derive_tenant_keys(master_key: bytes, tenant_id: str, key_version: int = CURRENT_KEY_VERSION) -> TenantKeys:
    """The keys of a tenant created before envelope encryption: data key (AES-GCM), MAC key (change
    detection) and CyborgDB index key, derived from the master key. Kept to migrate such tenants."""
    return TenantKeys(
        tenant_id=tenant_id,
        key_version=key_version,
        data_key=_derive(master_key, "data-key", tenant_id, key_version),
        mac_key=_derive(master_key, "mac-key", tenant_id, key_version),
        # The index key is not versioned: rotating it means rebuilding the index.
        index_key=_derive(master_key, "cyborgdb-index-key", tenant_id, 1),
    )


class Citation(NamedTuple):
    """Where a chunk came from: its page (a PDF or scanned page, a slide number, a sheet name) and section path
    (such as "Terms > Payment"), each None when the document has none or the chunk was stored before citations."""

    page: str | None = None
    section: str | None = None


class VectorEncryptor:
    """Seals and opens one tenant's chunk text, citations and embeddings with AES-256-GCM."""

    def __init__(self, keys: TenantKeys):
        self._keys = keys
        self._aead = AESGCM(keys.data_key)

    @property
    def key_version(self) -> int:
        return self._keys.key_version

    def _aad(self, chunk_id: str, field: str, text_mac: bytes, seal_format: int) -> bytes:
        base = f"{self._keys.tenant_id}|{chunk_id}|{self._keys.key_version}|{field}"
        if seal_format == LEGACY_SEAL_FORMAT:
            return base.encode()
        if seal_format != SEAL_FORMAT:
            raise DecryptionError(f"{field} of chunk {chunk_id} has an unknown seal format {seal_format}")
        return f"v{SEAL_FORMAT}|{base}|{bytes(text_mac).hex()}".encode()

    def _seal(self, plaintext: bytes, chunk_id: str, field: str, text_mac: bytes, seal_format: int) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad(chunk_id, field, text_mac, seal_format))

    def _open(self, sealed: bytes, chunk_id: str, field: str, text_mac: bytes, seal_format: int) -> bytes:
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError(f"{field} of chunk {chunk_id} is too short to be a ciphertext")
        aad = self._aad(chunk_id, field, text_mac, seal_format)
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(
                f"{field} of chunk {chunk_id} does not decrypt for tenant {self._keys.tenant_id!r} "
                f"at key version {self._keys.key_version} (wrong key, moved, tampered or rolled back)"
            ) from None

    def encrypt_text(self, chunk_id: str, text: str, seal_format: int = SEAL_FORMAT) -> bytes:
        return self._seal(text.encode("utf-8"), chunk_id, "text", self.text_mac(text), seal_format)

    def decrypt_text(self, chunk_id: str, sealed: bytes, text_mac: bytes, seal_format: int = SEAL_FORMAT) -> str:
        """Open chunk text and prove it is the content the row's MAC names (not an older version)."""
        text = self._open(bytes(sealed), chunk_id, "text", text_mac, seal_format).decode("utf-8")
        if not hmac.compare_digest(self.text_mac(text), bytes(text_mac)):
            raise DecryptionError(f"text of chunk {chunk_id} does not match its MAC (an older or substituted copy)")
        return text

    def encrypt_citation(self, chunk_id: str, citation: Citation, text_mac: bytes,
                         seal_format: int = SEAL_FORMAT) -> bytes:
        """Seal a chunk's page and section (one JSON object) bound to the chunk and the MAC of its text."""
        plaintext = json.dumps({"page": citation.page, "section": citation.section}, ensure_ascii=False)
        return self._seal(plaintext.encode("utf-8"), chunk_id, "citation", text_mac, seal_format)

    def decrypt_citation(self, chunk_id: str, sealed: bytes | None, text_mac: bytes,
                         seal_format: int = SEAL_FORMAT) -> Citation:
        """Open a chunk's citation; a chunk stored before citations (None) has an unknown, empty one."""
        if sealed is None:
            return Citation()
        fields = json.loads(self._open(bytes(sealed), chunk_id, "citation", text_mac, seal_format))
        return Citation(page=fields.get("page"), section=fields.get("section"))

    def encrypt_vector(
        self, chunk_id: str, vector: np.ndarray, text_mac: bytes, seal_format: int = SEAL_FORMAT
    ) -> bytes:
        """Seal an embedding bound to the MAC of the text it was computed from."""
        return self._seal(np.asarray(vector, dtype="<f4").tobytes(), chunk_id, "embedding", text_mac, seal_format)

    def decrypt_vector(
        self, chunk_id: str, sealed: bytes, text_mac: bytes, seal_format: int = SEAL_FORMAT
    ) -> np.ndarray:
        return np.frombuffer(self._open(bytes(sealed), chunk_id, "embedding", text_mac, seal_format), dtype="<f4")

    def text_mac(self, text: str) -> bytes:
        """A keyed digest of chunk text: lets an unchanged chunk be recognised without storing its hash."""
        return hmac.new(self._keys.mac_key, text.encode("utf-8"), hashlib.sha256).digest()
