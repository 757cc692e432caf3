"""FMIndex (indexes/fmindex.py) against naive scanning of the documents, plus a hand-worked case and persistence."""
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexes.fmindex import FMIndex
from indexes.manifest import IndexLoadError, write_index_dir
from indexes.manifest import current_folder

B = FMIndex.BOUNDARY
FAST = settings(max_examples=300, deadline=None)


# ---------------------------------------------------------------- the reference: scan every document


def naive_locate(docs, ngram) -> list[tuple[int, int]]:
    """Sorted (doc, offset) of every occurrence inside a document; a BOUNDARY pattern only at offset 0."""
    at_start = len(ngram) > 0 and ngram[0] == B
    body = list(ngram[1:]) if at_start else list(ngram)
    hits = []
    for d, doc in enumerate(docs):
        offsets = [0] if at_start else range(len(doc) - len(body) + 1)
        hits += [(d, off) for off in offsets if list(doc[off : off + len(body)]) == body and off + len(body) <= len(doc)]
    return sorted(hits)


def naive_next_tokens(docs, prefix) -> dict[int, int]:
    body_len = len(prefix) - 1 if prefix and prefix[0] == B else len(prefix)
    if not prefix:
        return dict(Counter(t for doc in docs for t in doc))
    follow = Counter(docs[d][off + body_len] for d, off in naive_locate(docs, prefix) if off + body_len < len(docs[d]))
    return dict(follow)


# ---------------------------------------------------------------- random corpora and patterns


def corpora(alphabet: int = 4):
    return st.lists(st.lists(st.integers(0, alphabet - 1), max_size=12), min_size=1, max_size=6)


@st.composite
def corpus_and_pattern(draw, with_boundary: bool | None = None):
    """A corpus and an n-gram: half the time cut out of a document (so it occurs), otherwise random tokens
    (often absent, may include ids beyond the corpus's largest); optionally prefixed with BOUNDARY."""
    alphabet = draw(st.sampled_from([2, 3, 5]))
    docs = draw(corpora(alphabet))
    source = docs[draw(st.integers(0, len(docs) - 1))]
    if source and draw(st.booleans()):
        start = draw(st.integers(0, len(source) - 1))
        ngram = source[start : start + draw(st.integers(1, 4))]
    else:
        ngram = draw(st.lists(st.integers(0, alphabet + 1), min_size=1, max_size=4))
    boundary = draw(st.booleans()) if with_boundary is None else with_boundary
    if boundary:
        ngram = [B] + ngram[: draw(st.integers(0, len(ngram)))]  # [B] alone too: every document start
    return docs, ngram


@FAST
@given(corpus_and_pattern())
def test_count_and_locate_match_scanning(case):
    docs, ngram = case
    fm = FMIndex.build(docs)
    expected = naive_locate(docs, ngram)
    assert fm.count(ngram) == len(expected)
    assert sorted(fm.locate(ngram)) == expected
    low, high = fm.range(ngram)
    assert high - low == len(expected)


@FAST
@given(corpus_and_pattern(with_boundary=True))
def test_boundary_patterns_match_only_at_document_starts(case):
    docs, ngram = case
    fm = FMIndex.build(docs)
    expected = naive_locate(docs, ngram)
    assert sorted(fm.locate(ngram)) == expected
    assert all(offset == 0 for _, offset in expected)
    assert fm.count([B]) == len(docs)
    assert sorted(fm.locate([B])) == [(d, 0) for d in range(len(docs))]


@FAST
@given(corpus_and_pattern(), st.integers(0, 5))
def test_locate_with_limit_returns_that_many_true_occurrences(case, limit):
    docs, ngram = case
    fm = FMIndex.build(docs)
    expected = set(naive_locate(docs, ngram))
    found = fm.locate(ngram, limit=limit)
    assert len(found) == min(limit, len(expected))
    assert len(set(found)) == len(found) and set(found) <= expected


@FAST
@given(corpus_and_pattern())
def test_next_tokens_are_the_followers_inside_a_document(case):
    docs, ngram = case
    fm = FMIndex.build(docs)
    assert fm.next_tokens(ngram) == naive_next_tokens(docs, ngram)
    assert fm.next_tokens(ngram, row_range=fm.range(ngram)) == naive_next_tokens(docs, ngram)
    prefix = ngram[:-1]  # the shorter prefix too, including the empty one
    assert fm.next_tokens(prefix) == naive_next_tokens(docs, prefix)


@FAST
@given(corpus_and_pattern())
def test_extend_chaining_equals_range(case):
    docs, ngram = case
    fm = FMIndex.build(docs)
    rows = fm.full_range()
    for token in ngram:
        rows = fm.extend(rows, token)
        if rows[0] >= rows[1]:
            rows = (0, 0)
            break
    assert rows == fm.range(ngram)


@FAST
@given(corpora(5))
def test_doc_tokens_counts_and_sizes(docs):
    fm = FMIndex.build(docs)
    assert fm.n_docs == len(docs)
    assert fm.n_tokens == sum(map(len, docs))
    assert fm.count([]) == fm.n_tokens
    assert fm.next_tokens([]) == naive_next_tokens(docs, [])
    for d, doc in enumerate(docs):
        assert fm.doc_tokens(d).tolist() == doc


# ---------------------------------------------------------------- a hand-worked case


def test_hand_worked_case_pins_the_reversed_layout():
    """docs [[5, 6], [6]] -> internal symbols (token + 2; 1 = boundary, 0 = end sentinel):

        forward  F = 1 7 8 1 8            (boundary, doc 0, boundary, doc 1)
        indexed  R = 8 1 8 7 1 0          (F reversed, then the sentinel)
        sorted suffixes of R:  0 | 1 0 | 1 8 7 1 0 | 7 1 0 | 8 1 8 7 1 0 | 8 7 1 0
        SA = 5 4 1 3 0 2,   BWT = R[SA - 1] = 1 7 8 8 0 1

    Rows starting with 8 (token 6) are 4 and 5; their BWT symbols 0 and 1 are not tokens, so nothing
    follows a 6 inside a document. Row 3 (token 5) has BWT 8: a 6 follows the 5.
    """
    fm = FMIndex.build([[5, 6], [6]])
    assert fm.suffix_array.tolist() == [5, 4, 1, 3, 0, 2]
    assert fm.bwt.tolist() == [1, 7, 8, 8, 0, 1]
    assert fm.tokens.tolist() == [5, 6, 6] and fm.doc_starts.tolist() == [0, 2, 3]
    assert fm.range([6]) == (4, 6) and fm.range([5]) == (3, 4) and fm.range([B]) == (1, 3)
    assert fm.range([5, 6]) == (5, 6)  # row 5 is "8 7 1 0": [5, 6] read backwards, one backward-search step from [5]
    assert (fm.count([6]), fm.count([5, 6]), fm.count([6, 6]), fm.count([B, 6]), fm.count([9])) == (2, 1, 0, 1, 0)
    assert fm.next_tokens([5]) == {6: 1} and fm.next_tokens([6]) == {}
    assert fm.next_tokens([]) == {5: 1, 6: 2} and fm.next_tokens([B]) == {5: 1, 6: 1}
    assert sorted(fm.locate([6])) == [(0, 1), (1, 0)] and fm.locate([B, 6]) == [(1, 0)]


def test_docstring_example():
    fm = FMIndex.build([[5, 6, 7], [6, 7, 8]])
    assert (fm.count([6, 7]), fm.next_tokens([6]), fm.locate([7, 8])) == (2, {7: 2}, [(1, 1)])


def test_empty_documents_and_empty_corpus():
    fm = FMIndex.build([[], [3], [], []])
    assert sorted(fm.locate([B])) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert fm.locate([B, 3]) == [(1, 0)] and fm.next_tokens([B]) == {3: 1}
    nothing = FMIndex.build([])
    assert (nothing.n_docs, nothing.count([]), nothing.count([1]), nothing.next_tokens([])) == (0, 0, 0, {})
    only_empty = FMIndex.build([[], []])
    assert only_empty.count([B]) == 2 and only_empty.next_tokens([B]) == {} and only_empty.next_tokens([]) == {}


# ---------------------------------------------------------------- bad input


def test_negative_token_id_names_the_document():
    with pytest.raises(ValueError, match="document 2"):
        FMIndex.build([[1, 2], [3], [4, -5]])
    with pytest.raises(ValueError, match="document 0"):
        FMIndex.build([[[1, 2]]])  # not a flat sequence
    with pytest.raises(ValueError, match="document 1: token ids must be integers"):
        FMIndex.build([[1, 2], [1.7]])


def test_bad_patterns_and_documents_are_refused():
    fm = FMIndex.build([[1, 2, 3]])
    with pytest.raises(ValueError, match="BOUNDARY"):
        fm.count([1, B])
    with pytest.raises(ValueError, match="BOUNDARY"):
        fm.extend(fm.range([1]), B)  # the step-by-step path refuses it too
    with pytest.raises(ValueError, match="negative"):
        fm.count([-2])  # would otherwise alias the end sentinel
    with pytest.raises(ValueError, match="non-empty"):
        fm.locate([])
    with pytest.raises(IndexError, match="out of range"):
        fm.doc_tokens(1)


# ---------------------------------------------------------------- save and load

DOCS = [[3, 1, 4, 1, 5], [], [9, 2, 6, 5, 3, 5], [1, 4, 1], [5, 3, 5, 8, 9]]
PATTERNS = [[], [1], [5], [1, 4], [3, 5], [5, 3, 5], [4, 1, 5], [7], [B], [B, 1], [B, 5, 3], [9]]


def answers(fm: FMIndex) -> list:
    out = [fm.n_docs, fm.n_tokens, [fm.doc_tokens(d).tolist() for d in range(fm.n_docs)]]
    for p in PATTERNS:
        out += [fm.count(p), fm.range(p), fm.next_tokens(p), sorted(fm.locate(p)) if p else None]
    return out


def test_save_then_load_memory_mapped_gives_the_same_answers(tmp_path):
    fm = FMIndex.build(DOCS)
    manifest = fm.save(tmp_path / "fm", corpus="pi")
    assert manifest["kind"] == "fmindex" and manifest["n_docs"] == 5 and manifest["corpus"] == "pi"
    assert set(manifest["files"]) == {f"{name}.npy" for name in FMIndex.ARRAYS}
    loaded = FMIndex.load(tmp_path / "fm")
    assert all(isinstance(getattr(loaded, name), np.memmap) for name in FMIndex.ARRAYS)
    assert answers(loaded) == answers(fm)
    in_memory = FMIndex.load(tmp_path / "fm", mmap=False)
    assert not isinstance(in_memory.bwt, np.memmap) and answers(in_memory) == answers(fm)
    assert loaded.nbytes() == fm.nbytes()


def test_a_built_index_makes_its_wavelet_matrix_at_the_first_query_and_a_loaded_one_at_load(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 40, size=int(rng.integers(0, 60))).tolist() for _ in range(80)]
    fm = FMIndex.build(docs)
    assert fm._wavelet is None  # building and saving never need it
    fm.save(tmp_path / "fm")
    assert fm._wavelet is None
    patterns = [docs[i][j : j + 2] for i in range(0, 80, 4) for j in range(0, 4) if len(docs[i]) > j + 1]
    with ThreadPoolExecutor(8) as pool:  # first queries from many threads at once: one matrix, right answers
        counts = list(pool.map(fm.count, patterns))
    assert counts == [len(naive_locate(docs, p)) for p in patterns]
    assert fm._wavelet is not None
    loaded = FMIndex.load(tmp_path / "fm")
    assert loaded._wavelet is not None and [loaded.count(p) for p in patterns] == counts


def test_memory_mapped_load_keeps_the_wavelet_matrix_out_of_anonymous_memory(tmp_path):
    """A memory-mapped load asks wavelet-matrix for its on-disk layout: the rank structure then lives in
    file-backed pages the kernel can drop, so anonymous memory (RssAnon) barely grows, while an in-memory
    load grows it by the wavelet matrix (about 4 bytes per symbol here). Measured in a fresh process."""
    from conftest import run_python

    rng = np.random.default_rng(0)
    FMIndex.build([rng.integers(0, 30_000, 4_000) for _ in range(1_000)]).save(tmp_path / "fm")
    code = (
        "import json\nfrom indexes.fmindex import FMIndex\n"
        "def anon():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')) * 1024\n"
        "before = anon()\n"
        f"mapped = FMIndex.load({str(tmp_path / 'fm')!r}, mmap=True, verify=False)\n"
        "middle = anon()\n"
        f"in_ram = FMIndex.load({str(tmp_path / 'fm')!r}, mmap=False, verify=False)\n"
        "after = anon() - in_ram.nbytes()\n"  # the arrays read into RAM are not the wavelet matrix
        "print(json.dumps([middle - before, after - middle, mapped.wavelet_on_disk, in_ram.wavelet_on_disk]))"
    )
    mapped_growth, in_ram_growth, mapped_on_disk, in_ram_on_disk = json.loads(run_python(code))
    assert mapped_on_disk and not in_ram_on_disk
    assert in_ram_growth > 8e6, in_ram_growth  # 4M symbols of ~15 bits with rank directories
    assert mapped_growth < in_ram_growth / 4, (mapped_growth, in_ram_growth)


def test_truncated_or_changed_file_is_refused(tmp_path):
    FMIndex.build(DOCS).save(tmp_path / "fm")
    path = current_folder(tmp_path / "fm") / "bwt.npy"
    original = path.read_bytes()
    path.write_bytes(original[:-4])
    with pytest.raises(IndexLoadError, match="bwt.npy: .* truncated"):
        FMIndex.load(tmp_path / "fm")
    changed = bytearray(original)
    changed[-1] ^= 1
    path.write_bytes(bytes(changed))
    with pytest.raises(IndexLoadError, match="altered"):
        FMIndex.load(tmp_path / "fm")


def test_interrupted_save_leaves_nothing_that_loads(tmp_path, monkeypatch):
    fm = FMIndex.build(DOCS)
    real_save, calls = np.save, []

    def save_then_interrupt(file, arr, *args, **kwargs):
        calls.append(file)
        real_save(file, arr, *args, **kwargs)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fm.save(tmp_path / "fm")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the partial folder
    with pytest.raises(IndexLoadError, match="no such index folder"):
        FMIndex.load(tmp_path / "fm")

    monkeypatch.setattr(np, "save", real_save)
    fm.save(tmp_path / "fm")
    calls.clear()
    monkeypatch.setattr(np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        FMIndex.build([[7, 7]]).save(tmp_path / "fm", overwrite=True)
    assert answers(FMIndex.load(tmp_path / "fm")) == answers(fm)  # the old index survives a failed resave


def test_another_kind_of_index_is_refused(tmp_path):
    write_index_dir(tmp_path / "other", lambda folder: (folder / "x.faiss").write_bytes(b"x") and {"kind": "faiss"})
    with pytest.raises(IndexLoadError, match="not an FM-index"):
        FMIndex.load(tmp_path / "other")
