"""Unit tests for ingest_pipeline.core.ids: tenant/document validation and deterministic identifiers."""

from __future__ import annotations

import uuid

import pytest

from ingest_pipeline.core.ids import (
    InvalidName,
    chunk_id,
    document_id,
    index_name,
    validate_document_name,
    validate_tenant,
)

# --- document_id -------------------------------------------------------------------------------------


def test_document_id_is_deterministic_and_a_uuid():
    first = document_id("acme", "reports/q1.txt")
    assert first == document_id("acme", "reports/q1.txt")
    assert uuid.UUID(first).version == 5


def test_document_id_is_pinned():
    # Changing the namespace or the name format would orphan every stored record: keep it stable.
    assert document_id("acme", "reports/q1.txt") == "d5e8afe1-70b4-5f66-9148-1a0b267e8a31"


def test_document_id_is_tenant_scoped():
    assert document_id("acme", "reports/q1.txt") != document_id("globex", "reports/q1.txt")


def test_document_id_differs_per_document():
    assert document_id("acme", "reports/q1.txt") != document_id("acme", "reports/q2.txt")


def test_document_id_does_not_collide_on_separator_ambiguity():
    # "a" + "/b/c" and "a/b" + "c" would collide if tenants could contain '/'; they cannot.
    with pytest.raises(InvalidName):
        document_id("a/b", "c")


def test_document_id_validates_tenant():
    with pytest.raises(InvalidName):
        document_id("ACME", "x.txt")


# --- chunk_id ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sequence", [0, 1, 7, 1234])
def test_chunk_id_matches_original_design(sequence):
    doc = document_id("acme", "reports/q1.txt")
    assert chunk_id(doc, sequence) == str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{doc}_{sequence}"))


def test_chunk_id_is_pinned():
    assert chunk_id("d5e8afe1-70b4-5f66-9148-1a0b267e8a31", 0) == "1e03b741-6914-567d-b824-32bd338153a4"
    assert chunk_id("00000000-0000-0000-0000-000000000000", 3) == "785d07d9-3fa9-50aa-8181-58da4d4a3d8f"


def test_chunk_ids_are_distinct_per_sequence_and_document():
    doc_a = document_id("acme", "a.txt")
    doc_b = document_id("acme", "b.txt")
    ids = {chunk_id(doc, seq) for doc in (doc_a, doc_b) for seq in range(50)}
    assert len(ids) == 100


# --- validate_tenant ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["acme", "a", "0", "tenant_01-x", "a" * 63, "9lives"])
def test_validate_tenant_accepts(tenant):
    assert validate_tenant(tenant) == tenant


@pytest.mark.parametrize(
    "tenant",
    [
        "Acme",
        "ACME",
        "../x",
        "..",
        "",
        "a" * 64,
        "my tenant",
        " acme",
        "acme ",
        "-acme",
        "_acme",
        "acme\n",
        "a/b",
        "a.b",
        "café",
    ],
)
def test_validate_tenant_rejects(tenant):
    with pytest.raises(InvalidName, match="invalid tenant id"):
        validate_tenant(tenant)


@pytest.mark.parametrize("tenant", [None, 123, b"acme"])
def test_validate_tenant_rejects_non_strings(tenant):
    with pytest.raises(InvalidName):
        validate_tenant(tenant)


def test_invalid_name_is_a_value_error():
    assert issubclass(InvalidName, ValueError)


# --- validate_document_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.txt", "report.txt"),
        ("dir/sub/file.md", "dir/sub/file.md"),
        ("dir\\sub\\file.txt", "dir/sub/file.txt"),
        ("mixed/sep\\file.pdf", "mixed/sep/file.pdf"),
        ("a//b.txt", "a/b.txt"),
        ("a/./b.txt", "a/b.txt"),
        ("name with spaces.txt", "name with spaces.txt"),
    ],
)
def test_validate_document_name_normalises(name, expected):
    assert validate_document_name(name) == expected


@pytest.mark.parametrize("name", ["/etc/passwd", "/abs.txt", "\\abs\\x.txt", "//server/share.txt"])
def test_validate_document_name_rejects_absolute_paths(name):
    with pytest.raises(InvalidName):
        validate_document_name(name)


@pytest.mark.parametrize("name", ["..", "../x.txt", "a/../../b.txt", "a/..", "a\\..\\b.txt", "..\\x.txt"])
def test_validate_document_name_rejects_parent_components(name):
    with pytest.raises(InvalidName, match=r"\.\."):
        validate_document_name(name)


@pytest.mark.parametrize("name", [".env", "dir/.git/config", ".hidden/file.txt", "dir\\.secret.txt"])
def test_validate_document_name_rejects_hidden_files(name):
    with pytest.raises(InvalidName, match="hidden"):
        validate_document_name(name)


def test_validate_document_name_rejects_empty():
    with pytest.raises(InvalidName):
        validate_document_name("")


def test_validate_document_name_length_limit():
    assert validate_document_name("a" * 512) == "a" * 512
    with pytest.raises(InvalidName, match="512"):
        validate_document_name("a" * 513)


# --- index_name --------------------------------------------------------------------------------------


def test_index_name():
    assert index_name("acme") == "tenant_acme"
    assert index_name("acme") != index_name("globex")


@pytest.mark.parametrize("tenant", ["ACME", "../x", ""])
def test_index_name_validates_tenant(tenant):
    with pytest.raises(InvalidName):
        index_name(tenant)


def test_index_generations_never_share_a_name_even_for_tenants_that_look_alike():
    from ingest_pipeline.core.ids import index_name

    tenants = ["a", "a_g2", "a__g2", "g2_a", "tenant-g2", "a-g2", "g2", "a2"]
    names = [index_name(tenant, generation) for tenant in tenants for generation in (1, 2, 3, 12)]
    assert len(set(names)) == len(names)
    assert index_name("acme") == index_name("acme", 1) == "tenant_acme"
    with pytest.raises(ValueError):
        index_name("acme", 0)
