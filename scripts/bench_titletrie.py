#!/usr/bin/env python
"""Title-trie benchmark: what `indexes.titletrie.TitleTrie` costs to build and store, and how fast it answers.

Two title sets, tokenized with MiniLM's WordPiece tokenizer (no special tokens; end_id = [SEP]):
  (a) SciFact: the title of every document of the corpus (5,183);
  (b) squad-v1.1-dev: the Wikipedia page titles of pages.jsonl.gz (48).

Per set: build seconds, bytes of titles.marisa and of the saved folder, load seconds (mmap), and the latency
of next_tokens() at the root and at title prefixes of 1, 2 and 4 tokens, computed afresh (cache=False) and
as hits of the per-prefix cache. Baseline in the same run: GENRE's original trie (nested dicts, `genre/trie.py`'s
`Trie`), its build seconds, pickled bytes and lookup latency; its answers must equal the marisa trie's.

    .venv/bin/python scripts/bench_titletrie.py               # both sets, ~10 s on 2 cores
"""
from __future__ import annotations

import argparse
import os
import pickle
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from bench_common import machine_info, timed, write_json
from indexes.manifest import folder_bytes
from indexes.titletrie import TRIE_FILE, TitleTrie
from retrieval.data import load_corpus, shared_data
from retrieval.models import model_path

PREFIX_LENGTHS = (1, 2, 4)
PACKAGES = ("marisa-trie", "transformers", "tokenizers", "dengen")


def latency_us(call: Callable[[object], object], queries: list) -> dict:
    """Mean, median and p95 microseconds of `call(q)` over `queries` (after a warm-up pass over a few)."""
    for q in queries[:20]:
        call(q)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        call(q)
        times[i] = time.perf_counter() - start
    us = times * 1e6
    return {"mean_us": float(us.mean()), "p50_us": float(np.median(us)), "p95_us": float(np.percentile(us, 95)), "n": len(queries)}


class DictTrie:
    """The baseline: GENRE's first trie (nested dicts keyed by token id), built the same way."""

    def __init__(self, sequences):
        self.root: dict = {}
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})

    def next_tokens(self, prefix):
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return []
        return sorted(node)


def tokenized_titles(name: str, path: Path, tokenizer) -> tuple[list[list[int]], dict]:
    titles = [doc.title for doc in load_corpus(path)]
    start = time.perf_counter()
    ids = tokenizer(titles, add_special_tokens=False)["input_ids"]
    seconds = time.perf_counter() - start
    kept = [t for t in ids if t]
    return kept, {"name": name, "source": str(path), "titles": len(titles), "empty_titles_skipped": len(ids) - len(kept),
                  "distinct_titles": len({tuple(t) for t in kept}), "tokens": sum(map(len, kept)),
                  "mean_title_tokens": float(np.mean([len(t) for t in kept])), "tokenize_s": seconds}


def bench_set(titles: list[list[int]], info: dict, end_id: int, args, workdir: Path) -> dict:
    print(f"\n{info['name']}: {len(titles)} titles, {info['tokens']} tokens", flush=True)
    trie, build_s = timed(lambda: TitleTrie.build(titles, end_id=end_id))
    folder = workdir / info["name"]
    _, save_s = timed(lambda: trie.save(folder, corpus=info["name"]))
    loaded, load_s = timed(lambda: TitleTrie.load(folder, verify=False))
    baseline, baseline_build_s = timed(lambda: DictTrie([[*t, end_id] for t in titles]))
    baseline_bytes = len(pickle.dumps(baseline.root, protocol=pickle.HIGHEST_PROTOCOL))

    rng = np.random.default_rng(args.seed)
    rows = []
    queries = {0: [()] * args.root_queries}
    for length in PREFIX_LENGTHS:
        long_enough = [t for t in titles if len(t) >= length]
        picks = rng.integers(0, len(long_enough), size=args.queries)
        queries[length] = [tuple(long_enough[p][:length]) for p in picks]
    for length, prefixes in queries.items():
        for p in prefixes:  # also fills the per-prefix cache, so "cached" below times hits only
            loaded.next_tokens(p)
        for p in prefixes[:200]:
            if loaded.next_tokens(p) != baseline.next_tokens(p):
                raise AssertionError(f"{info['name']}: marisa trie and dict trie disagree after {p}")
        rows.append({
            "prefix_len": length,
            "mean_allowed": float(np.mean([len(loaded.next_tokens(p)) for p in prefixes[:200]])),
            "uncached": latency_us(lambda p: loaded.next_tokens(p, cache=False), prefixes),
            "cached": latency_us(loaded.next_tokens, prefixes),
            "dict_baseline": latency_us(baseline.next_tokens, prefixes),
        })
    return {
        **info,
        "build_s": build_s,
        "save_s": save_s,
        "trie_file_bytes": (folder / TRIE_FILE).stat().st_size,
        "folder_bytes": folder_bytes(folder),
        "load_s": load_s,
        "baseline_build_s": baseline_build_s,
        "baseline_pickle_bytes": baseline_bytes,
        "queries": rows,
    }


def print_cells(cells: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def print_summary(result: dict) -> None:
    m = result["machine"]
    print(f"\n{m['cpu_count']} CPUs ({m['cpu_model']}); load average {m['load_avg_1m_start']:.2f} -> {m['load_avg_1m_end']:.2f}")
    cells = [["titles", "n", "tokens", "build ms", "marisa bytes", "folder bytes", "load ms", "dict build ms", "dict pickle bytes"]]
    for s in result["sets"]:
        cells.append([s["name"], str(s["titles"]), str(s["tokens"]), f"{s['build_s'] * 1e3:.1f}", str(s["trie_file_bytes"]),
                      str(s["folder_bytes"]), f"{s['load_s'] * 1e3:.2f}", f"{s['baseline_build_s'] * 1e3:.1f}",
                      str(s["baseline_pickle_bytes"])])
    print_cells(cells)
    print("\nnext_tokens latency, microseconds (mean / p50 / p95); prefix length 0 = the root")
    cells = [["titles", "prefix", "mean allowed", "uncached", "cached", "dict baseline"]]
    fmt = lambda s: f"{s['mean_us']:.1f} / {s['p50_us']:.1f} / {s['p95_us']:.1f}"
    for s in result["sets"]:
        for q in s["queries"]:
            cells.append([s["name"], str(q["prefix_len"]), f"{q['mean_allowed']:.1f}", fmt(q["uncached"]), fmt(q["cached"]),
                          fmt(q["dict_baseline"])])
    print_cells(cells)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", type=Path, default=shared_data("scifact"), help="BEIR corpus folder (default: %(default)s)")
    parser.add_argument("--squad", type=Path, default=shared_data("squad-v1.1-dev") / "pages.jsonl.gz",
                        help="pages jsonl(.gz) with title fields (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=2000, help="prefixes timed per length (default: %(default)s)")
    parser.add_argument("--root-queries", type=int, default=50, help="root lookups timed (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prefix sample (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_titletrie.json"), help="JSON output (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    args = parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(PACKAGES),
        "tokenizer": 'MiniLM WordPiece (model_path("minilm")), add_special_tokens=False; end_id = [SEP]',
        "query_sampling": f"{args.queries} prefixes per length cut from random titles long enough (seed {args.seed}); "
                          f"{args.root_queries} root lookups",
        "sets": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-titletrie-"))
    try:
        for name, path in (("scifact", args.scifact), ("squad-v1.1-dev-pages", args.squad)):
            titles, info = tokenized_titles(name, path, tokenizer)
            result["sets"].append(bench_set(titles, info, tokenizer.sep_token_id, args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    write_json(args.out, result)
    print_summary(result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
