"""Search filters as CyborgDB metadata filters (pure: no engine)."""

import pytest

from ingest_pipeline.core.formats import DOCUMENT_FORMATS
from ingest_pipeline.work.search import InvalidSearchOption, SearchFilters


def test_a_format_filter_is_a_clause_on_the_items_format_field():
    assert SearchFilters(format="pdf").to_cyborgdb() == {"format": "pdf"}
    assert SearchFilters(format="image", name_prefix="scans/").to_cyborgdb() == {
        "$and": [{"name_prefixes": {"$in": ["scans/"]}}, {"format": "image"}]}
    assert all(SearchFilters(format=fmt).to_cyborgdb() == {"format": fmt} for fmt in DOCUMENT_FORMATS)


@pytest.mark.parametrize("value", ["PDF", "doc", "", "x" * 5000, 3, ["pdf"]])
def test_an_unknown_format_is_refused_with_the_known_ones_never_echoing_the_value(value):
    with pytest.raises(InvalidSearchOption) as refused:
        SearchFilters(format=value).to_cyborgdb()
    assert refused.value.field == "filters.format"
    assert all(fmt in str(refused.value) for fmt in DOCUMENT_FORMATS) and "xxxx" not in str(refused.value)
