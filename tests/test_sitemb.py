"""SitEmb (arXiv:2508.01959): the residual score and context window on hand-worked cases, the chunk marked in
the situated input, chunk ids with parents and offsets, save/load (module and index, new process), the
recipe on a tiny SciFact-format folder, config errors; a slow real-model run on a SciFact slice."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_saved_encoder_reloads, run_python, shared

from retrieval.data import Corpus, Doc
from retrieval.dense.sitemb import (
    SituatedEncoder,
    SituatedRetriever,
    context_window,
    residual_scores,
    situate_document,
    situated_features,
    unit_spans,
)
from retrieval.longdoc import line_spans, sentence_spans
from indexes.manifest import current_folder

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------- formulas


def test_residual_score_hand_worked():
    # <q_s, s> + 0.5 <q_b, b> with q_s = [1, 0], s = [0.8, 0.6], q_b = [0.6, 0.8], b = [0, 1]: 0.8 + 0.5 * 0.8 = 1.2
    q_s, q_b = np.array([[1.0, 0.0]]), np.array([[0.6, 0.8]])
    s, b = np.array([[0.8, 0.6]]), np.array([[0.0, 1.0]])
    assert residual_scores(q_s, q_b, s, b, 0.5)[0, 0] == pytest.approx(1.2)
    assert residual_scores(q_s, q_b, s, b, 0.0)[0, 0] == pytest.approx(0.8)
    # the index's single inner product [q_s ; f q_b] . [s ; b] is the same score
    assert (np.hstack([q_s, 0.5 * q_b]) @ np.hstack([s, b]).T)[0, 0] == pytest.approx(1.2)


class _Fixed:
    """A stand-in encoder returning fixed vectors, to check how SituatedEncoder combines them."""

    def __init__(self, query, doc):
        self.query, self.doc, self.dim = np.array([query], np.float32), np.array([doc], np.float32), len(query)

    def encode_queries(self, texts, progress=False):
        return np.repeat(self.query, len(texts), 0)

    def encode_documents(self, texts, progress=True):
        return np.repeat(self.doc, len(texts), 0)


def test_encoder_concatenates_with_the_factor_on_the_query_side():
    theta_s, theta_b = _Fixed([1.0, 0.0], [9.0, 9.0]), _Fixed([0.6, 0.8], [0.0, 1.0])
    encoder = SituatedEncoder(theta_s, theta_b, residual_factor=0.5)
    encoder.encode_situated_only = lambda chunks, contexts, progress=True: np.array([[0.8, 0.6]] * len(chunks), np.float32)
    q, c = encoder.encode_queries(["q"]), encoder.encode_situated(["chunk"], ["context"])
    np.testing.assert_allclose(q, [[1.0, 0.0, 0.3, 0.4]])
    np.testing.assert_allclose(c, [[0.8, 0.6, 0.0, 1.0]])
    assert (q @ c.T)[0, 0] == pytest.approx(1.2)
    assert encoder.dim == 4
    with pytest.raises(ValueError, match="residual_factor"):
        SituatedEncoder(theta_s, theta_b, residual_factor=-1)


def test_context_window_hand_worked():
    # unit costs [3, 2, 4, 1, 5], chunk = unit 2 (4 tokens), budget 8:
    # left +2 -> 6, right +1 -> 7, left +3 -> 10 > 8 stop, right +5 -> 12 > 8 stop  => units [1, 4)
    assert context_window(2, 3, [3, 2, 4, 1, 5], 8) == (1, 4)
    assert context_window(2, 3, [3, 2, 4, 1, 5], 4) == (2, 3)  # only the chunk fits
    assert context_window(2, 3, [3, 2, 4, 1, 5], 2) == (2, 3)  # the chunk is kept even over budget
    assert context_window(0, 1, [1, 1, 1], 100) == (0, 3)  # one side ends, the other goes on


def test_units_and_offsets():
    text = "Alpha binds beta. It was shown in mice. Gamma is unrelated."
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["Alpha binds beta.", "It was shown in mice.", "Gamma is unrelated."]
    turns = "a: hi\n\nb: yo"
    assert [turns[s:e] for s, e in line_spans(turns)] == ["a: hi", "b: yo"]  # blank lines are no chunk
    doc = Doc("d1", "", text)
    chunks = situate_document(doc, spans, [4, 6, 5], window=1, stride=1, context_tokens=11)
    assert [c.id for c in chunks] == ["d1#c0", "d1#c1", "d1#c2"]
    second = chunks[1]
    assert text[second.start : second.end] == "It was shown in mice."
    # budget 11: chunk 6 + left 4 = 10, right 5 would make 15 -> context = sentences 0-1
    assert text[second.context_start : second.context_end] == "Alpha binds beta. It was shown in mice."
    # windows of 2 sentences with overlap 1
    pairs = situate_document(doc, spans, [4, 6, 5], window=2, stride=1, context_tokens=100)
    assert [text[c.start : c.end] for c in pairs] == [text[: spans[1][1]], text[spans[1][0] :]]
    with pytest.raises(ValueError, match="unit"):
        unit_spans(text, "paragraphs")


def test_situated_input_marks_the_chunk():
    from transformers import AutoTokenizer

    from retrieval.models import model_path

    class _St:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))

    features = situated_features(_St, ["it binds"], ["alpha is a protein . it binds"], max_length=64)
    tokens = _St.tokenizer.convert_ids_to_tokens(features["input_ids"][0])
    assert tokens == ["[CLS]", "it", "binds", "[SEP]", "alpha", "is", "a", "protein", ".", "it", "binds", "[SEP]"]
    assert features["token_type_ids"][0].tolist() == [0] * 4 + [1] * 8  # chunk segment 0, context segment 1
    cut = situated_features(_St, ["it binds"], ["alpha is a protein . it binds"], max_length=8)
    assert _St.tokenizer.convert_ids_to_tokens(cut["input_ids"][0])[:4] == ["[CLS]", "it", "binds", "[SEP]"]  # context cut first


# ---------------------------------------------------------------------------------------- tiny model: code paths


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer, 32-d BERT with the MiniLM tokenizer, mean pooling + Normalize, saved as a folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        Transformer,
    )
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retrieval.models import model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    model = SentenceTransformer(modules=[Transformer(str(folder / "hf"), max_seq_length=64), Pooling(32, "mean"), Normalize()],
                                device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


CORPUS = Corpus([
    Doc("m1", "", "A: we chose a rubber case.\nB: it is cheaper than titanium.\nA: and it bounces.\nC: fine."),
    Doc("m2", "", "D: the budget is twelve euros.\nE: the remote needs a scroll wheel."),
])


def test_retriever_returns_chunks_with_parents_and_offsets(tiny_model, tmp_path):
    r = SituatedRetriever(model=str(tiny_model), baseline=str(tiny_model), unit="lines", context_tokens=24, max_length=64,
                          batch_size=2)
    r.index(CORPUS)
    assert r.chunk_count == 6 and r.doc_count == 2
    assert r.chunk("m1#c1") == ("m1", 27, 58)
    assert CORPUS["m1"].text[27:58] == "B: it is cheaper than titanium."
    hits = r.search_one("why rubber?", k=6)
    assert len(hits) == 6 and {h.doc_id for h in hits} == {c.id for c in r.chunks}
    for hit in hits:
        assert hit.parent == hit.doc_id.split("#c")[0]
        assert CORPUS[hit.parent].text[hit.start : hit.end] == hit.text
    assert hits == sorted(hits, key=lambda h: -h.score)
    queries = {"q1": "why rubber?", "q2": "what does the remote need?"}
    here = r.search(queries, k=4)
    r.save(tmp_path / "index")
    code = ("import json; from retrieval import load_retriever\n"
            f"r = load_retriever({str(tmp_path / 'index')!r}, trust_paths=True)\n"
            f"print(json.dumps({{'run': r.search({queries!r}, k=4), 'chunk': r.chunk('m2#c1')}}))")
    there = json.loads(run_python(code).strip().splitlines()[-1])
    assert there["chunk"] == ["m2", 31, 66]
    for qid, ranked in here.items():
        assert list(there["run"][qid]) == list(ranked)
        for c, s in ranked.items():
            assert there["run"][qid][c] == pytest.approx(s, abs=1e-5)


def test_retriever_can_return_documents_scored_by_their_best_chunk(tiny_model):
    """returns="documents" (for document-level qrels, e.g. `dengen eval`) is MaxP over the chunk run."""
    options = dict(model=str(tiny_model), baseline=str(tiny_model), unit="lines", context_tokens=24, max_length=64,
                   batch_size=2)
    chunks, docs = SituatedRetriever(**options), SituatedRetriever(**options, returns="documents")
    chunks.index(CORPUS)
    docs.index(CORPUS)
    chunk_run = chunks.search({"q": "why rubber?"}, k=6)["q"]
    best = {}
    for cid, score in chunk_run.items():
        best[cid.split("#c")[0]] = max(score, best.get(cid.split("#c")[0], float("-inf")))
    assert docs.search({"q": "why rubber?"}, k=2)["q"] == pytest.approx(best)
    assert list(docs.search({"q": "why rubber?"}, k=1)["q"]) == [max(best, key=best.get)]
    assert docs.search_one("why rubber?", k=2)[0].parent in best  # search_one still gives chunks


def test_long_document_tasks_score_a_situated_row_once_on_its_own_chunks(tiny_model, tmp_path):
    """QMSum in the suite: a situated retriever already cuts documents into chunks (with their context), so
    it is scored once, as it reads them, and not again inside 150-word windows that would clip the context."""
    from conftest import write_beir

    from eval.loco import evaluate_long
    from eval.suite import run_suite
    from retrieval.data import Dataset
    from retrieval.spec import parse_spec

    root = tmp_path / "data"
    write_beir(root / "qmsum", docs=[(d.id, "", d.text) for d in CORPUS],
               queries={"q1": "why rubber?", "q2": "what does the remote need?"}, qrels={"q1": {"m1": 1}, "q2": {"m2": 1}})
    spec = (f"situated:model={tiny_model},baseline={tiny_model},unit=lines,context_tokens=24,max_length=64,"
            "batch_size=2,returns=documents")
    (record,) = run_suite(spec, tmp_path / "results", data_root=root, tasks=["qmsum"], name="SitEmb")
    assert record.column == "QMSum [chunk 1x1l+24t context]" and record.variant == "chunk 1x1l+24t context"
    assert record.details["long_doc"] == {"mode": "chunk", "unit": "lines", "window": 1, "stride": 1,
                                          "context_tokens": 24, "chunks": 6}
    assert record.metrics["ndcg@10"] > 0 and record.label == "SitEmb"
    dataset = Dataset(CORPUS, {"q1": "why rubber?"}, {"q1": {"m1": 1}}, "toy")
    record, _ = evaluate_long(parse_spec(spec), dataset)
    assert record.label == "situated-1x1l-ctx24t"
    with pytest.raises(ValueError, match="needs returns=documents"):
        evaluate_long(parse_spec(spec.replace("returns=documents", "returns=chunks")), dataset)
    with pytest.raises(ValueError, match="is always 'chunk'"):
        evaluate_long(parse_spec(spec), dataset, long_doc="truncate")


def test_retriever_bad_options():
    with pytest.raises(ValueError, match="returns"):
        SituatedRetriever(returns="passages")
    with pytest.raises(ValueError, match="unit"):
        SituatedRetriever(unit="pages")
    with pytest.raises(ValueError, match="stride"):
        SituatedRetriever(window=2, stride=3)


def test_loading_refuses_changed_chunks(tiny_model, tmp_path):
    from retrieval import load_retriever
    from retrieval.errors import IndexLoadError

    r = SituatedRetriever(model=str(tiny_model), baseline=None, unit="lines", context_tokens=16, max_length=64)
    r.index(CORPUS)
    assert r.encoder.dim == 32  # no baseline: situated vectors only
    r.save(tmp_path / "index")
    (current_folder(tmp_path / "index") / "chunks.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(IndexLoadError):
        load_retriever(tmp_path / "index")


# ---------------------------------------------------------------------------------------- the recipe, small


def write_tiny_scifact_claims(folder: Path) -> Path:
    """A SciFact-claims-format folder: 6 abstracts, 4 train claims, 2 dev claims, with evidence sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [(i, f"Title {i}", [f"Study {i} measured protein {i}.", f"Protein {i} binds receptor {i + 10}.",
                               f"Mice lacking it {i} lived longer."]) for i in range(1, 7)]
    with gzip.open(folder / "corpus-sentences.jsonl.gz", "wt") as f:
        for i, title, abstract in docs:
            f.write(json.dumps({"doc_id": i, "title": title, "abstract": abstract, "structured": False}) + "\n")
    claims = {"train": [(1, 1, 1), (2, 2, 2), (3, 3, 1), (4, 4, 2)], "dev": [(5, 5, 1), (6, 6, 2)]}
    for split, rows in claims.items():
        with gzip.open(folder / f"claims_{split}.jsonl.gz", "wt") as f:
            for cid, doc, sentence in rows:
                f.write(json.dumps({"id": cid, "claim": f"protein {doc} binds receptor {doc + 10}",
                                    "evidence": {str(doc): [{"sentences": [sentence], "label": "SUPPORT"}]},
                                    "cited_doc_ids": [doc]}) + "\n")
            f.write(json.dumps({"id": cid + 100, "claim": "no evidence", "evidence": {}, "cited_doc_ids": [1]}) + "\n")
    return folder


def test_chunk_task_loader(tmp_path):
    from eval.situated import scifact_sentences

    task = scifact_sentences(write_tiny_scifact_claims(tmp_path / "claims"), "dev", pool_docs=3, seed=0)
    assert task.queries == {"5": "protein 5 binds receptor 15", "6": "protein 6 binds receptor 16"}  # no NEI claim
    assert task.qrels == {"5": {"5#c1": 1}, "6": {"6#c2": 1}}
    assert {"5", "6"} <= set(task.corpus.ids) and len(task.corpus) == 3
    assert task.corpus["5"].text.split("\n")[1] == "Protein 5 binds receptor 15."


def test_recipe_small(tiny_model, tmp_path):
    from training import sitemb

    data = write_tiny_scifact_claims(tmp_path / "claims")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"task: scifact\ndata: {data}\npool_docs: null\nmodel: {tiny_model}\nbaseline: {tiny_model}\n"
                      f"steps: 3\nbatch_size: 2\ncontext_tokens: 24\nmax_length: 64\nchunk_max_length: 64\n"
                      f"cache: {tmp_path / 'cache'}\nout: {tmp_path / 'out'}\n")
    report = sitemb.main(["--config", str(config)])
    names = [row["name"] for row in report["rows"]]
    assert len(names) == 5 and names[-1].startswith("situated trained")
    assert report["train"]["pairs"] == 4 and report["test"]["chunks"] == 18
    assert all(0.0 <= row["ndcg@10"] <= 1.0 for row in report["rows"])
    assert report["rows"][-1]["train"]["steps"] == 3
    assert len(report["ablation"]) == 6
    assert report["verify_reload"]["ok"] is True, report["verify_reload"]
    saved = json.loads((tmp_path / "out" / "situated" / "manifest.json").read_text())
    assert saved["kind"] == "sitemb" and saved["residual_factor"] == 0.5 and saved["base"]["inside"] is True


def test_bad_config_names_file_and_key(tmp_path):
    from training import sitemb

    for text, key in (("stepz: 3\n", "stepz"), ("residual_factor: -1\n", "residual_factor"), ("task: books\n", "task"),
                      ("batch_size: 1\n", "batch_size"), ("pool_docs: 0\n", "pool_docs"),
                      ("train_control: 3\n", "train_control")):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(SystemExit, match=rf"bad\.yaml.*{key}"):
            sitemb.load_config(path)


# ---------------------------------------------------------------------------------------- minilm: saved module


def test_saved_module_reloads_in_new_process(tiny_beir, tmp_path):
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import load_encoder

    minilm = SentenceEncoder("minilm", device="cpu")
    SituatedEncoder(minilm, minilm, residual_factor=0.5, tuned=True, info={"note": "untrained copy"}).save(tmp_path / "sitemb")
    loaded = load_encoder(tmp_path / "sitemb")
    assert isinstance(loaded, SituatedEncoder) and loaded.residual_factor == 0.5 and loaded.dim == 768
    assert_saved_encoder_reloads(tmp_path / "sitemb", tiny_beir, tmp_path)


@pytest.mark.slow
def test_recipe_real_slice(tmp_path):
    """MiniLM on a real slice: one QMSum test meeting (seeded), 10 training steps; the full pipeline, reload verified."""
    from training import sitemb

    config = tmp_path / "slice.yaml"
    config.write_text(f"task: qmsum\ndata: {shared('qmsum')}\ntest_split: test\npool_docs: 1\nsteps: 10\nbatch_size: 8\n"
                      f"context_tokens: 64\npositives_per_query: 1\nmin_chunk_words: 8\n"
                      f"cache: {tmp_path / 'cache'}\nout: {tmp_path / 'out'}\n")
    report = sitemb.main(["--config", str(config)])
    rows = {row["name"].split(" (")[0]: row for row in report["rows"]}
    assert report["test"]["docs"] == 1 and report["test"]["queries"] > 0
    assert rows["chunk-only minilm"]["ndcg@10"] > 0.05  # real retrieval: random turns out of ~600 score near 0
    assert report["verify_reload"]["ok"] is True
