#!/usr/bin/env python
"""FM-index benchmark: what `indexes.fmindex.FMIndex` costs to build, store and load, and how fast it answers.

Two corpora of MiniLM token ids:
  (a) SciFact: title + " [SEP] " + text of every document, MiniLM's WordPiece tokenizer, no special tokens;
  (b) synthetic (default 10M tokens): documents of 100-300 tokens (uniform, mean ~200) whose ids are drawn
      i.i.d. from SciFact's token stream (its unigram distribution), seeded. It has SciFact's vocabulary
      and token frequencies but no phrase structure, so long n-grams are mostly unique.

SciFact also from its text: tokenising timed two ways (the transformers call, `encode_batch_fast`),
interleaved, and the all-in rate (faster tokenising + build). And SciFact as SEAL indexes it (`--seal`, on by
default): title + eos + text of every document with the default key model's tokenizer (SmolLM2's byte-level
BPE), through `SEALRetriever.doc_streams`, timed with the tiktoken twin (`KeyModel.tokens_batch`) and with
the Hugging Face tokenizer, interleaved; then `FMIndex.build`, the wavelet matrix (built at the first query)
and the save, each timed, and the all-in rates from text.
Per corpus: build seconds and tokens/s (the saved arrays; the wavelet matrix, made at the first query, timed
apart), peak RSS added by building, bytes on disk and per token, load
seconds (memory-map + wavelet-matrix rebuild, and the manifest checksum pass separately), and the latency
of count(), next_tokens() and locate(limit=100) for n-grams of 1, 2, 4 and 8 tokens sampled from the corpus
(so every query occurs at least once). Baseline in the same run: count() by naive numpy scanning of the
token stream, on fewer queries since it is slow; its counts must equal the index's.

    .venv/bin/python scripts/bench_fmindex.py                 # both corpora, ~1-2 min on 2 cores
    .venv/bin/python scripts/bench_fmindex.py --skip-10m      # SciFact only
    .venv/bin/python scripts/bench_fmindex.py --tokens 2000000  # a smaller synthetic corpus
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from bench_common import machine_info, minilm_tokenizer, timed, write_json
from indexes.fmindex import FMIndex
from indexes.manifest import folder_bytes, read_manifest
from retrieval.data import load_corpus, shared_data

NGRAM_LENGTHS = (1, 2, 4, 8)
LOCATE_LIMIT = 100
SEAL_CHUNK = 1024  # documents per tokenizer call, as `SEALRetriever.doc_streams` tokenises them
PACKAGES = ("numpy", "pydivsufsort", "wavelet-matrix", "transformers", "tokenizers", "tiktoken", "dengen")


# ---------------------------------------------------------------- machine, memory and timing helpers


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def peak_rss_delta(fn: Callable[[], object]) -> tuple[object, float, int | None, str]:
    """Run `fn`; return (result, seconds, bytes by which the peak RSS rose above the RSS before, method).

    Linux lets a process reset its own peak (VmHWM) by writing 5 to /proc/self/clear_refs, so the peak is
    that of `fn` alone; without that, ru_maxrss only shows a rise above the process's earlier peak."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        method = "VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before"
        before = _status_kib("VmRSS")
    except OSError:
        method = "rise of ru_maxrss (a lower bound: only what exceeds the earlier peak shows)"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    after = _status_kib("VmHWM") if before is not None and method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    delta = None if before is None or after is None else max(0, after - before) * 1024
    return result, seconds, delta, method


def latency_us(call: Callable[[object], object], queries: list) -> dict:
    """Mean, median and p95 microseconds of `call(q)` over `queries` (after one warm-up pass over a few).
    The median is there because other processes on a small machine stall single calls now and then."""
    for q in queries[:20]:
        call(q)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        call(q)
        times[i] = time.perf_counter() - start
    us = times * 1e6
    return {"mean_us": float(us.mean()), "p50_us": float(np.median(us)), "p95_us": float(np.percentile(us, 95)), "n": len(queries)}


# ---------------------------------------------------------------- corpora


def scifact_token_docs(data: Path, rounds: int = 3) -> tuple[list[np.ndarray], dict]:
    """SciFact's token ids, and what tokenising them costs two ways, interleaved `rounds` times (best kept):
    the transformers call and the fast tokenizer's `encode_batch_fast` (no offsets) a SEAL_CHUNK of documents
    a call, as SEAL's indexing does (`KeyModel.tokens_batch`); both must give the same ids."""
    corpus = load_corpus(data)
    tokenizer = minilm_tokenizer()
    texts = [f"{doc.title} [SEP] {doc.text}" for doc in corpus]
    backend = tokenizer.backend_tokenizer
    times = {"transformers_call": [], "encode_batch_fast": []}
    for _ in range(rounds):
        ids, seconds = timed(lambda: tokenizer(texts, add_special_tokens=False)["input_ids"])
        times["transformers_call"].append(seconds)
        fast, seconds = timed(lambda: [e.ids for start in range(0, len(texts), SEAL_CHUNK)
                                       for e in backend.encode_batch_fast(texts[start : start + SEAL_CHUNK], add_special_tokens=False)])
        times["encode_batch_fast"].append(seconds)
        if fast != ids:
            raise AssertionError("encode_batch_fast and the transformers call tokenise SciFact differently")
    docs = [np.asarray(x, dtype=np.int32) for x in ids]
    return docs, {
        "name": "scifact",
        "source": str(data),
        "text": 'title + " [SEP] " + text, MiniLM tokenizer (model_path("minilm")), add_special_tokens=False, no truncation',
        "vocab_size": tokenizer.vocab_size,
        "tokenize_s": min(times["transformers_call"]),
        "tokenize_fast_s": min(times["encode_batch_fast"]),
        "tokenize_rounds_s": times,
    }


def synthetic_docs(pool: np.ndarray, n_tokens: int, seed: int) -> tuple[list[np.ndarray], dict]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(100, 301, size=n_tokens // 100 + 1)  # more than enough documents
    ends = np.cumsum(lengths)
    n_docs = int(np.searchsorted(ends, n_tokens)) + 1  # the last one is cut so the total is exactly n_tokens
    stream = pool[rng.integers(0, pool.size, size=n_tokens)]
    docs = np.split(stream, ends[: n_docs - 1])
    return docs, {
        "name": f"synthetic-{n_tokens // 1_000_000}M" if n_tokens % 1_000_000 == 0 else f"synthetic-{n_tokens}",
        "source": "token ids drawn i.i.d. (with replacement) from the SciFact token stream above, i.e. its unigram distribution",
        "doc_lengths": "uniform integers in [100, 300], mean ~200; the last document is cut to hit the token total",
        "seed": seed,
    }


def sample_ngrams(docs: list[np.ndarray], length: int, n: int, rng: np.random.Generator) -> list[list[int]]:
    """`n` n-grams cut at random places out of random documents long enough to hold them (so each occurs)."""
    long_enough = [d for d in docs if d.size >= length]
    picks = rng.integers(0, len(long_enough), size=n)
    out = []
    for p in picks:
        doc = long_enough[p]
        start = int(rng.integers(0, doc.size - length + 1))
        out.append(doc[start : start + length].tolist())
    return out


def naive_counter(docs: list[np.ndarray]) -> Callable[[list[int]], int]:
    """count() by scanning: the documents back to back with -1 between them (no match crosses it), one
    vectorised comparison per n-gram position."""
    stream = np.full(sum(d.size for d in docs) + len(docs), -1, dtype=np.int32)
    pos = 1
    for d in docs:
        stream[pos : pos + d.size] = d
        pos += d.size + 1

    def count(ngram: list[int]) -> int:
        width = stream.size - len(ngram) + 1
        mask = stream[:width] == ngram[0]
        for i, token in enumerate(ngram[1:], 1):
            mask &= stream[i : i + width] == token
        return int(mask.sum())

    return count


def seal_scifact(data: Path, workdir: Path, rounds: int = 3) -> dict:
    """SciFact as `SEALRetriever` indexes it with its default key model: `doc_streams` (title + eos + text,
    1,024 documents a tokenizer call) timed with the tiktoken twin and with the Hugging Face tokenizer,
    interleaved `rounds` times (best kept; the ids must be equal), then build, wavelet matrix and save."""
    from retrieval.generative.seal import SEALRetriever

    corpus = load_corpus(data)
    seal = SEALRetriever()
    seal.decide_titles(corpus)
    km = seal.keymodel
    km.tokens_batch(["warm up"])  # finds the tiktoken twin (timed below)
    twin = km._tiktoken
    if not twin:
        raise SystemExit(f"{km.base}: its tokenizer has no tiktoken twin; nothing to compare")
    _, twin_setup_s = timed(lambda: type(twin).for_tokenizer(km.tokenizer.backend_tokenizer))
    times = {"huggingface": [], "tiktoken": []}
    for _ in range(rounds):
        km._tiktoken = False
        slow, seconds = timed(lambda: list(seal.doc_streams(corpus)))
        times["huggingface"].append(seconds)
        km._tiktoken = twin
        docs, seconds = timed(lambda: list(seal.doc_streams(corpus)))
        times["tiktoken"].append(seconds)
        if docs != slow:
            raise AssertionError("tiktoken and the Hugging Face tokenizer give SEAL different token streams")
    fm, build_s = timed(lambda: FMIndex.build(docs))
    _, wavelet_s = timed(lambda: fm._wm)
    _, save_s = timed(lambda: fm.save(workdir / "seal-scifact", corpus="scifact (SEAL streams)"))
    n = fm.n_tokens
    tokenize_s, hf_s = min(times["tiktoken"]), min(times["huggingface"])
    rate = lambda *seconds: n / sum(seconds)
    return {
        "name": "scifact-seal", "source": str(data), "key_model": km.base, "docs": len(corpus), "tokens": n,
        "text": "SEALRetriever.doc_streams: title + [eos] + text per document (titles: auto), 1,024 documents a tokenizer call",
        "tokenize_rounds_s": times, "tokenize_huggingface_s": hf_s, "tokenize_tiktoken_s": tokenize_s,
        "tiktoken_setup_s": twin_setup_s, "build_s": build_s, "wavelet_s": wavelet_s, "save_s": save_s,
        "tokens_per_s": {
            "tokenize_huggingface": rate(hf_s), "tokenize_tiktoken": rate(tokenize_s), "build": rate(build_s),
            "all_in": rate(tokenize_s, build_s), "all_in_saved": rate(tokenize_s, build_s, save_s),
            "all_in_queryable": rate(tokenize_s, build_s, wavelet_s),
            "all_in_huggingface": rate(hf_s, build_s),
        },
        "all_in_measures": "all_in: tokenising (tiktoken) + FMIndex.build; _saved adds the save, _queryable the wavelet "
                           "matrix instead; _huggingface: the Hugging Face tokenizer + build",
    }


# ---------------------------------------------------------------- one corpus


def bench_corpus(docs: list[np.ndarray], info: dict, args: argparse.Namespace, workdir: Path) -> dict:
    n_tokens = int(sum(d.size for d in docs))
    print(f"\n{info['name']}: {len(docs)} docs, {n_tokens} tokens; building ...", flush=True)
    fm, build_s, build_rss, rss_method = peak_rss_delta(lambda: FMIndex.build(docs))
    _, wavelet_s = timed(lambda: fm._wm)  # what the first query of a just-built index waits for
    folder = workdir / info["name"]
    _, save_s = timed(lambda: fm.save(folder, corpus=info["name"]))
    disk = folder_bytes(folder)
    del fm

    _, verify_s = timed(lambda: read_manifest(folder, verify=True))
    fm, load_s = timed(lambda: FMIndex.load(folder, verify=False))  # mmap the .npy files + rebuild the wavelet matrix
    assert isinstance(fm.bwt, np.memmap)

    rng = np.random.default_rng(args.seed)
    naive = naive_counter(docs)
    queries = []
    for length in NGRAM_LENGTHS:
        ngrams = sample_ngrams(docs, length, args.queries, rng)
        ranges = [fm.range(g) for g in ngrams]
        counts = [high - low for low, high in ranges]
        naive_sample = ngrams[: args.naive_queries]
        naive_counts = [naive(g) for g in naive_sample]
        if naive_counts != counts[: len(naive_sample)]:
            raise AssertionError(f"{info['name']}: FM-index and scanning disagree on a {length}-gram count")
        row = {
            "ngram_len": length,
            "mean_count": float(np.mean(counts)),
            "median_count": float(np.median(counts)),
            "count": latency_us(fm.count, ngrams),
            "next_tokens": latency_us(fm.next_tokens, ngrams),
            "locate_limit100": latency_us(lambda g: fm.locate(g, limit=LOCATE_LIMIT), ngrams),
            "naive_count": latency_us(naive, naive_sample),
        }
        row["count_speedup_vs_naive_p50"] = row["naive_count"]["p50_us"] / row["count"]["p50_us"]
        row["mean_next_tokens_distinct"] = float(np.mean([len(fm.next_tokens(g, row_range=r)) for g, r in zip(ngrams[:200], ranges[:200])]))
        queries.append(row)

    all_in = {}
    if "tokenize_fast_s" in info:  # text in, index out: tokenising (the faster way) + building
        all_in = {"all_in_s": info["tokenize_fast_s"] + build_s,
                  "all_in_tokens_per_s": n_tokens / (info["tokenize_fast_s"] + build_s),
                  "tokenize_fast_tokens_per_s": n_tokens / info["tokenize_fast_s"],
                  "tokenize_tokens_per_s": n_tokens / info["tokenize_s"]}
    return {
        **info,
        **all_in,
        "docs": len(docs),
        "tokens": n_tokens,
        "build_s": build_s,
        "build_tokens_per_s": n_tokens / build_s,
        "build_measures": "FMIndex.build: token arrays, suffix array, BWT (what a saved index holds)",
        "wavelet_s": wavelet_s,
        "wavelet_measures": "the wavelet matrix over the BWT, built at the first query of a just-built index (and at load)",
        "build_peak_rss_delta_bytes": build_rss,
        "build_peak_rss_method": rss_method,
        "save_s": save_s,
        "disk_bytes": disk,
        "disk_bytes_per_token": disk / n_tokens,
        "stored_array_bytes": fm.nbytes(),
        "load_s": load_s,
        "load_measures": "FMIndex.load(verify=False): np.load(mmap_mode='r') of the four arrays + WaveletMatrix over the BWT; files in the page cache (just written)",
        "verify_checksums_s": verify_s,
        "queries": queries,
    }


def print_summary(result: dict) -> None:
    m = result["machine"]
    print(f"\n{m['cpu_count']} CPUs ({m['cpu_model']}); load average {m['load_avg_1m_start']:.2f} -> {m['load_avg_1m_end']:.2f}")
    print("\nbuild / size / load")
    header = ["corpus", "docs", "tokens", "build s", "Mtok/s", "wavelet s", "peak RSS MiB", "disk MiB", "B/token", "load s", "verify s"]
    cells = [header]
    for c in result["corpora"]:
        rss = c["build_peak_rss_delta_bytes"]
        cells.append([c["name"], str(c["docs"]), str(c["tokens"]), f"{c['build_s']:.2f}", f"{c['build_tokens_per_s'] / 1e6:.2f}", f"{c['wavelet_s']:.2f}",
                      f"{rss / 2**20:.0f}" if rss is not None else "-", f"{c['disk_bytes'] / 2**20:.1f}",
                      f"{c['disk_bytes_per_token']:.2f}", f"{c['load_s']:.2f}", f"{c['verify_checksums_s']:.2f}"])
    print_cells(cells)
    if "seal_scifact" in result:
        c = result["seal_scifact"]
        r = {k: f"{v / 1e6:.2f}" for k, v in c["tokens_per_s"].items()}
        print(f"\nSciFact as SEAL indexes it ({c['key_model']}, {c['tokens']} tokens), Mtok/s: tokenising "
              f"{r['tokenize_huggingface']} (Hugging Face) / {r['tokenize_tiktoken']} (tiktoken), build {r['build']}; all-in "
              f"{r['all_in']} (saved {r['all_in_saved']}, queryable {r['all_in_queryable']}; with Hugging Face {r['all_in_huggingface']}); "
              f"wavelet matrix {c['wavelet_s']:.2f} s, save {c['save_s']:.2f} s")
    for c in result["corpora"]:
        if "all_in_tokens_per_s" in c:
            print(f"\n{c['name']} from text: tokenising {c['tokenize_tokens_per_s'] / 1e6:.2f} Mtok/s (transformers call), "
                  f"{c['tokenize_fast_tokens_per_s'] / 1e6:.2f} Mtok/s (encode_batch_fast); + build = "
                  f"{c['all_in_tokens_per_s'] / 1e6:.2f} Mtok/s all-in")
    print("\nquery latency, microseconds (mean / p50 / p95); naive = numpy scan of the token stream")
    cells = [["corpus", "n", "mean hits", "count", "next_tokens", "locate(100)", "naive count", "speed-up (p50)"]]
    for c in result["corpora"]:
        for q in c["queries"]:
            fmt = lambda s: f"{s['mean_us']:.1f} / {s['p50_us']:.1f} / {s['p95_us']:.1f}"
            cells.append([c["name"], str(q["ngram_len"]), f"{q['mean_count']:.0f}", fmt(q["count"]), fmt(q["next_tokens"]),
                          fmt(q["locate_limit100"]), f"{q['naive_count']['p50_us']:.0f}", f"{q['count_speedup_vs_naive_p50']:.0f}x"])
    print_cells(cells)


def print_cells(cells: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data("scifact"), help="BEIR corpus folder (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=10_000_000, metavar="N", help="tokens in the synthetic corpus (default: %(default)s)")
    parser.add_argument("--skip-10m", action="store_true", help="benchmark SciFact only, no synthetic corpus")
    parser.add_argument("--no-seal", dest="seal", action="store_false", help="skip SciFact as SEAL indexes it (SmolLM2's tokenizer)")
    parser.add_argument("--queries", type=int, default=2000, help="n-grams timed per length (default: %(default)s)")
    parser.add_argument("--naive-queries", type=int, default=50, help="of those, timed by the scanning baseline too (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus and the query sample (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_fmindex.json"), help="JSON output (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the saved indexes go, removed afterwards (default: a temp folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(PACKAGES),
        "ngram_lengths": list(NGRAM_LENGTHS),
        "query_sampling": f"{args.queries} n-grams per length cut from random documents (seed {args.seed}); "
                          f"the first {args.naive_queries} are also counted by the naive baseline",
        "corpora": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-fmindex-", dir=args.workdir))
    try:
        if args.seal:
            print("SciFact as SEAL indexes it ...", flush=True)
            result["seal_scifact"] = seal_scifact(args.data, workdir)
        print("tokenizing SciFact ...", flush=True)
        docs, info = scifact_token_docs(args.data)
        result["corpora"].append(bench_corpus(docs, info, args, workdir))
        if not args.skip_10m:
            pool = np.concatenate(docs)
            del docs
            synthetic, info = synthetic_docs(pool, args.tokens, args.seed)
            result["corpora"].append(bench_corpus(synthetic, info, args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_json(args.out, result)
    print_summary(result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
