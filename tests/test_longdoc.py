"""Long documents: truncation counts, window arithmetic, max-pooling, and the chunked retriever's API."""
import json
import shutil
import warnings

import pytest
from conftest import run_python

from retrieval import Corpus, Doc, IndexLoadError, Retriever, load_retriever, parse_spec
from retrieval.longdoc import (
    ChunkedRetriever,
    chunk_text,
    max_pool,
    parent_id,
    truncate_corpus,
    truncate_words,
    window_starts,
    word_spans,
)
from retrieval.spec import spec_to_config
from indexes.manifest import current_folder

FILLER = "the committee talked about the weather and the agenda for next week again " * 12  # 156 words
LONG_DOCS = [
    ("m1", "", FILLER + "finally the remote control budget was set at twelve euros"),
    ("m2", "", FILLER + "the interface should use speech recognition for the television"),
    ("m3", "", "a short meeting about lunch"),
]
LONG_QUERIES = {"q1": "remote control budget twelve euros", "q2": "speech recognition television interface"}


def long_corpus() -> Corpus:
    return Corpus(Doc(*d) for d in LONG_DOCS)


# ---------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("n,window,stride,expected", [
    (10, 4, 2, [0, 2, 4, 6]),
    (11, 4, 3, [0, 3, 6, 7]),  # the last window is moved back to end at unit 11
    (3, 4, 2, [0]),
    (4, 4, 4, [0]),
    (9, 3, 3, [0, 3, 6]),
])
def test_window_starts(n, window, stride, expected):
    assert window_starts(n, window, stride) == expected


def test_windows_cover_every_unit_and_are_full_length():
    for n in range(1, 40):
        for window in range(1, 9):
            for stride in range(1, window + 1):
                starts = window_starts(n, window, stride)
                covered = {i for s in starts for i in range(s, min(s + window, n))}
                assert covered == set(range(n))
                assert all(s + window <= n for s in starts) or starts == [0]


def test_chunk_text_cuts_the_original_string():
    text = "a b\nc  d e"
    assert chunk_text(text, word_spans(text), 2, 2) == ["a b", "c  d", "d e"]
    assert chunk_text("", [], 2, 1) == [""]  # an empty document still gets one (empty) chunk


def test_truncate_words_keeps_spacing():
    assert truncate_words("one two\nthree four", 3) == "one two\nthree"
    assert truncate_words("one two", 5) == "one two"


def test_truncate_corpus_warns_once_with_the_cut():
    corpus = Corpus([Doc("a", "T", "w1 w2 w3 w4 w5 w6 w7"), Doc("b", "", "x y z")])
    with pytest.warns(UserWarning) as caught:
        cut, stats = truncate_corpus(corpus, 3)
    assert [str(w.message) for w in caught] == ["1 of 2 documents exceed 3 words; 40.0% of words were cut"]
    assert cut["a"] == Doc("a", "T", "w1 w2 w3") and cut["b"].text == "x y z"
    assert (stats.docs_cut, stats.units, stats.units_cut) == (1, 10, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing cut: no warning
        truncate_corpus(corpus, 7)


def test_max_pool_hand_worked():
    scores = {"a#c0": 0.2, "a#c1": 0.9, "b#c0": 0.5, "x#c1#c0": 0.7, "x#c1#c3": -1.0}
    assert max_pool(scores) == {"a": 0.9, "b": 0.5, "x#c1": 0.7}
    assert parent_id("doc#c#c12") == "doc#c"


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="stride <= window"):
        ChunkedRetriever(inner="bm25", window=4, stride=5)
    with pytest.raises(ValueError, match="unit must be one of"):
        ChunkedRetriever(inner="bm25", unit="sentences")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ChunkedRetriever(inner="bm25", unit="tokens").tokenizer()


# ---------------------------------------------------------------- pooling depth, against brute force


class ScoreTable(Retriever):
    """An inner retriever with fixed chunk scores (not registered: never saved)."""

    kind = "score-table"

    def __init__(self, scores: dict[str, float]):
        super().__init__()
        self.scores, self.depths = scores, []

    def _index(self, corpus):
        self.ids = corpus.ids

    def _search(self, queries, k):
        self.depths.append(k)
        hits = sorted(((s, c) for c, s in self.scores.items() if c in self.ids and s > 0), reverse=True)[:k]
        return {q: {c: s for s, c in hits} for q in queries}

    def _save_files(self, folder):
        raise NotImplementedError

    def _load_files(self, folder, manifest):
        raise NotImplementedError


def test_search_deepens_until_k_documents_and_pools_exactly():
    # doc a: 30 one-word chunks that outscore everything; b and c lower; d never matches
    corpus = Corpus([Doc("a", "", " ".join(["w"] * 30)), Doc("b", "", "w w"), Doc("c", "", "w"), Doc("d", "", "w")])
    scores = {f"a#c{i}": 1.0 - i / 100 for i in range(30)} | {"b#c0": 0.5, "b#c1": 0.6, "c#c0": 0.4, "d#c0": 0.0}
    inner = ScoreTable(scores)
    r = ChunkedRetriever(inner=inner, window=1, stride=1, depth=1)
    r.index(corpus)
    assert r.chunk_count == 34
    run = r.search({"q": "w"}, k=2)
    assert run["q"] == {"a": 1.0, "b": 0.6}
    assert inner.depths == [20, 34]  # 10*k first, then doubled (capped at the chunk count)
    inner.depths.clear()
    run = r.search({"q": "w"}, k=4)  # d matches nothing: the search stops when the inner one runs dry
    assert run["q"] == {"a": 1.0, "b": 0.6, "c": 0.4}
    assert inner.depths == [34]


# ---------------------------------------------------------------- specs


def test_specs():
    assert spec_to_config("chunked:inner=dense,window=200,stride=100") == {
        "kind": "chunked", "inner": "dense", "window": 200, "stride": 100}
    assert spec_to_config("chunked:inner=dense:model=minilm,unit=tokens") == {
        "kind": "chunked", "inner": "dense:model=minilm", "unit": "tokens"}
    # an inner retriever with several options: dotted keys (or JSON) make it a dict
    assert spec_to_config("chunked:inner.kind=dense,inner.model=minilm,inner.index=HNSW32,window=120") == {
        "kind": "chunked", "inner": {"kind": "dense", "model": "minilm", "index": "HNSW32"}, "window": 120}
    r = parse_spec('{"kind": "chunked", "inner": {"kind": "bm25", "k1": 1.2}, "window": 50, "stride": 25}')
    assert r.config["window"] == 50 and r.inner.kind == "bm25" and r.inner.config["k1"] == 1.2
    assert parse_spec("chunked:inner=bm25,window=6").config["stride"] == 3  # default: 50% overlap
    with pytest.raises(ValueError, match=r"unknown option\(s\) index; options of the inner retriever go under inner\."):
        parse_spec("chunked:inner=dense:model=minilm,index=HNSW32")


# ---------------------------------------------------------------- a real inner retriever: BM25, saved and reloaded


@pytest.fixture(scope="module")
def chunked_bm25(tmp_path_factory):
    r = parse_spec("chunked:inner=bm25,window=20,stride=10")
    r.index(long_corpus())
    path = tmp_path_factory.mktemp("idx") / "chunked-bm25"
    r.save(path)
    return r, path


def test_chunks_find_what_truncation_loses(chunked_bm25):
    r, _ = chunked_bm25
    assert r.chunk_count == sum(len(window_starts(len(text.split()), 20, 10)) for _, _, text in LONG_DOCS) == 33
    hit = r.search_one("remote control budget", k=1)[0]
    assert hit.doc_id == "m1" and hit.text.endswith("twelve euros")  # the whole document, not a chunk
    truncated = parse_spec("bm25")
    truncated.index(truncate_corpus(long_corpus(), 20, warn=False)[0])
    assert "m1" not in truncated.search({"q": "remote control budget twelve euros"}, k=3)["q"]


def test_chunked_reloads_in_a_new_process_with_the_same_run(chunked_bm25):
    r, path = chunked_bm25
    expected = r.search(LONG_QUERIES, k=3)
    code = (
        "import json; from retrieval import load_retriever; "
        f"r = load_retriever({str(path)!r}); print(json.dumps([r.kind, r.chunk_count, r.search({LONG_QUERIES!r}, k=3)]))"
    )
    kind, chunks, reloaded = json.loads(run_python(code).strip().splitlines()[-1])
    assert (kind, chunks) == ("chunked", r.chunk_count)
    assert reloaded == {q: pytest.approx(d, rel=1e-6) for q, d in expected.items()}
    assert [list(reloaded[q]) for q in expected] == [[d for d, _ in expected.top(q)] for q in expected]


def test_manifest_and_damaged_inner_file(chunked_bm25, tmp_path):
    _, path = chunked_bm25
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "chunked" and manifest["inner"] == "bm25" and manifest["doc_count"] == 3
    assert manifest["config"] == {"window": 20, "stride": 10, "unit": "words", "tokenizer": None, "depth": 1000}
    assert "inner/docids.txt" in manifest["files"] and any(f.startswith("inner/lucene/") for f in manifest["files"])
    loaded = load_retriever(path)
    assert loaded.inner.path == current_folder(path) / "inner" and loaded.doc_text("m3") == "a short meeting about lunch"
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (current_folder(copy) / "inner" / "docids.txt").write_text("m1#c0\n")
    with pytest.raises(IndexLoadError, match="truncated"):
        load_retriever(copy)


# ---------------------------------------------------------------- a dense inner retriever: token windows


def test_token_windows_fit_the_encoder_and_overlong_windows_warn():
    r = parse_spec("chunked:inner=dense:model=minilm,unit=tokens,window=24,stride=12")
    tokenizer = r.tokenizer()
    chunks = r.chunk_corpus(long_corpus())
    lengths = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(lengths) <= 24 + 1 and min(lengths[:-1]) >= 20  # cut at token offsets; re-tokenising may shift by one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r.index(long_corpus())
    assert not [w for w in caught if "exceed" in str(w.message)]  # windows under the encoder's limit: no warning
    assert r.search_one("speech recognition for the television", k=1)[0].doc_id == "m2"
    small = ChunkedRetriever(inner="dense:model=minilm,max_length=16", window=40, stride=40)
    with pytest.warns(UserWarning, match=r"^\d+ of \d+ chunks exceed 16 tokens; \d+\.\d% of tokens were cut: lower window$"):
        small.index(long_corpus())
