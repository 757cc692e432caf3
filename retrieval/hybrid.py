"""Hybrid retrieval: fuse the rankings of two or more retrievers.

- Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): score(d) = sum_r w_r / (k + rank_r(d)),
  ranks from 1, k = 60 as in the paper; a document absent from a ranking adds nothing. The paper's RRF has
  every w_r = 1 (the default); other weights give the weighted RRF of Elasticsearch's and Vespa's hybrid search.
- Normalised weighted sum: each member's scores for a query are min-max normalised to [0, 1]
  (a document a member did not return gets 0), then summed with the members' weights.
"""
from __future__ import annotations

from pathlib import Path

from retrieval.api import Retriever, load_retriever
from retrieval.data import Corpus
from retrieval.errors import SpecError
from retrieval.run import ranked

FUSIONS = ("rrf", "weighted")


def rrf(rankings: list[dict[str, float]], k: int = 60, weights: list[float] | None = None) -> dict[str, float]:
    """Reciprocal rank fusion of one query's rankings ({doc_id: score} each), each weighted (default 1)."""
    fused: dict[str, float] = {}
    for scores, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, (doc_id, _) in enumerate(ranked(scores), start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (k + rank)
    return fused


def weighted_sum(rankings: list[dict[str, float]], weights: list[float]) -> dict[str, float]:
    """Sum of min-max normalised scores times weights; a member where all scores tie gives each 1.0."""
    fused: dict[str, float] = {}
    for scores, weight in zip(rankings, weights, strict=True):
        if not scores:
            continue
        low, high = min(scores.values()), max(scores.values())
        for doc_id, score in scores.items():
            norm = (score - low) / (high - low) if high > low else 1.0
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * norm
    return fused


def fuse(rankings: list[dict[str, float]], fusion: str = "rrf", weights: list[float] | None = None,
         rrf_k: int = 60) -> dict[str, float]:
    """One query's fused scores under `fusion` ("rrf" or "weighted"); weights default to 1 per ranking."""
    weights = weights or [1.0] * len(rankings)
    return rrf(rankings, rrf_k, weights) if fusion == "rrf" else weighted_sum(rankings, weights)


class HybridRetriever(Retriever):
    """Fusion of member retrievers.

    Args:
        members: retrievers, or specs for `retrieval.spec.parse_spec` ("bm25", "dense:model=minilm",
            or the folder of a saved index).
        fusion: "rrf" or "weighted".
        rrf_k: the RRF constant (60).
        weights: per-member weights, for either fusion (default: equal, 1 each).
        depth: how many results to take from each member before fusing (at least the k asked for).

    Example:
        >>> r = HybridRetriever(members=["bm25", "dense:model=minilm"], fusion="rrf")
    """

    kind = "hybrid"

    def __init__(
        self,
        members: list | None = None,
        fusion: str = "rrf",
        rrf_k: int = 60,
        weights: list[float] | None = None,
        depth: int = 1000,
    ):
        from retrieval.spec import parse_spec

        members = [m if isinstance(m, Retriever) else parse_spec(m) for m in (members or [])]
        if len(members) < 2:
            raise SpecError("a hybrid retriever needs at least two members")
        if fusion not in FUSIONS:
            raise SpecError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        try:
            weights, rrf_k, depth = [float(w) for w in weights] if weights else [1.0] * len(members), int(rrf_k), int(depth)
        except (TypeError, ValueError):  # e.g. weights=0.4 (one number) or rrf_k=sixty
            raise SpecError(f"weights={weights!r}, rrf_k={rrf_k!r}, depth={depth!r}: expected a list of numbers "
                            f"(weights=0.4;0.6) and integers") from None
        if len(weights) != len(members):
            raise SpecError(f"{len(weights)} weights for {len(members)} members")
        super().__init__(fusion=fusion, rrf_k=rrf_k, weights=weights, depth=depth)
        self.members = members
        if all(m.doc_count for m in members):
            self.doc_count = members[0].doc_count
            self.build_seconds = 0.0  # assembled from indexed members: nothing was built

    def check_index_options(self, engine: str = "local", **options) -> None:
        super().check_index_options(engine, **options)
        for member in self.members:  # a bad dense member must fail before the BM25 one is built
            member.check_index_options()

    def describe(self) -> dict:
        return {**super().describe(), "members": [m.describe() for m in self.members]}

    def _index(self, corpus: Corpus) -> None:
        for member in self.members:
            if not member.holds(corpus):  # a saved member built on this very corpus is kept as it is
                member.index(corpus)

    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        depth = max(k, self.config["depth"])
        runs = [m.search(queries, depth) for m in self.members]
        fused = {}
        for qid in queries:
            scores = fuse([run.get(qid, {}) for run in runs], self.config["fusion"], self.config["weights"], self.config["rrf_k"])
            fused[qid] = dict(ranked(scores)[:k])
        return fused

    def doc_text(self, doc_id: str) -> str | None:
        return next((t for m in self.members if (t := m.doc_text(doc_id)) is not None), None)

    def _save_files(self, folder: Path) -> dict:
        for i, member in enumerate(self.members):
            member.save_inside(folder / f"member-{i}")
        return {"members": [m.kind for m in self.members]}

    @classmethod
    def _init_args(cls, folder: Path, manifest: dict) -> dict:
        # the hybrid's own manifest already verified every member file
        members = [load_retriever(folder / f"member-{i}", verify=False) for i in range(len(manifest["members"]))]
        return {**manifest["config"], "members": members}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        pass
