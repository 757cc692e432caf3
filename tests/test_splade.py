"""SPLADE on a Lucene impact index: the pooling formula, quantisation, Lucene's scores, save and reload."""
import math

import pytest
import torch

from conftest import TINY_QUERIES

from retrieval import build_retriever, load_retriever
from retrieval.data import load_dataset
from retrieval.errors import SpecError
from retrieval.sparse.splade import quantised, splade_weights


def test_splade_max_pooling_and_quantisation_on_a_worked_case():
    # two texts, three tokens, a vocabulary of four terms; the second text's last token is padding
    logits = torch.tensor([[[1.0, -2.0, 0.0, 3.0], [2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.2]],
                           [[-1.0, 4.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    weights = splade_weights(logits, mask)
    # w_j = max_i log(1 + relu(logit_ij)) over real tokens: term a of the first text is log 3 (its second
    # token), padding's 9s never count
    expected = [[math.log(3), math.log(1.5), 0.0, math.log(4)], [0.0, math.log(5), 0.0, 0.0]]
    assert weights.flatten().tolist() == pytest.approx([w for row in expected for w in row])
    assert quantised(weights, ["a", "b", "c", "d"]) == [{"a": 110, "b": 41, "d": 139}, {"b": 161}]
    assert quantised(torch.tensor([[0.004, 0.006]]), ["a", "b"]) == [{"b": 1}]  # rounds to 0: left out


def test_index_search_scores_are_quantised_dot_products_and_reload(tiny_beir, tmp_path):
    dataset = load_dataset(tiny_beir)
    retriever = build_retriever("splade")
    retriever.index(dataset.corpus)
    run = retriever.search(dataset.queries, k=3)
    assert run.top("q1")[0][0] == "d2"  # "what causes scurvy": the vitamin C document
    docs = dict(zip(dataset.corpus.ids, retriever.encoder.encode([d.full_text for d in dataset.corpus])))
    (query,) = retriever.encoder.encode([TINY_QUERIES["q1"]], max_length=64)
    for doc_id, score in run["q1"].items():  # Lucene's impact score is the dot product of the integer weights
        assert score == sum(w * docs[doc_id].get(term, 0) for term, w in query.items())
    retriever.save(tmp_path / "idx")
    again = load_retriever(tmp_path / "idx").search(dataset.queries, k=3)
    assert again == run


def test_bad_options_fail_before_any_model_loads():
    with pytest.raises(SpecError, match="max_length must be a positive integer"):
        build_retriever("splade", max_length=0)
