"""The encrypted index loses no recall against exact search with the same model (SQuAD 2.0 dev sample)."""

from benchmarks.retrieval_quality import evaluate


def test_encrypted_index_matches_exact_search_on_squad(pipeline):
    figures = evaluate(top_k=5)
    assert figures["questions"] == 102 and figures["chunks"] >= figures["passages"] == 41
    assert figures["recall_at_5_vs_exact"] == 1.0
    assert figures["answer_in_top_5_encrypted"] == figures["answer_in_top_5_exact"]
    assert figures["answer_at_1_encrypted"] == figures["answer_at_1_exact"]
    # The model itself must be doing its job on this set (measured: see the README).
    assert figures["answer_in_top_5_encrypted"] >= 0.6
