import math

import pytest

from eval.metrics import evaluate_run, per_query
from retrieval import DataError, Run
from retrieval.run import ranked


def test_trec_roundtrip(tmp_path):
    run = Run({"q1": {"a": 2.0, "b": 3.5, "c": 1.0}, "q2": {"z": 0.5}})
    run.to_trec(tmp_path / "run.trec", tag="t")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 b 1 3.500000 t" and lines[2] == "q1 Q0 c 3 1.000000 t"
    assert Run.from_trec(tmp_path / "run.trec") == run


def test_ids_with_white_space_cannot_go_to_trec(tmp_path):
    with pytest.raises(ValueError, match="'Geneva Durben' is empty or holds white space"):
        Run({"q": {"Geneva Durben": 1.0}}).to_trec(tmp_path / "r.trec")
    assert not (tmp_path / "r.trec").exists()


def test_ties_follow_trec_eval_order():
    # trec_eval breaks score ties by docno, descending
    assert [d for d, _ in ranked({"a": 1.0, "b": 1.0, "c": 2.0})] == ["c", "b", "a"]


def test_bad_trec_line(tmp_path):
    (tmp_path / "r.trec").write_text("q1 Q0 a 1 1.0 t\nq1 Q0 b 2 x t\n")
    with pytest.raises(DataError) as err:
        Run.from_trec(tmp_path / "r.trec")
    assert (err.value.line, err.value.field) == (2, "score")


def test_metrics_on_a_hand_worked_case():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 1}}
    run = {"q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0}}  # q2 gets nothing: counts 0
    m = evaluate_run(qrels, run, ks=(1, 10))
    idcg = 1 + 1 / math.log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg / 2)
    assert m["mrr@10"] == pytest.approx(0.5 / 2)
    assert m["mrr@1"] == 0.0  # d1 sits at rank 2, outside the cut
    assert m["recall@1"] == 0.0 and m["recall@10"] == pytest.approx(1.0 / 2)
    assert m["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2 / 2)
    # precision: relevant among the first k over k (trec_eval's P_k), the empty run counting 0
    assert m["p@1"] == 0.0 and m["p@10"] == pytest.approx(2 / 10 / 2)
    assert per_query(qrels, run, ks=(10,))["ndcg@10"]["q2"] == 0.0


def test_result_labels_tell_matryoshka_sub_models_apart():
    from eval.runner import label

    base = {"kind": "dense", "model": "results/m2d/model", "index": "Flat"}
    assert label(base) == "dense-model-Flat"
    assert label({**base, "layers": 3, "dim": 128}) == "dense-model-Flat-L3-D128"
    assert label({**base, "dim": 64}) == "dense-model-Flat-D64"
