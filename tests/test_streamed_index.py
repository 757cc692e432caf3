"""Indexes beyond memory: a corpus streamed from disk, faiss built from chunks, IVF lists searched from disk."""
import gzip
import hashlib
import json

import numpy as np
import pytest
from conftest import assert_same_run

import retrieval.dense.retriever as dense_module
from indexes.faiss_index import build_index, build_index_streamed, load_index, save_index
from retrieval import build_retriever, load_corpus, load_retriever
from retrieval.data import CorpusStream, write_corpus
from retrieval.errors import DataError


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_stream_reads_what_load_corpus_reads(tiny_beir, tmp_path, name):
    corpus = load_corpus(tiny_beir)
    write_corpus(corpus, tmp_path / name)
    stream = load_corpus(tmp_path / name, stream=True)
    assert isinstance(stream, CorpusStream)
    assert len(stream) == len(corpus) and stream.ids == corpus.ids
    assert list(stream) == list(corpus) and list(stream) == list(corpus)  # every pass reads the file again
    assert stream[corpus.ids[5]] == corpus[corpus.ids[5]]  # seeks to the line
    assert [len(b) for b in stream.batches(3)] == [3, 3, 2]
    assert "d2" in stream and "nope" not in stream


def test_stream_reads_tsv_with_offsets(tmp_path):
    path = tmp_path / "corpus.tsv"
    path.write_text("id\ttitle\ttext\na\tT1\tfirst text\n\nb\tT2\tsecond ünïcode text\n", encoding="utf-8")
    stream = load_corpus(path, stream=True)
    assert stream.ids == ["a", "b"]
    assert stream["b"].text == "second ünïcode text" and stream["a"].title == "T1"


def test_stream_refuses_bad_lines_when_opened(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"corpus.jsonl, line 2, field 'text'"):
        load_corpus(path, stream=True)
    with gzip.open(tmp_path / "dup.jsonl.gz", "wt") as out:
        out.write('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match="line 2.*duplicate id 'a' \\(first on line 1\\)"):
        load_corpus(tmp_path / "dup.jsonl.gz", stream=True)


def test_streamed_dense_index_equals_in_memory(tiny_beir, tmp_path, monkeypatch):
    monkeypatch.setattr(dense_module, "STREAM_CHUNK", 3)  # several chunks even on 8 documents
    corpus = load_corpus(tiny_beir)
    queries = {"q1": "scurvy vitamin", "q2": "heart disease", "q3": "sleep"}
    memory = build_retriever("dense", model="minilm")
    memory.index(corpus)
    streamed = build_retriever("dense", model="minilm")
    streamed.index(load_corpus(tiny_beir, stream=True))
    assert_same_run(memory.search(queries, k=8), streamed.search(queries, k=8))
    assert streamed.search_one("scurvy vitamin", k=1)[0].text == corpus["d2"].full_text  # text by offset
    streamed.save(tmp_path / "index")
    assert_same_run(memory.search(queries, k=8), load_retriever(tmp_path / "index").search(queries, k=8))
    with pytest.raises(ValueError, match="streamed corpus"):
        streamed.index(load_corpus(tiny_beir, stream=True), shards=2)


def test_chunked_build_trains_on_the_first_vectors():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    chunks = (vectors[i : i + 500] for i in range(0, 3000, 500))
    streamed = build_index_streamed(chunks, "IVF16,Flat", train_size=1000)
    reference = build_index(vectors[:1000], "IVF16,Flat")  # trained on the same first 1,000 vectors
    reference.add(vectors[1000:])
    assert streamed.ntotal == 3000
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    streamed.nprobe = reference.nprobe = 4
    np.testing.assert_array_equal(streamed.search(queries, 10)[1], reference.search(queries, 10)[1])
    # the training sample ends inside a chunk: the chunk's rest is added after training
    uneven = build_index_streamed((vectors[i : i + 700] for i in range(0, 3000, 700)), "IVF16,Flat", train_size=1000)
    uneven.nprobe = 4
    assert uneven.ntotal == 3000
    np.testing.assert_array_equal(uneven.search(queries, 10)[1], reference.search(queries, 10)[1])
    flat = build_index_streamed((vectors[i : i + 700] for i in range(0, 3000, 700)), "Flat")
    np.testing.assert_array_equal(flat.search(queries, 10)[1], build_index(vectors).search(queries, 10)[1])
    with pytest.raises(ValueError, match="no vectors"):
        build_index_streamed(iter([]), "Flat")


def test_ivf_lists_are_searched_from_disk_without_changing_the_file(tmp_path):
    import faiss

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    queries = rng.standard_normal((25, 32)).astype(np.float32)
    for factory in ("IVF32,PQ8", "IVF32,Flat"):
        index = build_index(vectors, factory)
        if "PQ" in factory:  # the second, polysemous training of the codebooks is skipped (never used)
            assert faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training is False
        index.nprobe = 8
        path = tmp_path / f"{factory.replace(',', '-')}.faiss"
        save_index(index, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        loaded = load_index(path, mmap=True, inverted_lists=True)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded).invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists)
        loaded.nprobe = 8
        np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_saved_ivf_pq_retriever_reloads_with_disk_lists(tiny_beir, tmp_path):
    import faiss

    corpus = load_corpus(tiny_beir)
    r = build_retriever("dense", model="minilm", index="IVF2,Flat", search_params={"nprobe": 2})
    r.index(corpus)
    r.save(tmp_path / "ivf")
    loaded = load_retriever(tmp_path / "ivf")
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded._faiss).invlists), faiss.OnDiskInvertedLists)
    queries = {"q": "scurvy vitamin"}
    assert_same_run(r.search(queries, k=5), loaded.search(queries, k=5))
    assert json.loads((tmp_path / "ivf" / "manifest.json").read_text())["config"]["index"] == "IVF2,Flat"
