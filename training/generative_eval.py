"""Steps shared by the generative recipes (SEAL, CorpusBrain, UGR): query samples, timed searches,
baselines, runs saved exactly, leaderboard records, and the reload check in a new process."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path


def recipe_args(kind: str, doc: str, argv: list[str] | None):
    """The arguments every generative recipe takes: --config, --verify, --records."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"dengen train {kind}", description=doc.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--verify", action="store_true", help="reload the saved index(es) in a new process and compare runs")
    parser.add_argument("--records", action="store_true", help="(re)write the leaderboard records from results.json")
    return parser.parse_args(argv)


def sample_queries(queries: dict[str, str], n: int | None, seed: int) -> dict[str, str]:
    """A seeded sample of `n` queries in id order (all of them when n is None or not smaller)."""
    if not n or n >= len(queries):
        return queries
    chosen = sorted(random.Random(seed).sample(sorted(queries), n))
    return {q: queries[q] for q in chosen}


def split_queries(ids, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, test) query ids: the sorted ids shuffled with `seed`, the first `fraction` of them train. The
    SQuAD recipes (CorpusBrain, UGR) split questions so; the leaderboard's squad-pages task scores the test half."""
    ids = sorted(ids)
    random.Random(seed).shuffle(ids)
    cut = round(len(ids) * fraction)
    return sorted(ids[:cut]), sorted(ids[cut:])


def timed_search(retriever, queries: dict[str, str], depth: int) -> tuple[dict, float]:
    started = time.perf_counter()
    run = retriever.search(queries, k=depth)
    return run, (time.perf_counter() - started) / max(1, len(queries)) * 1000


def evaluate_baselines(test, config: dict, queries: dict[str, str], folder: Path) -> list[dict]:
    from eval.metrics import evaluate_run
    from indexes.manifest import folder_bytes
    from retrieval.spec import parse_spec

    rows = []
    for spec in config["baselines"]:
        retriever = parse_spec(spec)
        retriever.index(test.corpus)
        target = folder / spec.split(":")[0]
        retriever.save(target, overwrite=True)  # the recipe's own output
        run, latency = timed_search(retriever, queries, config["depth"])
        rows.append({"name": spec, "metrics": evaluate_run(test.qrels, run, ks=config["ks"]),
                     "ms_per_query": round(latency, 1), "index_bytes": folder_bytes(target),
                     "build_seconds": round(retriever.build_seconds, 1)})
    return rows


def save_run(run: dict, stem: Path) -> None:
    """The run as JSON: exact scores for the reload comparison, and ids with spaces (LIMIT's names) survive."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(run), encoding="utf-8")


def load_run(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def config_signature(config: dict, keys: list[str], added: dict | None = None) -> str:
    """A short hash of the recipe keys a trained model depends on (a saved model with the same one is reused).
    `added`: keys a recipe gained after models were saved, with their defaults; each is hashed only when the
    config sets another value, so the models saved before it stay reusable."""
    keys = list(keys) + [k for k, default in (added or {}).items() if config[k] != default]
    return hashlib.sha256(json.dumps({k: config[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def run_digest(run: dict) -> str:
    text = json.dumps({q: sorted(d.items()) for q, d in sorted(run.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def write_records(report: dict, kind: str) -> list[Path]:
    """One leaderboard record per row of a results.json report, in the runner's format, so that
    `dengen report FOLDER` shows the method (rows named `kind...`), its variants and the baselines side by side."""
    from eval.record import Result, now
    from eval.runner import label, safe_name
    from retrieval.spec import spec_to_config

    config = report["config"]
    folder = Path(config["report"])
    written = []
    for row in report["rows"]:  # a row may name its own dataset and split (UGR: one per granularity)
        dataset, split = row.get("dataset", Path(config["data"]).name), row.get("split", config["test_split"])
        if row["name"].startswith(kind):
            name = f"{kind}-{config['backbone']}{row['name'][len(kind):]}"
            described = {"kind": kind, **config.get("search", {}), **row.get("options", {})}
        else:
            described = spec_to_config(row["name"])
            name = label(described)
        family = "KILT" if config["main_metric"] == "r-precision" else "LIMIT" if "limit" in dataset else "retrieval"
        record = Result(task=dataset, family=family, dataset=dataset, split=split, retriever=described, label=name,
                        metrics=row["metrics"], main_metric=config["main_metric"],
                        num_queries=row.get("queries", report["queries"]),
                        build_seconds=row.get("build_seconds"), index_bytes=row.get("index_bytes"),
                        latency_ms={"mean": row["ms_per_query"]} if "ms_per_query" in row else None,
                        date=report.get("date") or now(),
                        details={"source": f"dengen train {kind} (results in {config['out']}/results.json)"})
        path = record.write(folder, f"{dataset}-{split}-{safe_name(name)}")
        written.append(path)
    return written


def rewrite_records(out: Path, kind: str, defaults: dict) -> dict:
    """A recipe's `--records`: its leaderboard records again from out/results.json (recipe keys added since
    a run take their `defaults`)."""
    report = json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))
    report["config"] = {**defaults, **report["config"]}
    for path in write_records(report, kind):
        print(f"wrote {path}")
    return report


def verify_reload(out: Path, index: Path, saved_run: Path, queries: dict[str, str], config: dict,
                  options: dict | None = None, name: str = "verify") -> dict:
    """Load the saved index in a fresh process (with search `options` set), search the first `verify_queries`
    evaluated queries, and compare that run with the saved run of the same queries (scores exactly, as JSON
    floats). The verdict goes to out/<name>.json."""
    chosen = dict(list(queries.items())[: config["verify_queries"]])
    code = (  # the same torch thread count as the evaluation: reductions split differently round differently
        "import json,sys,torch; from retrieval import load_retriever; from training.generative_eval import run_digest;"
        "torch.set_num_threads(int(sys.argv[4])); r=load_retriever(sys.argv[1]); q=json.loads(open(sys.argv[2]).read());"
        "r.set_search_options(**json.loads(sys.argv[5])); print(run_digest(r.search(q, k=int(sys.argv[3]))))"
    )
    queries_file = out / f"{name}-queries.json"
    queries_file.write_text(json.dumps(chosen), encoding="utf-8")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, str(index), str(queries_file), str(config["depth"]),
                             str(config["threads"]), json.dumps(options or {})],
                            capture_output=True, text=True, check=True)
    fresh = result.stdout.strip().splitlines()[-1]
    saved = run_digest({q: load_run(saved_run)[q] for q in chosen})
    verdict = {"queries": len(chosen), "saved_run_sha256": saved, "reloaded_run_sha256": fresh,
               "identical": fresh == saved, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(verdict, indent=2))
    (out / f"{name}.json").write_text(json.dumps(verdict, indent=2), encoding="utf-8")
    if not verdict["identical"]:
        raise SystemExit(f"the reloaded index {index} returned a different run")
    return verdict


def print_table(report: dict) -> None:
    ks = report["config"]["ks"]
    cols = (["r-precision"] if "r-precision" in report["rows"][0]["metrics"] else []) \
        + [f"ndcg@{k}" for k in ks if k in (10,)] + [f"recall@{k}" for k in ks if k != 1]
    print(f"\n{'retriever':40s} " + " ".join(f"{c:>10s}" for c in cols) + f" {'ms/query':>9s} {'index MB':>9s}")
    for row in report["rows"]:
        m = row["metrics"]
        size = f"{row['index_bytes'] / 1e6:9.1f}" if "index_bytes" in row else " " * 9
        ms = f"{row['ms_per_query']:9.1f}" if "ms_per_query" in row else " " * 9
        print(f"{row['name']:40s} " + " ".join(f"{m.get(c, float('nan')):10.4f}" for c in cols) + f" {ms} {size}")
