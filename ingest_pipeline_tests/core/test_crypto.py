"""Unit tests for ingest_pipeline.core.crypto: key derivation, AES-GCM sealing and its bindings."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import pytest

from ingest_pipeline.core.crypto import (
    CURRENT_KEY_VERSION,
    KEY_BYTES,
    LEGACY_SEAL_FORMAT,
    NONCE_BYTES,
    Citation,
    DecryptionError,
    MasterKeyError,
    TenantKeys,
    VectorEncryptor,
    derive_tenant_keys,
    generate_master_key,
    parse_master_key,
)

MASTER = bytes(range(1, 33))
OTHER_MASTER = bytes(range(101, 133))
CHUNK = "1e03b741-6914-567d-b824-32bd338153a4"
OTHER_CHUNK = "785d07d9-3fa9-50aa-8181-58da4d4a3d8f"
SECRET_TEXT = "Top secret: the merger with Globex closes on 14 March."
SECRET_MAC = VectorEncryptor(derive_tenant_keys(MASTER, "acme")).text_mac(SECRET_TEXT)
# An embedding is bound to the MAC of the text it was computed from.
VECTOR_MAC = VectorEncryptor(derive_tenant_keys(MASTER, "acme")).text_mac("the chunk the vector embeds")


@pytest.fixture
def enc() -> VectorEncryptor:
    return VectorEncryptor(derive_tenant_keys(MASTER, "acme"))


@pytest.fixture
def vector() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(384).astype(np.float32)


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [SECRET_TEXT, "", "Ünïcødé 東京 😀\n\ttabs", "x" * 10_000])
def test_text_round_trip(enc, text):
    sealed = enc.encrypt_text(CHUNK, text)
    assert isinstance(sealed, bytes)
    assert enc.decrypt_text(CHUNK, sealed, enc.text_mac(text)) == text


def test_text_round_trip_with_fresh_encryptor_from_same_master():
    sealed = VectorEncryptor(derive_tenant_keys(MASTER, "acme")).encrypt_text(CHUNK, SECRET_TEXT)
    assert VectorEncryptor(derive_tenant_keys(MASTER, "acme")).decrypt_text(CHUNK, sealed, SECRET_MAC) == SECRET_TEXT


def test_text_decrypt_accepts_bytes_like(enc):
    sealed = enc.encrypt_text(CHUNK, SECRET_TEXT)
    assert enc.decrypt_text(CHUNK, memoryview(sealed), SECRET_MAC) == SECRET_TEXT
    assert enc.decrypt_text(CHUNK, bytearray(sealed), SECRET_MAC) == SECRET_TEXT


def test_ciphertext_hides_plaintext(enc):
    sealed = enc.encrypt_text(CHUNK, SECRET_TEXT)
    assert SECRET_TEXT.encode() not in sealed
    assert b"merger" not in sealed
    # nonce + ciphertext + 16-byte GCM tag
    assert len(sealed) == NONCE_BYTES + len(SECRET_TEXT.encode()) + 16


def test_vector_round_trip(enc, vector):
    sealed = enc.encrypt_vector(CHUNK, vector, VECTOR_MAC)
    assert vector.tobytes() not in sealed
    out = enc.decrypt_vector(CHUNK, sealed, VECTOR_MAC)
    assert out.dtype == np.float32
    assert out.shape == (384,)
    np.testing.assert_array_equal(out, vector)


def test_vector_round_trip_casts_float64_to_float32(enc):
    vec64 = np.linspace(-1, 1, 16, dtype=np.float64)
    out = enc.decrypt_vector(CHUNK, enc.encrypt_vector(CHUNK, vec64, VECTOR_MAC), VECTOR_MAC)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vec64.astype(np.float32))


def test_every_ciphertext_differs_for_same_plaintext(enc, vector):
    texts = {enc.encrypt_text(CHUNK, SECRET_TEXT) for _ in range(20)}
    assert len(texts) == 20
    nonces = {t[:NONCE_BYTES] for t in texts}
    assert len(nonces) == 20
    vectors = {enc.encrypt_vector(CHUNK, vector, VECTOR_MAC) for _ in range(20)}
    assert len(vectors) == 20


def test_key_version_property():
    assert VectorEncryptor(derive_tenant_keys(MASTER, "acme")).key_version == CURRENT_KEY_VERSION
    assert VectorEncryptor(derive_tenant_keys(MASTER, "acme", key_version=3)).key_version == 3


# --- bindings: ciphertext moved elsewhere must fail --------------------------------------------------


def test_decrypt_fails_for_other_chunk_id(enc, vector):
    with pytest.raises(DecryptionError):
        enc.decrypt_text(OTHER_CHUNK, enc.encrypt_text(CHUNK, SECRET_TEXT), SECRET_MAC)
    with pytest.raises(DecryptionError):
        enc.decrypt_vector(OTHER_CHUNK, enc.encrypt_vector(CHUNK, vector, VECTOR_MAC), VECTOR_MAC)


def test_decrypt_fails_for_other_tenant(enc, vector):
    other = VectorEncryptor(derive_tenant_keys(MASTER, "globex"))
    with pytest.raises(DecryptionError):
        other.decrypt_text(CHUNK, enc.encrypt_text(CHUNK, SECRET_TEXT), SECRET_MAC)
    with pytest.raises(DecryptionError):
        other.decrypt_vector(CHUNK, enc.encrypt_vector(CHUNK, vector, VECTOR_MAC), VECTOR_MAC)


def test_decrypt_fails_for_other_key_version(enc, vector):
    v2 = VectorEncryptor(derive_tenant_keys(MASTER, "acme", key_version=2))
    with pytest.raises(DecryptionError):
        v2.decrypt_text(CHUNK, enc.encrypt_text(CHUNK, SECRET_TEXT), SECRET_MAC)
    with pytest.raises(DecryptionError):
        v2.decrypt_vector(CHUNK, enc.encrypt_vector(CHUNK, vector, VECTOR_MAC), VECTOR_MAC)


def test_decrypt_fails_for_other_master_key(enc):
    other = VectorEncryptor(derive_tenant_keys(OTHER_MASTER, "acme"))
    with pytest.raises(DecryptionError):
        other.decrypt_text(CHUNK, enc.encrypt_text(CHUNK, SECRET_TEXT), SECRET_MAC)


def test_associated_data_binds_tenant_and_version_even_with_the_same_data_key(enc):
    # Same AES key, only the tenant / version in the associated data differ: the AAD itself must bind them.
    keys = derive_tenant_keys(MASTER, "acme")
    sealed = enc.encrypt_text(CHUNK, SECRET_TEXT)
    for changed in (dataclasses.replace(keys, tenant_id="globex"), dataclasses.replace(keys, key_version=2)):
        with pytest.raises(DecryptionError):
            VectorEncryptor(changed).decrypt_text(CHUNK, sealed, SECRET_MAC)
    assert VectorEncryptor(dataclasses.replace(keys)).decrypt_text(CHUNK, sealed, SECRET_MAC) == SECRET_TEXT


def test_decrypt_fails_when_text_and_embedding_fields_are_swapped(enc, vector):
    sealed_text = enc.encrypt_text(CHUNK, SECRET_TEXT)
    sealed_vec = enc.encrypt_vector(CHUNK, vector, VECTOR_MAC)
    with pytest.raises(DecryptionError):
        enc.decrypt_vector(CHUNK, sealed_text, VECTOR_MAC)
    with pytest.raises(DecryptionError):
        enc.decrypt_text(CHUNK, sealed_vec, SECRET_MAC)


@pytest.mark.parametrize("position", [0, NONCE_BYTES - 1, NONCE_BYTES, NONCE_BYTES + 5, -1])
def test_decrypt_fails_when_a_byte_is_flipped(enc, position):
    sealed = bytearray(enc.encrypt_text(CHUNK, SECRET_TEXT))
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionError):
        enc.decrypt_text(CHUNK, bytes(sealed), SECRET_MAC)


def test_decrypt_fails_when_a_vector_byte_is_flipped(enc, vector):
    sealed = bytearray(enc.encrypt_vector(CHUNK, vector, VECTOR_MAC))
    sealed[len(sealed) // 2] ^= 0x80
    with pytest.raises(DecryptionError):
        enc.decrypt_vector(CHUNK, bytes(sealed), VECTOR_MAC)


def test_decrypt_fails_when_truncated_or_extended(enc):
    sealed = enc.encrypt_text(CHUNK, SECRET_TEXT)
    for bad in (sealed[:-1], sealed + b"\x00", sealed[: NONCE_BYTES + 15], sealed[:NONCE_BYTES]):
        with pytest.raises(DecryptionError):
            enc.decrypt_text(CHUNK, bad, SECRET_MAC)


@pytest.mark.parametrize("length", [0, 5])
def test_decrypt_of_very_short_ciphertext_raises_decryption_error(enc, length):
    sealed = enc.encrypt_text(CHUNK, SECRET_TEXT)[:length]
    with pytest.raises(DecryptionError):
        enc.decrypt_text(CHUNK, sealed, SECRET_MAC)


def test_decryption_error_message_contains_no_plaintext(enc):
    sealed = enc.encrypt_text(CHUNK, SECRET_TEXT)
    with pytest.raises(DecryptionError) as info:
        enc.decrypt_text(OTHER_CHUNK, sealed, SECRET_MAC)
    message = str(info.value)
    assert OTHER_CHUNK in message  # it does say which row failed
    assert "acme" in message
    for leak in (SECRET_TEXT, "secret", "merger", "Globex", sealed.hex(), base64.b64encode(sealed).decode()):
        assert leak not in message
        assert leak not in repr(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_decryption_error_is_a_value_error():
    assert issubclass(DecryptionError, ValueError)


# --- key derivation ----------------------------------------------------------------------------------


def test_keys_are_32_bytes_and_deterministic():
    a = derive_tenant_keys(MASTER, "acme")
    b = derive_tenant_keys(MASTER, "acme")
    for name in ("data_key", "mac_key", "index_key"):
        assert len(getattr(a, name)) == KEY_BYTES
        assert getattr(a, name) == getattr(b, name)
    assert a.tenant_id == "acme"
    assert a.key_version == CURRENT_KEY_VERSION


def test_keys_differ_per_purpose():
    keys = derive_tenant_keys(MASTER, "acme")
    assert len({keys.data_key, keys.mac_key, keys.index_key, MASTER}) == 4


def test_keys_differ_per_tenant():
    a = derive_tenant_keys(MASTER, "acme")
    b = derive_tenant_keys(MASTER, "globex")
    assert a.data_key != b.data_key
    assert a.mac_key != b.mac_key
    assert a.index_key != b.index_key
    all_keys = {a.data_key, a.mac_key, a.index_key, b.data_key, b.mac_key, b.index_key}
    assert len(all_keys) == 6


def test_keys_differ_per_master_key():
    a = derive_tenant_keys(MASTER, "acme")
    b = derive_tenant_keys(OTHER_MASTER, "acme")
    assert a.data_key != b.data_key
    assert a.mac_key != b.mac_key
    assert a.index_key != b.index_key


def test_key_version_changes_data_and_mac_keys_but_not_index_key():
    v1 = derive_tenant_keys(MASTER, "acme", key_version=1)
    v2 = derive_tenant_keys(MASTER, "acme", key_version=2)
    assert v1.data_key != v2.data_key
    assert v1.mac_key != v2.mac_key
    assert v1.index_key == v2.index_key  # documented: rotating the index key means rebuilding the index


def test_tenant_keys_repr_shows_no_key_bytes():
    keys = derive_tenant_keys(MASTER, "acme")
    for text in (repr(keys), str(keys), f"{keys}", repr([keys])):
        assert "acme" in text
        assert "key_version=1" in text
        for key in (keys.data_key, keys.mac_key, keys.index_key):
            assert repr(key) not in text
            assert key.hex() not in text
            assert base64.b64encode(key).decode() not in text
        assert "data_key" not in text
        assert "mac_key" not in text
        assert "index_key" not in text


def test_tenant_keys_is_frozen():
    keys = derive_tenant_keys(MASTER, "acme")
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.tenant_id = "globex"  # type: ignore[misc]
    assert isinstance(keys, TenantKeys)


# --- master key parsing ------------------------------------------------------------------------------


def test_parse_master_key_round_trip():
    encoded = base64.b64encode(MASTER).decode()
    assert parse_master_key(encoded) == MASTER
    assert parse_master_key(f"  {encoded}\n") == MASTER


def test_generate_master_key_is_random_and_parseable():
    a, b = generate_master_key(), generate_master_key()
    assert a != b
    assert len(parse_master_key(a)) == KEY_BYTES
    assert len(parse_master_key(b)) == KEY_BYTES


@pytest.mark.parametrize("encoded", ["not base64!!", "abc", "====", "QUJD$REVG", "ÄÖÜ"])
def test_parse_master_key_rejects_bad_base64(encoded):
    with pytest.raises(MasterKeyError, match="base64"):
        parse_master_key(encoded)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_parse_master_key_rejects_wrong_length(length):
    encoded = base64.b64encode(bytes(range(1, length + 1))).decode()
    with pytest.raises(MasterKeyError, match=f"got {length}"):
        parse_master_key(encoded)


def test_parse_master_key_rejects_all_zero():
    with pytest.raises(MasterKeyError, match="zero"):
        parse_master_key(base64.b64encode(bytes(KEY_BYTES)).decode())


def test_master_key_error_does_not_echo_the_key():
    encoded = base64.b64encode(bytes(range(1, 17))).decode()
    with pytest.raises(MasterKeyError) as info:
        parse_master_key(encoded)
    assert encoded not in str(info.value)


# --- text_mac ----------------------------------------------------------------------------------------


def test_text_mac_is_deterministic_per_tenant(enc):
    mac = enc.text_mac(SECRET_TEXT)
    assert len(mac) == 32
    assert enc.text_mac(SECRET_TEXT) == mac
    assert VectorEncryptor(derive_tenant_keys(MASTER, "acme")).text_mac(SECRET_TEXT) == mac


def test_text_mac_differs_across_tenants_texts_and_versions(enc):
    mac = enc.text_mac(SECRET_TEXT)
    assert VectorEncryptor(derive_tenant_keys(MASTER, "globex")).text_mac(SECRET_TEXT) != mac
    assert VectorEncryptor(derive_tenant_keys(MASTER, "acme", key_version=2)).text_mac(SECRET_TEXT) != mac
    assert enc.text_mac(SECRET_TEXT + " ") != mac
    assert enc.text_mac("") != mac


def test_text_mac_is_keyed_not_a_plain_hash(enc):
    import hashlib

    assert enc.text_mac(SECRET_TEXT) != hashlib.sha256(SECRET_TEXT.encode()).digest()


# --- content version: an older ciphertext of the same chunk cannot be put back -------------------------


def test_an_older_text_ciphertext_of_the_same_chunk_is_refused(enc):
    old_text, new_text = "Notice period: 30 days.", "Notice period: 90 days."
    old_sealed = enc.encrypt_text(CHUNK, old_text)
    assert enc.decrypt_text(CHUNK, enc.encrypt_text(CHUNK, new_text), enc.text_mac(new_text)) == new_text
    # The row now names the new text by its MAC; the old ciphertext, put back, does not open.
    with pytest.raises(DecryptionError):
        enc.decrypt_text(CHUNK, old_sealed, enc.text_mac(new_text))


def test_an_older_embedding_of_the_same_chunk_is_refused(enc, vector):
    old_mac, new_mac = enc.text_mac("old text"), enc.text_mac("new text")
    old_sealed = enc.encrypt_vector(CHUNK, vector, old_mac)
    np.testing.assert_array_equal(enc.decrypt_vector(CHUNK, enc.encrypt_vector(CHUNK, vector, new_mac), new_mac),
                                  vector)
    with pytest.raises(DecryptionError):
        enc.decrypt_vector(CHUNK, old_sealed, new_mac)


def test_legacy_rows_stay_readable_and_their_text_is_checked_against_its_mac(enc, vector):
    old_text, new_text = "Notice period: 30 days.", "Notice period: 90 days."
    legacy_old = enc.encrypt_text(CHUNK, old_text, seal_format=LEGACY_SEAL_FORMAT)
    legacy_new = enc.encrypt_text(CHUNK, new_text, seal_format=LEGACY_SEAL_FORMAT)
    assert enc.decrypt_text(CHUNK, legacy_new, enc.text_mac(new_text), LEGACY_SEAL_FORMAT) == new_text
    # Format 1 did not bind the MAC; the check after decryption still catches the rollback.
    with pytest.raises(DecryptionError, match="does not match its MAC"):
        enc.decrypt_text(CHUNK, legacy_old, enc.text_mac(new_text), LEGACY_SEAL_FORMAT)
    sealed = enc.encrypt_vector(CHUNK, vector, VECTOR_MAC, LEGACY_SEAL_FORMAT)
    np.testing.assert_array_equal(enc.decrypt_vector(CHUNK, sealed, VECTOR_MAC, LEGACY_SEAL_FORMAT), vector)
    # A format-2 reader does not accept a format-1 ciphertext, nor the reverse.
    with pytest.raises(DecryptionError):
        enc.decrypt_text(CHUNK, legacy_new, enc.text_mac(new_text))
    with pytest.raises(DecryptionError):
        enc.decrypt_text(CHUNK, enc.encrypt_text(CHUNK, new_text), enc.text_mac(new_text), LEGACY_SEAL_FORMAT)


# --- citations ---------------------------------------------------------------------------------------


def test_a_citation_round_trips_and_is_bound_to_its_chunk_text_and_field(enc):
    citation = Citation(page="3", section="Terms > Payment — Ünïcødé")
    sealed = enc.encrypt_citation(CHUNK, citation, SECRET_MAC)
    assert b"Payment" not in sealed and b"Terms" not in sealed
    assert enc.decrypt_citation(CHUNK, sealed, SECRET_MAC) == citation
    assert enc.decrypt_citation(CHUNK, enc.encrypt_citation(CHUNK, Citation(), SECRET_MAC), SECRET_MAC) == Citation()
    for chunk, mac in ((OTHER_CHUNK, SECRET_MAC), (CHUNK, VECTOR_MAC)):
        with pytest.raises(DecryptionError):
            enc.decrypt_citation(chunk, sealed, mac)
    with pytest.raises(DecryptionError):  # a citation put in the text column does not open as text
        enc.decrypt_text(CHUNK, sealed, SECRET_MAC)


def test_a_chunk_stored_before_citations_has_an_empty_one(enc):
    assert enc.decrypt_citation(CHUNK, None, SECRET_MAC) == Citation(None, None)
