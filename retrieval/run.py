"""Search results: `Hit` for one query, `Run` for many, and TREC run files in and out."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from indexes.manifest import atomic_path
from retrieval.errors import DataError


class Hit(NamedTuple):
    doc_id: str
    score: float
    text: str | None = None


def ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Score-descending order, ties broken by doc id descending: trec_eval's (and so pytrec_eval's,
    mteb's and BEIR's) order, so a truncated run or a TREC file ranks exactly as they do."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


class Run(dict):
    """{query_id: {doc_id: score}}, the shape pytrec_eval, BEIR and mteb all use."""

    def top(self, query_id: str, k: int | None = None) -> list[tuple[str, float]]:
        return ranked(self[query_id])[:k]

    def truncate(self, k: int) -> Run:
        return Run({qid: dict(ranked(docs)[:k]) for qid, docs in self.items()})

    def to_trec(self, path: str | Path, tag: str = "dengen") -> None:
        """Write `qid Q0 docid rank score tag` lines, ranks from 1."""
        path = Path(path)
        for qid, docs in self.items():
            bad = next((i for i in (qid, *docs) if not i or any(c.isspace() for c in i)), None)
            if bad is not None:
                raise ValueError(f"{path}: id {bad!r} is empty or holds white space, which a TREC run file cannot hold")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:  # a reader sees a whole run
            for qid in sorted(self):
                for rank, (doc_id, score) in enumerate(ranked(self[qid]), start=1):
                    out.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")

    @classmethod
    def from_trec(cls, path: str | Path) -> Run:
        """Read a TREC run file (six whitespace-separated columns)."""
        run = cls()
        with open(path, encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                cols = line.split()
                if len(cols) != 6:
                    raise DataError(path, lineno, "line", f"expected 6 columns (qid Q0 docid rank score tag), got {len(cols)}")
                qid, _, doc_id, _, score, _ = cols
                try:
                    value = float(score)
                except ValueError:
                    raise DataError(path, lineno, "score", f"not a number: {score!r}") from None
                docs = run.setdefault(qid, {})
                if doc_id in docs:
                    raise DataError(path, lineno, "docid", f"doc {doc_id!r} appears twice for query {qid!r}")
                docs[doc_id] = value
        return run
