"""One-query dense latency (and batch encoding) with OpenMP's default wait policy against PASSIVE.

torch and the faiss wheel each bring their own OpenMP runtime; with the default (active) policy the threads
of one spin while the other works, and a single query can take tens of times longer. Each setting runs in
fresh processes, alternating, searching a saved dense index one query at a time:

    python scripts/bench_query_latency.py --index runs/demo/dense --rounds 3 --out results/bench_query_latency.json

Run it once on an idle machine and once with other work on the cores (`--burn N` starts N busy-loop
processes for the duration) to see both cases.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import busy_processes, machine_info, write_json  # noqa: E402

CHILD = """
import json, os, sys, time
from retrieval import load_dataset, load_retriever
if sys.argv[4] == "default":  # undo dengen's setting before torch and faiss start their OpenMP runtimes
    os.environ.pop("OMP_WAIT_POLICY", None)
retriever = load_retriever(sys.argv[1])
queries = list(load_dataset(sys.argv[2]).queries.values())[: int(sys.argv[3])]
retriever.search({"warm": queries[0]}, 10)
times = []
for text in queries:
    start = time.perf_counter()
    retriever.search({"q": text}, 10)
    times.append((time.perf_counter() - start) * 1000)
texts = [d.full_text for d in list(load_dataset(sys.argv[2]).corpus)[: int(sys.argv[5])]]
start = time.perf_counter()
retriever.encoder.encode_documents(texts, progress=False)  # batch encoding: must not lose to the policy
print(json.dumps({"query_ms": times, "docs_per_s": len(texts) / (time.perf_counter() - start)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="runs/demo/dense")
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encode", type=int, default=256, help="documents batch-encoded per run (throughput)")
    parser.add_argument("--burn", type=int, default=0, help="busy processes sharing the cores meanwhile")
    parser.add_argument("--out", default="results/bench_query_latency.json")
    args = parser.parse_args()

    settings = ("default", "PASSIVE")
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    with busy_processes(args.burn):
        for i in range(args.rounds):
            for name in settings[:: 1 if i % 2 == 0 else -1]:  # alternate who goes first
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                done = subprocess.run([sys.executable, "-c", CHILD, args.index, args.data, str(args.queries), name,
                                       str(args.encode)],
                                      env=env, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                times = runs[name][-1]["query_ms"]
                print(f"{name:8} round {i}: median {statistics.median(times):.1f} ms, mean {statistics.fmean(times):.1f} ms, "
                      f"max {max(times):.1f} ms; encoding {runs[name][-1]['docs_per_s']:.1f} docs/s", flush=True)
    summary = {}
    for name, rs in runs.items():
        times = sorted(t for r in rs for t in r["query_ms"])
        summary[name] = {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
                         "p95_ms": times[int(0.95 * len(times))],
                         "encode_docs_per_s_median": statistics.median(r["docs_per_s"] for r in rs)}
    print(json.dumps(summary, indent=2))
    write_json(Path(args.out), {"machine": machine_info(("torch", "faiss-cpu"), burners=args.burn), "runs": runs,
                                "summary": summary, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
