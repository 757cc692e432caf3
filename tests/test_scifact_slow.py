"""The figures the project promises on SciFact test, with the real MiniLM model (several minutes)."""
import json

import pytest
from conftest import shared
from test_cli import dengen

from eval.metrics import evaluate_run
from retrieval import load_dataset, load_retriever, parse_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scifact():
    return load_dataset(shared("scifact"))


@pytest.fixture(scope="module")
def saved(scifact, tmp_path_factory):
    """BM25 and MiniLM/Flat indexes of SciFact, built through the Python API and saved."""
    root = tmp_path_factory.mktemp("scifact")
    runs = {}
    for name, spec in {"bm25": "bm25", "dense": "dense:model=minilm,index=Flat"}.items():
        retriever = parse_spec(spec)
        retriever.index(scifact.corpus)
        retriever.save(root / name)
        runs[name] = retriever.search(scifact.queries, k=100)
    hybrid = parse_spec(f"{root / 'bm25'}+{root / 'dense'}")
    runs["hybrid"] = hybrid.search(scifact.queries, k=100)
    return root, {name: evaluate_run(scifact.qrels, run) for name, run in runs.items()}, runs


def test_bm25_and_minilm_reach_published_figures(saved):
    _, metrics, _ = saved
    assert metrics["bm25"]["ndcg@10"] >= 0.67  # Anserini flat: 0.679
    assert metrics["dense"]["ndcg@10"] >= 0.63  # MTEB all-MiniLM-L6-v2: 0.645
    assert metrics["dense"]["ndcg@10"] == pytest.approx(0.6451, abs=0.01)


def test_hybrid_rrf_beats_both_members(saved):
    _, metrics, _ = saved
    assert metrics["hybrid"]["ndcg@10"] > max(metrics["bm25"]["ndcg@10"], metrics["dense"]["ndcg@10"])


def test_reloaded_dense_index_gives_the_same_run(saved, scifact):
    root, _, runs = saved
    reloaded = load_retriever(root / "dense").search(scifact.queries, k=100)
    assert all([d for d, _ in reloaded.top(q, 10)] == [d for d, _ in runs["dense"].top(q, 10)] for q in scifact.queries)


@pytest.mark.parametrize("name", ["bm25", "dense", "hybrid"])
def test_cli_gives_the_api_figures(saved, tmp_path, name):
    root, metrics, _ = saved
    spec = {"bm25": "bm25", "dense": root / "dense", "hybrid": f"{root / 'bm25'}+{root / 'dense'}"}[name]
    dengen("eval", "--data", shared("scifact"), "--retriever", spec, "--out", tmp_path, "--name", name)
    record = json.loads((tmp_path / f"scifact-test-{name}.json").read_text())
    assert record["metrics"] == pytest.approx(metrics[name], abs=1e-6)
