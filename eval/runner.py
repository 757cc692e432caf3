"""Evaluate a retriever on a dataset split: metrics, build time, index size, query latency."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from eval.metrics import evaluate_run
from eval.record import Result
from indexes.manifest import folder_bytes
from retrieval.api import Retriever
from retrieval.data import Dataset
from retrieval.run import Run


def safe_name(text: str) -> str:
    """`text` with everything but letters, digits and -+._ replaced by _, for file names and labels."""
    return "".join(c if c.isalnum() or c in "-+._" else "_" for c in text)


def encoder_label(description: dict) -> str:
    """A short, file-name-safe name for an encoder configuration ("encoder-minilm", "dense-minilm")."""
    model = description.get("model") or description.get("encoder")
    return safe_name(f"{description['kind']}-{Path(str(model)).name}" if model else description["kind"])


def label(description: dict) -> str:
    """A short, file-name-safe name for a retriever configuration."""
    kind = description["kind"]
    if kind == "dense":
        name = f"dense-{Path(str(description['model'])).name}-{description['index']}"
        # 2D Matryoshka sub-models of one model must not share a result file
        name += "".join(f"-{key[0].upper()}{description[key]}" for key in ("layers", "dim") if description.get(key))
        if description.get("backend", "torch") != "torch":  # ONNX (int8) vectors differ: their own result file
            name += f"-{description['backend']}" + (f"-{description['quantize']}" if description.get("quantize") else "")
    elif kind == "bm25":
        name = f"bm25-{description['fields']}" if description.get("fields", "flat") != "flat" else "bm25"
    elif kind == "hybrid":
        name = f"hybrid-{description['fusion']}-" + "+".join(label(m) for m in description["members"])
    elif kind == "chunked":
        name = f"chunked-{label(description['inner'])}-{description['window']}x{description['stride']}{description['unit'][0]}"
    else:
        name = kind
    return safe_name(name)


def index_bytes(retriever: Retriever) -> int:
    """Size of the saved index; an unsaved one is saved to a temporary folder to measure it."""
    if retriever.path is not None:
        return folder_bytes(retriever.path)
    with tempfile.TemporaryDirectory(prefix="dengen-size-") as tmp:
        retriever.save(Path(tmp) / "index")
        return folder_bytes(Path(tmp) / "index")


def query_latency_ms(retriever: Retriever, queries: dict[str, str], k: int, sample: int = 100) -> dict:
    """Wall time of one-query searches over the first `sample` queries, after one warm-up query."""
    chosen = list(queries.items())[:sample]
    retriever.search(dict(chosen[:1]), k)
    times = []
    for qid, text in chosen:
        start = time.perf_counter()
        retriever.search({qid: text}, k)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "mean": statistics.fmean(times),
        "p50": times[len(times) // 2],
        "p95": times[min(len(times) - 1, int(0.95 * len(times)))],
        "queries": len(times),
    }


def evaluate(retriever: Retriever, dataset: Dataset, ks=(10, 100), latency_sample: int = 100, *,
             task: str | None = None, family: str = "retrieval", main_metric: str | None = None) -> tuple[Result, Run]:
    """Index (if needed), search every judged query, and score. Returns (result, run); the task defaults
    to the dataset's name, the main metric to nDCG@10 (else the first metric)."""
    if not retriever.doc_count:
        retriever.index(dataset.corpus)
    elif retriever.doc_count != len(dataset.corpus):
        raise ValueError(f"the index holds {retriever.doc_count} documents; {dataset.name} has {len(dataset.corpus)}")
    depth = max(ks)
    start = time.perf_counter()
    run = retriever.search(dataset.queries, depth)
    search_seconds = time.perf_counter() - start
    description = retriever.describe()
    metrics = evaluate_run(dataset.qrels, run, ks)
    result = Result(
        task=task or dataset.name, family=family, dataset=dataset.name, split=dataset.split,
        label=label(description), retriever=description, metrics=metrics,
        main_metric=main_metric or ("ndcg@10" if "ndcg@10" in metrics else next(iter(metrics))),
        num_queries=len(dataset.queries), num_docs=len(dataset.corpus),
        build_seconds=retriever.build_seconds, search_seconds=search_seconds,
        latency_ms=query_latency_ms(retriever, dataset.queries, depth, latency_sample),
        index_bytes=index_bytes(retriever),
    )
    return result, run


def format_table(records: list[Result]) -> str:
    """A Markdown table: one row per result, metric columns in a stable order."""
    metrics = sorted({m for r in records for m in r.metrics}, key=lambda m: (m.split("@")[0] != "ndcg", m.split("@")[0], int(m.split("@")[1])))
    head = ["dataset", "retriever", *metrics, "latency ms", "index MB", "build s"]
    rows = [
        [
            r.dataset, r.label, *(f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in metrics),
            f"{r.latency_ms['mean']:.1f}" if r.latency_ms else "",
            f"{r.index_bytes / 1e6:.1f}" if r.index_bytes is not None else "",
            f"{r.build_seconds:.1f}" if r.build_seconds is not None else "",
        ]
        for r in records
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
