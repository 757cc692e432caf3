"""Benchmark suites: every benchmark runnable offline, for one retriever spec, appended to a results folder.

Each task takes the retriever spec (a new retriever is built per dataset) and the shared data folder, and
returns result records; a task that cannot run for this retriever or without missing data is skipped
with the reason printed. Records are written as soon as each task finishes, so an interrupted suite
keeps what it finished.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from eval.report import column_name
from eval.runner import evaluate
from retrieval.spec import parse_spec


class Skip(Exception):
    """This task does not apply to this retriever, or its data is missing."""


def default_data_root() -> Path:
    return Path(os.environ.get("DENGEN_DATA", "../shared/data"))


def _retrieval_task(folder: str, task: str, ks, main_metric: str, loader=None):
    def run(spec, root: Path) -> list[dict]:
        from retrieval.data import load_dataset

        path = root / folder
        dataset = loader(path) if loader else load_dataset(path, "test")
        record, _ = evaluate(parse_spec(spec), dataset, ks)
        return [{**record, "task": task, "main_metric": main_metric}]

    return run


def _limit(spec, root: Path) -> list[dict]:
    from eval.limit import KS, load_limit, main_metric

    records = []
    for folder in ("limit-small", "limit"):
        try:
            dataset = load_limit(root / folder)
        except FileNotFoundError as err:
            print(f"skip LIMIT ({folder}): {err}")
            continue
        record, _ = evaluate(parse_spec(spec), dataset, KS)
        records.append({**record, "task": "LIMIT", "main_metric": main_metric(dataset)})
    return records


def _kilt(spec, root: Path) -> list[dict]:
    raise Skip("KILT retrieval needs the KILT Wikipedia knowledge source (35 GiB), which is not available offline; "
               "eval/kilt.py scores KILT-format predictions from any run once it is")


def _encoder_of(spec):
    retriever = parse_spec(spec)
    encoder = getattr(retriever, "encoder", None)
    if encoder is None:
        raise Skip(f"{retriever.kind} has no text encoder to score sentence pairs with")
    return encoder


TASKS: dict[str, Callable] = {
    "scifact": _retrieval_task("scifact", "SciFact", (10, 100), "ndcg@10"),
    "limit": _limit,
    "kilt": _kilt,
}
SUITES = {"default": list(TASKS)}


def run_suite(spec: str, out: str | Path, suite: str = "default", data_root: str | Path | None = None,
              tasks: list[str] | None = None) -> list[dict]:
    """Run the suite's tasks (or `tasks`) for `spec`; write each record to `out` and return them all."""
    names = tasks or SUITES[suite]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    root = Path(data_root) if data_root else default_data_root()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in names:
        start = time.perf_counter()
        try:
            new = TASKS[name](spec, root)
        except Skip as why:
            print(f"skip {name}: {why}")
            continue
        for record in new:
            record["suite"] = suite
            stem = "".join(c if c.isalnum() or c in "-+._" else "_" for c in f"{column_name(record)}-{record.get('split', '')}-{record['label']}")
            (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        records += new
        print(f"{name}: {len(new)} result(s) in {time.perf_counter() - start:.0f} s")
    return records
