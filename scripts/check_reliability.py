"""The saved-index guarantees at full size, on real indexes (docs/reliability.md reports what this writes).

1. kill -9 at random moments of `dengen index build --retriever bm25 --overwrite` over an existing index
   (first 300 SciFact documents, then 50, alternating): after each kill the index loads and answers as the
   old or the new one does, never neither.
2. 8 reader processes (each loads the BM25 index and searches, again and again, from before the first re-save
   to after the last) while a writer re-saves it 50 times, alternating the 50- and 300-document versions: every answer must be one of the two.
3. 200 random edits of the manifest of each of a dense, a BM25 and a hybrid index: every load succeeds or
   raises IndexLoadError.

    python scripts/check_reliability.py --out results/reliability.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "reliability"))  # the test suite's manifest fuzzer, run at full size

from bench_common import machine_info, write_json  # noqa: E402
from manifest_fuzz import fuzz_manifests  # noqa: E402

from retrieval import Corpus, build_retriever, load_corpus, load_retriever  # noqa: E402
from retrieval.data import shared_data, write_corpus  # noqa: E402

QUERIES = ["vitamin D deficiency", "cancer cells apoptosis", "insulin resistance obesity", "malaria vaccine",
           "stem cell differentiation", "antibiotic resistance bacteria", "DNA repair", "blood pressure"]

READER = textwrap.dedent("""
    import json, os, sys
    from retrieval import load_retriever
    path, expected, stop = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
    queries = expected["queries"]
    reads, failures, seen = 0, [], set()
    while not os.path.exists(stop):
        try:
            r = load_retriever(path)
            answer = [[h.doc_id for h in r.search_one(q, k=5)] for q in queries]
            which = [name for name, answers in expected["answers"].items() if answers == answer]
            if not which:
                failures.append("an answer of neither version")
            seen.update(which)
            reads += 1
        except Exception as err:
            failures.append(f"{type(err).__name__}: {err}"[:300])
        if reads == 1:
            print("ready", flush=True)  # the JVM is up: the writer may start
    print(json.dumps({"reads": reads, "failures": failures, "versions_seen": sorted(seen)}))
""")

WRITER = textwrap.dedent("""
    import sys
    from retrieval import load_retriever
    path, saves = sys.argv[1], int(sys.argv[2])
    versions = [load_retriever(p) for p in sys.argv[3:]]
    for i in range(saves):
        versions[i % len(versions)].save(path, overwrite=True)
    print("done")
""")


def answers(retriever) -> list[list[str]]:
    return [[h.doc_id for h in retriever.search_one(q, k=5)] for q in QUERIES]


def kill_during_builds(work: Path, corpora: dict[str, Path], kills: int, rng: random.Random) -> dict:
    temp = work / "tmp"  # the builds' TMPDIR: their BM25 leftovers counted alone
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    target = work / "killed"
    expected = {}
    for name, corpus in corpora.items():
        subprocess.run([sys.executable, "-m", "retrieval.cli", "index", "build", "--data", str(corpus), "--retriever",
                        "bm25", "--out", str(work / name)], cwd=REPO, check=True, capture_output=True, env=env)
        expected[name] = answers(load_retriever(work / name))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retrieval.cli", "index", "build", "--data", str(corpora["small"]),
                    "--retriever", "bm25", "--out", str(target)], cwd=REPO, check=True, capture_output=True, env=env)
    whole = time.perf_counter() - start
    current, outcomes, failures = "small", {"old": 0, "new": 0}, []
    for attempt in range(kills):
        new = "large" if current == "small" else "small"
        build = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "index", "build", "--data", str(corpora[new]),
                                  "--retriever", "bm25", "--out", str(target), "--overwrite"], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.5, 1.2) * whole
        time.sleep(delay)
        build.send_signal(signal.SIGKILL)
        build.wait()
        try:
            got = answers(load_retriever(target))
        except Exception as err:
            failures.append(f"kill {attempt} at {delay:.2f} s: {type(err).__name__}: {err}")
            continue
        if got == expected[current]:
            outcomes["old"] += 1
        elif got == expected[new]:
            outcomes["new"] += 1
            current = new
        else:
            failures.append(f"kill {attempt} at {delay:.2f} s: answers of neither version")
    leftovers_before = sorted(p.name for p in target.iterdir())
    temp_before = list(temp.glob("dengen-bm25-*"))
    # the next save to the path removes a killed save's leftovers; the next BM25 build removes killed builds' temp folders
    subprocess.run([sys.executable, "-m", "retrieval.cli", "index", "build", "--data", str(corpora[current]), "--retriever",
                    "bm25", "--out", str(target), "--overwrite"], cwd=REPO, check=True, capture_output=True, env=env)
    return {"kills": kills, "build_seconds_unkilled": round(whole, 2), "outcomes": outcomes, "failures": failures,
            "entries_after_kills": leftovers_before, "entries_after_next_save": sorted(p.name for p in target.iterdir()),
            "temp_folders_after_kills": len(temp_before), "temp_folders_after_next_build": len(list(temp.glob("dengen-bm25-*")))}


def readers_during_resaves(work: Path, readers: int, saves: int) -> dict:
    target = work / "shared-index"
    load_retriever(work / "small").save(target)
    spec = {"queries": QUERIES, "answers": {name: answers(load_retriever(work / name)) for name in ("small", "large")}}
    (work / "expected.json").write_text(json.dumps(spec))
    stop = work / "stop-readers"
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(target), str(work / "expected.json"), str(stop)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(readers)]
    for proc in procs:  # every reader has loaded once before the first re-save
        assert proc.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    writer = subprocess.run([sys.executable, "-c", WRITER, str(target), str(saves), str(work / "small"), str(work / "large")],
                            cwd=REPO, capture_output=True, text=True)
    writer_seconds = time.perf_counter() - start
    stop.touch()
    err = writer.stderr
    results = [json.loads(p.communicate()[0]) for p in procs]
    return {"readers": readers, "saves": saves, "writer_ok": writer.returncode == 0, "writer_error": err[-500:] if writer.returncode else "",
            "writer_seconds": round(writer_seconds, 1), "reads": sum(r["reads"] for r in results),
            "failures": [f for r in results for f in r["failures"]][:20], "failure_count": sum(len(r["failures"]) for r in results),
            "versions_seen": sorted({v for r in results for v in r["versions_seen"]})}


def fuzz_saved_manifests(work: Path, cases: int, rng: random.Random) -> dict:
    """`cases` random manifest edits of each of a dense, a BM25 and a hybrid index (20 SciFact documents)."""
    docs = Corpus(list(load_corpus(work / "small.jsonl"))[:20])
    outcomes = {}
    for kind, options in (("dense", {"model": "minilm"}), ("bm25", {}), ("hybrid", {"members": ["bm25", "dense:model=minilm"]})):
        r = build_retriever(kind, **options)
        r.index(docs)
        r.save(work / f"fuzz-{kind}")
        outcomes[kind] = fuzz_manifests(work / f"fuzz-{kind}", cases, rng)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/reliability.json")
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--saves", type=int, default=50)
    parser.add_argument("--fuzz", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    docs = list(load_corpus(shared_data("scifact")))
    with tempfile.TemporaryDirectory(prefix="dengen-reliability-") as tmp:
        work = Path(tmp)
        corpora = {"small": work / "small.jsonl", "large": work / "large.jsonl"}
        write_corpus(docs[:50], corpora["small"])
        write_corpus(docs[:300], corpora["large"])
        report = {"machine": machine_info(("faiss-cpu", "pyserini", "torch")), "seed": args.seed}
        report["kill_during_build"] = kill_during_builds(work, corpora, args.kills, rng)
        print(json.dumps(report["kill_during_build"], indent=1))
        report["readers_during_resaves"] = readers_during_resaves(work, args.readers, args.saves)
        print(json.dumps(report["readers_during_resaves"], indent=1))
        report["manifest_fuzz"] = fuzz_saved_manifests(work, args.fuzz, rng)
        print(json.dumps(report["manifest_fuzz"], indent=1))
    write_json(Path(args.out), report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
