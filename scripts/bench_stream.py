#!/usr/bin/env python
"""Indexing beyond memory: peak RSS of building a dense IVF-PQ index from a corpus held in memory (the
baseline) and from the same corpus streamed from disk (`load_corpus(path, stream=True)`), and of searching
the saved index with its inverted lists read from disk.

Each step runs in a fresh Python process whose peak resident set (VmHWM) is the number reported, next to
its resident set once the encoder is loaded and before the corpus is touched; the growth between the two
is what the corpus costs. Corpora of several sizes (`--data` files, e.g. the passages scripts/bench_scale.py
writes) show how each mode's memory grows with corpus size.

    .venv/bin/python scripts/bench_stream.py --data results/bench_scale_work/corpus-10000.jsonl \
        results/bench_scale_work/corpus-50000.jsonl
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_common import machine_info, status_bytes, write_json

# a cheap encoder (1 layer of MiniLM, ONNX int8, 64 tokens): memory is the subject here, not quality
SPEC = "dense:model=minilm,layers=1,backend=onnx,quantize=int8,max_length=64,index=IVF1024,PQ32,search_params.nprobe=16"
PACKAGES = ("faiss-cpu", "onnxruntime", "dengen")


def build_cell(mode: str, data: str, out: str, spec: str) -> dict:
    from retrieval.data import load_corpus
    from retrieval.spec import parse_spec

    retriever = parse_spec(spec)
    retriever.encoder.encode_documents(["warm-up"], progress=False)  # the model is loaded before measuring
    before = status_bytes("VmRSS")
    corpus = load_corpus(data, stream=mode == "stream")
    retriever.index(corpus)
    retriever.save(out)
    return {"mode": mode, "docs": len(corpus), "build_seconds": retriever.build_seconds,
            "rss_before_corpus_bytes": before, "peak_rss_bytes": status_bytes("VmHWM")}


def search_cell(index: str, queries_from: str) -> dict:
    from retrieval.api import load_retriever
    from retrieval.data import load_dataset

    queries = load_dataset(queries_from).queries
    retriever = load_retriever(index)
    retriever.search(dict(list(queries.items())[:5]), k=10)  # loads the model
    before = status_bytes("VmRSS")
    started = time.perf_counter()
    retriever.search(queries, k=10)
    seconds = time.perf_counter() - started
    index_bytes = sum(p.stat().st_size for p in Path(index).rglob("*") if p.is_file())
    return {"queries": len(queries), "qps": len(queries) / seconds, "index_bytes": index_bytes,
            "rss_before_search_bytes": before, "peak_rss_bytes": status_bytes("VmHWM")}


def child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--cell", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cell {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", help="corpus files (jsonl), smallest first")
    parser.add_argument("--spec", default=SPEC, help="dense retriever spec (an IVF type, searched from disk)")
    parser.add_argument("--queries", default=None, help="dataset whose test queries are searched (default: SciFact)")
    parser.add_argument("--modes", default="memory,stream",
                        help="comma list of build modes per corpus: memory (the baseline), stream (default: both)")
    parser.add_argument("--workdir", type=Path, default=Path("results/bench_stream_work"))
    parser.add_argument("--out", type=Path, default=Path("results/bench_stream.json"))
    parser.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if set(args.modes.split(",")) - {"memory", "stream"}:
        parser.error(f"--modes {args.modes}: choose from memory, stream")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cell:
        kind, *rest = args.cell
        if kind == "warmup":  # exports (and caches) the ONNX model, so no measured process pays for it
            from retrieval.spec import parse_spec

            parse_spec(args.spec).encoder
            print("{}")
            return
        print(json.dumps(build_cell(*rest, args.spec) if kind == "build" else search_cell(*rest)))
        return
    from retrieval.data import shared_data

    queries = args.queries or str(shared_data("scifact"))
    child("warmup")
    rows = []
    for data in args.data:
        for mode in args.modes.split(","):
            out = args.workdir / f"{Path(data).stem}-{mode}"
            row = {"data": data, **child("build", mode, data, str(out))}
            if mode == "stream":
                row["search"] = child("search", str(out), queries)
            rows.append(row)
            grown = (row["peak_rss_bytes"] - row["rss_before_corpus_bytes"]) / 2**20
            print(f"{Path(data).name:>28} {mode:>6}: {row['docs']:>8} docs, build {row['build_seconds']:7.1f} s, "
                  f"peak RSS {row['peak_rss_bytes'] / 2**20:7.1f} MiB (+{grown:6.1f} MiB over the loaded encoder)"
                  + (f", search peak {row['search']['peak_rss_bytes'] / 2**20:.1f} MiB, {row['search']['qps']:.1f} q/s"
                     if "search" in row else ""), flush=True)
    write_json(args.out, {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(PACKAGES), "spec": args.spec, "rows": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
