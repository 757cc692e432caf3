"""BM25 (Lucene through pyserini) under bad options, odd queries, threads, Ctrl-C and kill -9; and the
common search checks (k, blank queries) every retriever kind shares."""
import json
import os
import random
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from conftest import REPO, TINY_QUERIES

from retrieval import Corpus, Doc, build_retriever, load_corpus, load_retriever, parse_spec
from retrieval.errors import SpecError

QUERIES = list(TINY_QUERIES.values()) + ["vitamin deficiency bones", "chess board game", "volcanic ash"]


@pytest.fixture(scope="module")
def corpus(tiny_beir_session):
    return load_corpus(tiny_beir_session)


@pytest.fixture(scope="module")
def bm25(corpus, tmp_path_factory):
    """A BM25 index built, saved and loaded again (as a server would hold it)."""
    built = build_retriever("bm25")
    built.index(corpus)
    path = tmp_path_factory.mktemp("bm25") / "index"
    built.save(path)
    return load_retriever(path)


@pytest.fixture(scope="module")
def dense(corpus):
    retriever = parse_spec("dense:model=minilm,index=Flat")
    retriever.index(corpus)
    return retriever


def made_up_words(n: int) -> list[str]:
    rng = random.Random(0)
    words = set()
    while len(words) < n:
        words.add("".join(rng.choices(string.ascii_lowercase, k=10)))
    return sorted(words)


# ------------------------------------------------------------ options and arguments


@pytest.mark.parametrize("options, message", [
    ({"k1": "abc"}, "bm25: k1 must be a number, got 'abc'"),
    ({"k1": -5}, "bm25: k1 must be a finite number >= 0, got -5"),
    ({"k1": float("inf")}, "bm25: k1 must be a finite number >= 0, got inf"),
    ({"b": 1.5}, "bm25: b must be between 0 and 1, got 1.5"),
    ({"b": -0.1}, "bm25: b must be between 0 and 1, got -0.1"),
    ({"b": float("nan")}, "bm25: b must be between 0 and 1, got nan"),
    ({"b": None}, "bm25: b must be a number, got None"),
    ({"k1": True}, "bm25: k1 must be a number, got True"),
])
def test_bad_bm25_parameters_are_refused_by_the_constructor(options, message):
    with pytest.raises(SpecError) as err:
        build_retriever("bm25", **options)
    assert str(err.value) == message


def test_a_bad_bm25_spec_fails_before_any_indexing():
    with pytest.raises(SpecError, match="k1 must be a finite number >= 0, got -5"):
        parse_spec("bm25:k1=-5")
    with pytest.raises(SpecError, match="k1 must be a number, got 'abc'"):
        parse_spec("bm25:k1=abc")
    assert build_retriever("bm25", k1=0, b=1).config == {"k1": 0.0, "b": 1.0, "fields": "flat"}


@pytest.mark.parametrize("k", [0, -1, 2.5, "10", None, True])
@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_k_must_be_a_positive_integer(request, kind, k):
    retriever = request.getfixturevalue(kind)
    with pytest.raises(SpecError, match="k must be a positive integer"):
        retriever.search(TINY_QUERIES, k=k)
    with pytest.raises(SpecError, match="k must be a positive integer"):
        retriever.search_one("what causes scurvy", k=k)


# ------------------------------------------------------------ blank queries


@pytest.mark.parametrize("kind", ["bm25", "dense", "hybrid"])
def test_blank_queries_get_no_hits_and_never_reach_the_engine(request, corpus, kind):
    if kind == "hybrid":
        retriever = parse_spec("bm25+dense")
        retriever.index(corpus)
    else:
        retriever = request.getfixturevalue(kind)
    seen = []
    engine = retriever._search

    def spy(queries, k):
        seen.append(dict(queries))
        return engine(queries, k)

    retriever._search = spy
    try:
        run = retriever.search({"empty": "", "blank": " \t\n ", "q1": "what causes scurvy"}, k=3)
        assert list(run) == ["empty", "blank", "q1"]
        assert run["empty"] == {} and run["blank"] == {} and next(iter(run["q1"])) == "d2"
        assert seen == [{"q1": "what causes scurvy"}]
        assert retriever.search_one("   ", k=3) == [] and retriever.search({"only": ""}, k=3) == {"only": {}}
        assert len(seen) == 1  # nothing to search: the engine is not called at all
    finally:
        del retriever._search


# ------------------------------------------------------------ queries Lucene cannot take


def test_a_query_with_1500_distinct_terms_does_not_lose_the_batch(bm25):
    long_query = " ".join(made_up_words(1500)) + " scurvy"
    run = bm25.search({"long": long_query, "q1": "what causes scurvy"}, k=3)
    assert list(run["long"]) == ["d2"]
    assert run["q1"] == bm25.search({"q1": "what causes scurvy"}, k=3)["q1"] and "d2" in run["q1"]


def test_a_query_lucene_fails_on_gets_no_hits_and_a_warning_the_others_keep_theirs(bm25):
    """Lucene's clause limit lowered to 8 makes the 20-term query fail for real (TooManyClauses)."""
    from jnius import autoclass

    from indexes.lucene_index import MAX_CLAUSES

    expected = bm25.search(TINY_QUERIES, k=3)
    index_searcher = autoclass("org.apache.lucene.search.IndexSearcher")
    index_searcher.setMaxClauseCount(8)
    try:
        with pytest.warns(UserWarning, match="BM25 query 'too-long' failed in Lucene"):
            run = bm25.search({**TINY_QUERIES, "too-long": " ".join(made_up_words(20))}, k=3)
    finally:
        index_searcher.setMaxClauseCount(MAX_CLAUSES)
    assert run["too-long"] == {}
    assert {qid: run[qid] for qid in TINY_QUERIES} == expected


# ------------------------------------------------------------ threads


@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_search_one_from_four_threads_equals_sequential_search(request, kind):
    retriever = request.getfixturevalue(kind)
    expected = {q: retriever.search_one(q, k=5) for q in QUERIES}
    rounds = 60 if kind == "bm25" else 8
    start = threading.Barrier(4)
    got, errors = [], []

    def work():
        start.wait()
        try:
            for _ in range(rounds):
                got.extend((q, retriever.search_one(q, k=5)) for q in QUERIES)
        except BaseException as err:  # noqa: BLE001  (reported below, with the thread's error)
            errors.append(repr(err))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 4 * rounds * len(QUERIES)
    for query, hits in got:
        assert [h.doc_id for h in hits] == [h.doc_id for h in expected[query]], query
        assert [h.score for h in hits] == pytest.approx([h.score for h in expected[query]], abs=1e-6)
        assert [h.text for h in hits] == [h.text for h in expected[query]]


# ------------------------------------------------------------ temporary folders


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder moved into tmp_path, so no other process's /tmp is touched."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_build_names_its_temp_folder_by_pid_and_removes_dead_processes_leftovers(private_tmp, corpus):
    dead = private_tmp / f"dengen-bm25-{dead_pid()}-x1y2"
    (dead / "lucene").mkdir(parents=True)
    (dead / "lucene" / "_0.cfs").write_bytes(b"half an index")
    alive = [private_tmp / f"dengen-bm25-{os.getppid()}-a1b2", private_tmp / f"dengen-bm25-{os.getpid()}-c3d4"]
    others = [private_tmp / "dengen-bm25-k2j3h4g5", private_tmp / "something-else"]  # not named by a pid: not ours to judge
    for folder in alive + others:
        folder.mkdir()

    retriever = build_retriever("bm25")
    retriever.index(corpus)
    assert not dead.exists()
    assert all(folder.exists() for folder in alive + others)
    mine = retriever._workdir.name
    assert os.path.dirname(mine) == str(private_tmp)
    assert os.path.basename(mine).startswith(f"dengen-bm25-{os.getpid()}-")
    assert retriever.search_one("what causes scurvy", k=1)[0].doc_id == "d2"
    del retriever
    assert not os.path.exists(mine)  # removed with the retriever


def test_a_killed_process_not_yet_reaped_counts_as_dead():
    from retrieval.sparse.bm25 import _process_exists

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and _process_exists(child.pid):  # a zombie until wait(): dead all the same
        time.sleep(0.05)
    assert not _process_exists(child.pid)
    child.wait()
    assert _process_exists(os.getpid())


class InterruptedCorpus(Corpus):
    """Ctrl-C arrives while the documents stream into Lucene (after the first batches were added)."""

    def __iter__(self):
        for i, doc in enumerate(self.docs):
            if i == 2500:
                raise KeyboardInterrupt
            yield doc


def test_an_interrupted_build_removes_its_half_built_index(private_tmp):
    docs = [Doc(f"d{i}", "", " ".join(made_up_words(3)) + f" doc{i}") for i in range(3000)]
    retriever = build_retriever("bm25")
    with pytest.raises(KeyboardInterrupt):
        retriever.index(InterruptedCorpus(docs))
    assert os.listdir(private_tmp) == []
    assert retriever.doc_count == 0 and retriever._searcher is None


# ------------------------------------------------------------ real signals (slow)


def write_generated_corpus(folder, n: int):
    folder.mkdir()
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    with open(folder / "corpus.jsonl", "w") as out:
        for i in range(n):
            out.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(vocab, k=40))}) + "\n")
    return folder


def start_cli_build(tmp_path, private_tmp):
    """`dengen index build` of 300k generated docs with BM25; returns (process, --out) once Lucene writes.
    Big enough that the build outlasts a loaded machine's delay before the test signals it (60k docs now
    index in ~3 s: under load the whole build could end first)."""
    data = write_generated_corpus(tmp_path / "gen", 300_000)
    out = tmp_path / "index"
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "index", "build", "--data", str(data), "--retriever",
                             "bm25", "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list(private_tmp.glob("dengen-bm25-*/lucene")):  # the IndexWriter exists: documents are going in
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, out


@pytest.mark.slow
def test_ctrl_c_stops_a_cli_bm25_build_and_leaves_nothing(tmp_path, private_tmp):
    proc, out = start_cli_build(tmp_path, private_tmp)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    assert time.monotonic() - sent < 10, "the build ignored Ctrl-C"
    assert proc.returncode != 0 and "indexed" not in stdout, stderr[-2000:]
    assert not out.exists()
    assert list(private_tmp.glob("dengen-bm25-*")) == []


@pytest.mark.slow
def test_the_next_build_removes_what_a_killed_build_left(tmp_path, private_tmp, corpus):
    proc, _ = start_cli_build(tmp_path, private_tmp)
    proc.kill()  # SIGKILL: nothing in the process can clean up
    proc.communicate()
    [left] = private_tmp.glob("dengen-bm25-*")
    assert left.name.startswith(f"dengen-bm25-{proc.pid}-")
    build_retriever("bm25").index(corpus)
    assert not left.exists()
