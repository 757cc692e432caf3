"""mteb on local data: tasks load our files, adapters expose dengen retrievers and encoders, and mteb's
numbers equal our runner's for the same retriever.

BM25 on SciFact runs by default (~20 s); MiniLM on SciFact (5 min of encoding) is `slow`."""
import json
import os

import numpy as np
import pytest
from conftest import TINY_DOCS, TINY_QRELS, TINY_QUERIES, shared, write_beir
from test_sts import HashEncoder

from eval.metrics import evaluate_run
from eval.mteb_adapter import MtebEncoder, MtebRetriever, mteb_model, mteb_scores
from eval.mteb_tasks import local_retrieval_task, scifact_task, sickr_task, stsbenchmark_task
from eval.runner import evaluate
from retrieval import build_retriever, load_corpus, load_dataset, load_retriever
from retrieval.run import Run

# SciFact cut-offs for the default test: searching 100 deep instead of mteb's 1000 is ~4x faster in
# Lucene and leaves nDCG@10 and Recall@100 unchanged
SHALLOW = (1, 3, 5, 10, 100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("mteb") / "tiny")


@pytest.fixture(scope="module")
def tiny_bm25(tiny, tmp_path_factory):
    """A BM25 index of the tiny corpus, saved, with its runner record."""
    retriever = build_retriever("bm25")
    record, _ = evaluate(retriever, load_dataset(tiny), latency_sample=1)
    folder = tmp_path_factory.mktemp("index") / "bm25"
    retriever.save(folder)
    return folder, record


# ---------------------------------------------------------------- tasks


def test_local_task_holds_the_folder_in_mtebs_layout(tiny):
    task = local_retrieval_task(tiny, name="Tiny")
    task.load_data()
    split = task.dataset["default"]["test"]
    assert list(split["corpus"]["id"]) == [d[0] for d in TINY_DOCS]
    assert split["corpus"][1] == {"id": "d2", "title": "Scurvy", "text": TINY_DOCS[1][2]}
    assert dict(zip(split["queries"]["id"], split["queries"]["text"])) == TINY_QUERIES
    assert split["relevant_docs"] == TINY_QRELS and split["top_ranked"] is None
    assert (task.metadata.name, task.metadata.main_score, task.metadata.type) == ("Tiny", "ndcg_at_10", "Retrieval")
    assert local_retrieval_task(tiny).metadata.name == "tiny"


def test_local_task_fails_on_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset folder"):
        local_retrieval_task(tmp_path / "missing")
    folder = write_beir(tmp_path / "dangling", qrels={"q1": {"nope": 1}})
    with pytest.raises(ValueError, match="'nope' is not in the corpus"):
        local_retrieval_task(folder).load_data()


def test_named_tasks_carry_mtebs_metadata():
    scifact = scifact_task(shared("scifact"))
    assert (scifact.metadata.name, scifact.metadata.main_score, scifact.metadata.eval_splits) == ("SciFact", "ndcg_at_10", ["test"])
    assert scifact.metadata.dataset["path"] == str(shared("scifact")) and scifact.metadata.license == "cc-by-nc-4.0"
    sts = stsbenchmark_task(folder=shared("stsbenchmark"))
    assert (sts.metadata.name, sts.metadata.main_score, sts.metadata.superseded_by) == ("STSBenchmark", "cosine_spearman", None)
    assert stsbenchmark_task("dev", shared("stsbenchmark"), limit=5).metadata.name == "STSBenchmark-dev-first5"
    sick = sickr_task(folder=shared("sick"))
    # MTEB scores all 9,927 SICK pairs under the split name "test"
    assert (sick.metadata.name, sick.metadata.eval_splits) == ("SICK-R", ["test"])
    sick.load_data()
    assert sick.dataset["test"].num_rows == 9927 and sick.dataset["test"]["score"][0] == 4.5
    assert sickr_task("test", shared("sick")).metadata.name == "SICK-R-test"


def test_shallow_k_values_keep_recall_at_1():
    task = scifact_task(shared("scifact"), k_values=(10, 100))
    assert task.k_values == (1, 10, 100) and task._top_k == 100
    assert max(scifact_task(shared("scifact")).k_values) == 1000  # mteb's default untouched


# ---------------------------------------------------------------- retriever adapter


def test_mteb_scores_a_retriever_as_our_runner_does(tiny, tiny_bm25):
    _, record = tiny_bm25
    adapter = MtebRetriever(build_retriever("bm25"))
    scores = mteb_scores(adapter, local_retrieval_task(tiny))
    assert adapter.reused_index is False  # an empty retriever is indexed from mteb's corpus
    assert scores["main_score"] == scores["ndcg_at_10"]
    for ours, theirs in [("ndcg@10", "ndcg_at_10"), ("recall@100", "recall_at_100"), ("mrr@10", "mrr_at_10")]:
        assert record.metrics[ours] == pytest.approx(scores[theirs], abs=1e-4)
    assert scores["ndcg_at_10"] > 0.7  # the tiny queries are easy: a broken adapter would not get there


def test_saved_index_is_scored_without_reindexing(tiny, tiny_bm25, monkeypatch):
    folder, record = tiny_bm25
    loaded = load_retriever(folder)
    monkeypatch.setattr(loaded, "_index", lambda corpus: pytest.fail("a saved index was re-indexed"))
    adapter = MtebRetriever(loaded)
    scores = mteb_scores(adapter, local_retrieval_task(tiny))
    assert adapter.reused_index is True
    assert scores["ndcg_at_10"] == pytest.approx(record.metrics["ndcg@10"], abs=1e-4)


def test_same_count_other_documents_is_reindexed(tiny_bm25, tmp_path):
    folder, _ = tiny_bm25
    renamed = [(f"x{doc_id}", title, text) for doc_id, title, text in TINY_DOCS]
    other = write_beir(tmp_path / "renamed", docs=renamed, qrels={q: {f"x{d}": s for d, s in docs.items()} for q, docs in TINY_QRELS.items()})
    adapter = MtebRetriever(load_retriever(folder))
    scores = mteb_scores(adapter, local_retrieval_task(other))
    # same size, other ids: scoring the old index would give 0, so it must have been rebuilt
    assert adapter.reused_index is False and scores["ndcg_at_10"] > 0.7


def test_reindex_false_trusts_the_index_but_not_another_size(tiny, tiny_bm25, tmp_path, monkeypatch):
    folder, record = tiny_bm25
    loaded = load_retriever(folder)
    monkeypatch.setattr(loaded, "doc_text", lambda doc_id: None)  # an index that stores no texts
    assert not loaded.holds(load_corpus(tiny))  # so the default would rebuild it
    adapter = MtebRetriever(loaded, reindex=False)
    assert mteb_scores(adapter, local_retrieval_task(tiny))["ndcg_at_10"] == pytest.approx(record.metrics["ndcg@10"], abs=1e-4)
    assert adapter.reused_index is True
    smaller = write_beir(tmp_path / "smaller", docs=TINY_DOCS[:5], queries={"q1": TINY_QUERIES["q1"]}, qrels={"q1": {"d2": 1}})
    with pytest.raises(ValueError, match="the index holds 8 documents, the task 5"):
        mteb_scores(MtebRetriever(load_retriever(folder), reindex=False), local_retrieval_task(smaller))


def test_search_returns_every_query_and_refuses_reranking(tiny_bm25):
    from datasets import Dataset

    adapter = MtebRetriever(load_retriever(tiny_bm25[0]))
    queries = Dataset.from_dict({"id": ["q1", "empty"], "text": ["what causes scurvy", "zzzq xxyy"]})
    run = adapter.search(queries, top_k=3)
    assert list(run) == ["q1", "empty"] and run["empty"] == {}
    assert next(iter(Run(run).top("q1", 1)))[0] == "d2" and len(run["q1"]) <= 3
    with pytest.raises(NotImplementedError, match="re-ranker"):
        adapter.search(queries, top_k=3, top_ranked={"q1": ["d1"]})


def test_model_meta_names_the_configuration():
    bm25 = MtebRetriever(build_retriever("bm25")).mteb_model_meta
    assert bm25.name == "dengen/bm25" and bm25.model_type == ["sparse"]
    other = MtebRetriever(build_retriever("bm25", k1=1.2)).mteb_model_meta
    assert other.name == bm25.name and other.revision != bm25.revision  # configs never share an mteb cache entry
    encoder = MtebEncoder(HashEncoder()).mteb_model_meta
    assert (encoder.name, encoder.embed_dim, encoder.similarity_fn_name) == ("dengen/encoder-hash-bow", 32, "cosine")


def test_mteb_model_picks_the_adapter():
    from mteb.models import EncoderProtocol, SearchProtocol

    retriever, encoder = mteb_model(build_retriever("bm25")), mteb_model(HashEncoder())
    assert isinstance(retriever, MtebRetriever) and isinstance(encoder, MtebEncoder)
    # mteb routes on these: a retriever must search, not encode; an encoder must encode
    assert isinstance(retriever, SearchProtocol) and not isinstance(retriever, EncoderProtocol)
    assert isinstance(encoder, EncoderProtocol)
    assert mteb_model(retriever) is retriever
    with pytest.raises(TypeError, match="neither a dengen Retriever nor an encoder"):
        mteb_model(object())


def test_sts_task_refuses_a_retriever():
    with pytest.raises(TypeError, match="does not support Search"):
        mteb_scores(build_retriever("bm25"), stsbenchmark_task(folder=shared("stsbenchmark"), limit=5))


# ---------------------------------------------------------------- encoder adapter


class SpyEncoder(HashEncoder):
    """Records which method encoded how many texts."""

    def __init__(self):
        super().__init__(doc_marker="passage:")
        self.calls = []

    def encode_queries(self, texts):
        self.calls.append(("queries", len(texts)))
        return super().encode_queries(texts)

    def encode_documents(self, texts):
        self.calls.append(("documents", len(texts)))
        return super().encode_documents(texts)


def test_encoder_through_mtebs_own_search_matches_exact_search(tiny):
    dataset = load_dataset(tiny)
    encoder = HashEncoder(doc_marker="passage:")
    docs = encoder.encode_documents([d.full_text for d in dataset.corpus])
    queries = encoder.encode_queries(list(dataset.queries.values()))
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (docs / np.linalg.norm(docs, axis=1, keepdims=True)).T
    ours = evaluate_run(dataset.qrels, {q: dict(zip(dataset.corpus.ids, map(float, row))) for q, row in zip(dataset.queries, cosine)})
    spy = SpyEncoder()
    theirs = mteb_scores(MtebEncoder(spy), local_retrieval_task(tiny))
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg_at_10"], abs=1e-4)
    assert ours["map@10"] == pytest.approx(theirs["map_at_10"], abs=1e-4)
    # mteb's queries went through encode_queries, its corpus through encode_documents
    assert sorted(spy.calls) == [("documents", len(TINY_DOCS)), ("queries", len(TINY_QUERIES))]


# ---------------------------------------------------------------- SciFact


def test_bm25_scifact_mteb_equals_runner():
    dataset = load_dataset(shared("scifact"))
    retriever = build_retriever("bm25")
    record, _ = evaluate(retriever, dataset, latency_sample=1)
    adapter = MtebRetriever(retriever)
    scores = mteb_scores(adapter, scifact_task(shared("scifact"), k_values=SHALLOW))
    assert adapter.reused_index is True
    assert scores["ndcg_at_10"] == pytest.approx(record.metrics["ndcg@10"], abs=1e-4)  # 3 decimals and more
    assert scores["recall_at_100"] == pytest.approx(record.metrics["recall@100"], abs=1e-4)
    assert scores["ndcg_at_10"] == pytest.approx(0.679, abs=0.003)  # Anserini BM25 flat: 0.6789


@pytest.fixture(scope="module")
def scifact_minilm(tmp_path_factory):
    """A MiniLM/Flat index of SciFact, saved once: $DENGEN_SCIFACT_MINILM_INDEX (e.g. runs/demo/dense from
    `make demo`) when set, otherwise built here (~5 min) and saved to a temporary folder."""
    folder = os.environ.get("DENGEN_SCIFACT_MINILM_INDEX")
    if not folder:
        retriever = build_retriever("dense", model="minilm", index="Flat")
        retriever.index(load_dataset(shared("scifact")).corpus)
        folder = tmp_path_factory.mktemp("scifact") / "minilm"
        retriever.save(folder)
    return folder


@pytest.mark.slow
def test_minilm_scifact_mteb_equals_runner_from_one_saved_index(scifact_minilm):
    dataset = load_dataset(shared("scifact"))
    # both scorers read the same saved index: the corpus is encoded once
    record, _ = evaluate(load_retriever(scifact_minilm), dataset, latency_sample=1)
    adapter = MtebRetriever(load_retriever(scifact_minilm))
    scores = mteb_scores(adapter, scifact_task(shared("scifact")))
    print("\nSciFact MiniLM:", json.dumps({"dengen": record.metrics, "mteb_ndcg_at_10": scores["ndcg_at_10"],
                                            "mteb_recall_at_100": scores["recall_at_100"]}))
    assert adapter.reused_index is True
    assert scores["ndcg_at_10"] == pytest.approx(record.metrics["ndcg@10"], abs=1e-4)  # 3 decimals and more
    assert scores["recall_at_100"] == pytest.approx(record.metrics["recall@100"], abs=1e-4)
    assert scores["ndcg_at_10"] == pytest.approx(0.6451, abs=0.01)  # MTEB's all-MiniLM-L6-v2 figure
