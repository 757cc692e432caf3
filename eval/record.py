"""One result record: what every evaluation in dengen returns, `--out` writes and the report reads back.

A `Result` is one retriever (its `label`, one leaderboard row) scored on one setting of one data set (its
`column`). Task-specific facts (RAR-b's instruction and tie rule, QMSum's long-document handling, where
a recipe's numbers came from) live in `details`. Files carry `schema_version`; records written before it
existed (plain dicts) are still read, their settings mapped onto the fields.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SCHEMA_VERSION = 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Result:
    task: str  # what was run: "SciFact", "STSBenchmark", "LIMIT", "RAR-b", "KILT", "QMSum", "MTEB", ...
    family: str  # the leaderboard's column group: retrieval, STS, LIMIT, RAR-b, KILT, long documents, MTEB
    dataset: str
    split: str
    label: str  # the row: one retriever configuration
    retriever: dict  # its describe()
    metrics: dict[str, float]
    main_metric: str
    variant: str | None = None  # a different setting of the same data: "mteb", "instr", "chunk 150x150w", ...
    num_queries: int | None = None
    num_docs: int | None = None
    build_seconds: float | None = None
    search_seconds: float | None = None
    latency_ms: dict | None = None  # {"mean", "p50", "p95", "queries"}: one query at a time, warm
    index_bytes: int | None = None
    details: dict = field(default_factory=dict)
    date: str = field(default_factory=now)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.main_metric not in self.metrics:
            raise ValueError(f"main metric {self.main_metric!r} is not among the metrics {sorted(self.metrics)}")

    @property
    def score(self) -> float:
        return self.metrics[self.main_metric]

    @property
    def column(self) -> str:
        """Data set plus what makes this run a different setting of it."""
        return f"{self.dataset} [{self.variant}]" if self.variant else self.dataset

    def to_json(self) -> dict:
        return asdict(self)

    def write(self, folder: str | Path, stem: str) -> Path:
        """`folder/stem.json`, written to a temporary name first so a reader never sees half a record."""
        from indexes.manifest import atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{stem}.json", json.dumps(self.to_json(), indent=2) + "\n")
        return folder / f"{stem}.json"

    @classmethod
    def from_json(cls, data: dict, source: str | Path = "<record>") -> Result:
        """A record from its JSON form; one written before schema versions is mapped onto the fields."""
        version = data.get("schema_version")
        if version is None:
            data = _from_legacy(data)
        elif version > SCHEMA_VERSION:
            raise ValueError(f"{source}: result schema_version {version} is newer than this dengen reads ({SCHEMA_VERSION})")
        known = {f.name for f in fields(cls)}
        missing = sorted({"task", "dataset", "label", "metrics"} - set(data))
        if missing:
            raise ValueError(f"{source}: result record lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


LEGACY_FAMILY = {"STSBenchmark": "STS", "SICK-R": "STS", "LIMIT": "LIMIT", "RAR-b": "RAR-b", "RAR-b MCR": "RAR-b", "KILT": "KILT",
                 "MTEB": "MTEB", "qmsum": "long documents", "QMSum": "long documents"}


def _legacy_variant(record: dict) -> str | None:
    if record.get("long_doc"):
        from eval.loco import long_doc_variant

        return long_doc_variant(record["long_doc"]) if isinstance(record["long_doc"], dict) else record["long_doc"]
    if "instruction" in record:
        return "instr" if record["instruction"] else "no instr"
    return record.get("variant")


def _from_legacy(record: dict) -> dict:
    known = {f.name for f in fields(Result)}
    task = record.get("task") or record.get("dataset", "?")
    metrics = record.get("metrics", {})
    main = record.get("main_metric") or ("ndcg@10" if "ndcg@10" in metrics else min(metrics, default="?"))
    return {**{k: v for k, v in record.items() if k in known}, "task": task, "main_metric": main,
            "family": LEGACY_FAMILY.get(task, "retrieval"), "split": record.get("split", ""),
            "retriever": record.get("retriever", {}), "variant": _legacy_variant(record),
            "details": {k: v for k, v in record.items() if k not in known}}


def read_results(folder: str | Path) -> list[Result]:
    """Every result record (*.json) under `folder`, in the order they were made (then by file name), so a
    suite's columns keep its task order. Other JSON files (results.json reports, run summaries) are passed over."""
    found = []
    for path in sorted(Path(folder).rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "metrics" in data and "label" in data:
            # dates have whole seconds; the file's write time orders records made within one second
            found.append(((data.get("date", ""), path.stat().st_mtime_ns), Result.from_json(data, path)))
    return [result for _, result in sorted(found, key=lambda pair: pair[0])]
