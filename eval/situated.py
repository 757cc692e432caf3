"""Chunk-level (situated) retrieval tasks: find the passage inside its document, not only the document.

- SciFact evidence sentences (../shared/data/scifact-claims, Wadden et al. 2020): a claim is the query, its
  rationale sentences are the relevant chunks, every abstract sentence is a chunk. Only claims with
  evidence are judged. Splits: "train" (809 claims, 505 with evidence), "dev" (300, 188 with evidence).
- QMSum turn spans (../shared/data/qmsum, Zhong et al. 2021): a specific query is the query, every turn
  inside its `relevant_text_span`s (inclusive) is a relevant chunk, every turn a chunk. Splits "train",
  "dev" (QMSum "val"), "test".

Each task's corpus has one chunk per line of a document's text, so `SituatedRetriever(unit="lines",
window=1)` numbers chunks exactly as the qrels do: chunk `<doc>#c<n>` is line n. SciFact sentences are
stripped and their inner newlines (3,304 sentences have one) become spaces; QMSum's text already has one
turn per line.

A corpus can be a pool: every document the judged queries point to, plus `pool_docs - that` distractor
documents drawn with `seed` from the rest (None: the whole corpus). Queries keep only the ones whose
relevant documents are all in the pool (all of them, by construction).
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import NamedTuple

from retrieval.data import Corpus, Doc, load_corpus, load_queries
from retrieval.longdoc import chunk_id, line_spans

SPLITS = {"scifact": ("train", "dev"), "qmsum": ("train", "dev", "test")}


class ChunkTask(NamedTuple):
    """Queries judged at chunk level (`qrels`: {query: {chunk id: 1}}) and at document level (`doc_qrels`)."""

    name: str
    split: str
    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    doc_qrels: dict[str, dict[str, int]]

    def describe(self) -> dict:
        chunks = sum(len(line_spans(d.text)) for d in self.corpus)
        return {"name": self.name, "split": self.split, "docs": len(self.corpus), "chunks": chunks,
                "queries": len(self.queries), "relevant_chunks": sum(len(v) for v in self.qrels.values())}


def _pool(corpus: Corpus, needed: set[str], pool_docs: int | None, seed: int) -> Corpus:
    if pool_docs is None or pool_docs >= len(corpus):
        return corpus
    rest = sorted(set(corpus.ids) - needed)
    extra = random.Random(seed).sample(rest, max(0, pool_docs - len(needed)))
    keep = needed | set(extra)
    return Corpus((d for d in corpus if d.id in keep), source=corpus.source)


def scifact_sentences(folder: str | Path, split: str = "dev", pool_docs: int | None = None, seed: int = 0) -> ChunkTask:
    """SciFact claims -> evidence sentences. `split` "train" or "dev" (BEIR's test set is the dev claims)."""
    folder = Path(folder)
    if split not in SPLITS["scifact"]:
        raise ValueError(f"scifact-claims split must be one of {SPLITS['scifact']}, got {split!r}")
    docs = []
    with gzip.open(folder / "corpus-sentences.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            text = "\n".join(" ".join(s.split()) for s in row["abstract"])  # one sentence per line
            docs.append(Doc(str(row["doc_id"]), row["title"].strip(), text))
    corpus = Corpus(docs, source=str(folder))
    queries, qrels, doc_qrels = {}, {}, {}
    with gzip.open(folder / f"claims_{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            claim = json.loads(line)
            if not claim["evidence"]:
                continue
            qid = str(claim["id"])
            queries[qid] = claim["claim"]
            qrels[qid] = {chunk_id(doc, i): 1 for doc, sets in claim["evidence"].items() for s in sets for i in s["sentences"]}
            doc_qrels[qid] = {doc: 1 for doc in claim["evidence"]}
    needed = {d for docs_ in doc_qrels.values() for d in docs_}
    return ChunkTask("scifact-sentences", split, _pool(corpus, needed, pool_docs, seed), queries, qrels, doc_qrels)


def qmsum_turns(folder: str | Path, split: str = "test", pool_docs: int | None = None, seed: int = 0) -> ChunkTask:
    """QMSum specific queries -> turns inside their relevant spans. A pool here is a seeded sample of the
    split's own meetings (`pool_docs` of them), with only those meetings' queries; no distractor meetings
    are added, since every query is asked of one meeting and the others of its split are the distractors."""
    folder = Path(folder)
    if split not in SPLITS["qmsum"]:
        raise ValueError(f"qmsum split must be one of {SPLITS['qmsum']}, got {split!r}")
    source_split = "val" if split == "dev" else split
    with open(folder / "qrels-turn-spans.jsonl", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if r["split"] == source_split]
    meetings = sorted({r["corpus-id"] for r in rows})
    if pool_docs is not None and pool_docs < len(meetings):
        meetings = sorted(random.Random(seed).sample(meetings, pool_docs))
    keep = set(meetings)
    corpus = Corpus((d for d in load_corpus(folder) if d.id in keep), source=str(folder))
    for doc in corpus:  # chunk n must be turn n
        if len(line_spans(doc.text)) != doc.text.count("\n") + 1:
            raise ValueError(f"{folder}: meeting {doc.id} has a blank turn; turn numbers would not match chunk numbers")
    all_queries = load_queries(folder / "queries.jsonl")
    queries, qrels, doc_qrels = {}, {}, {}
    for r in rows:
        if r["corpus-id"] not in keep:
            continue
        qid = r["query-id"]
        queries[qid] = all_queries[qid]
        qrels[qid] = {chunk_id(r["corpus-id"], t): 1 for s, e in r["turn_spans"] for t in range(s, e + 1)}
        doc_qrels[qid] = {r["corpus-id"]: 1}
    return ChunkTask("qmsum-turns", split, corpus, queries, qrels, doc_qrels)


def load_chunk_task(task: str, folder: str | Path, split: str, pool_docs: int | None = None, seed: int = 0) -> ChunkTask:
    if task == "scifact":
        return scifact_sentences(folder, split, pool_docs, seed)
    if task == "qmsum":
        return qmsum_turns(folder, split, pool_docs, seed)
    raise ValueError(f"task must be 'scifact' or 'qmsum', got {task!r}")
