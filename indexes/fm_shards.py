"""An FM-index split into shards of whole documents that answers exactly as one index over all of them.

Each shard is an `FMIndex` over a contiguous run of documents, built on its own (in parallel, or on other
machines). No n-gram crosses a document boundary, so an n-gram's occurrences are the union of the shards'
occurrences and every merge is exact:

- `count`: the sum of the shards' counts;
- `next_tokens`: the shards' {token: count} added together;
- `locate`: each shard's (document, offset) with the shard's first global document added;
- row ranges become one range per shard (`range`, `extend`, `full_range`), so constrained decoding
  (`retrieval.generative.constrained.IndexConstraint`) and SEAL's scoring run unchanged on a sharded index;
- `doc_starts` and `n_tokens` are those of the one index over all documents.

    >>> sharded = ShardedFMIndex.build([[5, 6, 7], [6, 7, 8], [7, 9]], shards=2)
    >>> sharded.count([6, 7]), sharded.next_tokens([7]), sharded.locate([7, 9])
    (2, {8: 1, 9: 1}, [(2, 0)])
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from indexes.fmindex import FMIndex


class ShardedFMIndex:
    """Several `FMIndex` shards, in document order, queried as one index."""

    BOUNDARY = FMIndex.BOUNDARY

    def __init__(self, shards: Sequence[FMIndex]):
        if not shards:
            raise ValueError("a sharded FM-index needs at least one shard")
        self.shards = list(shards)
        self._first_doc = np.concatenate([[0], np.cumsum([s.n_docs for s in self.shards])]).astype(np.int64)
        token_base = np.concatenate([[0], np.cumsum([s.n_tokens for s in self.shards])]).astype(np.int64)
        self.doc_starts = np.concatenate([np.asarray(s.doc_starts[:-1], dtype=np.int64) + base
                                          for s, base in zip(self.shards, token_base)] + [token_base[-1:]])

    @staticmethod
    def split(n_docs: int, shards: int) -> list[tuple[int, int]]:
        """[start, end) of `shards` contiguous runs of (nearly) equal document counts, never an empty one."""
        if shards < 1:
            raise ValueError(f"shards={shards}: must be at least 1")
        bounds = np.linspace(0, n_docs, min(shards, max(1, n_docs)) + 1).round().astype(int)
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    @classmethod
    def build(cls, docs: Iterable[Sequence[int]], shards: int) -> "ShardedFMIndex":
        """Split `docs` into `shards` runs (`split`) and index each in this process."""
        docs = list(docs)
        return cls([FMIndex.build(docs[a:b]) for a, b in cls.split(len(docs), shards)])

    @property
    def n_docs(self) -> int:
        return int(self._first_doc[-1])

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    # ---- row ranges: one per shard
    def full_range(self) -> tuple:
        return tuple(s.full_range() for s in self.shards)

    def range(self, ngram: Sequence[int]) -> tuple:
        return tuple(s.range(ngram) for s in self.shards)

    def extend(self, row_range: tuple, token: int) -> tuple:
        return tuple(s.extend(r, token) for s, r in zip(self.shards, row_range))

    def rows_count(self, row_range: tuple) -> int:
        return sum(s.rows_count(r) for s, r in zip(self.shards, row_range))

    # ---- merged answers
    def count(self, ngram: Sequence[int]) -> int:
        return sum(s.count(ngram) for s in self.shards)

    def next_tokens(self, prefix: Sequence[int], row_range: tuple | None = None) -> dict[int, int]:
        ranges = self.range(prefix) if row_range is None else row_range
        merged: Counter = Counter()
        for shard, rows in zip(self.shards, ranges):
            merged.update(shard.next_tokens((), row_range=rows))
        return dict(merged)

    def locate(self, ngram: Sequence[int], limit: int | None = None) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        for shard, first in zip(self.shards, self._first_doc):
            left = None if limit is None else limit - len(found)
            if left is not None and left <= 0:
                break
            found += [(int(first) + doc, offset) for doc, offset in shard.locate(ngram, limit=left)]
        return found

    def doc_tokens(self, doc: int) -> np.ndarray:
        if not 0 <= doc < self.n_docs:
            raise IndexError(f"document {doc} out of range: the index holds {self.n_docs}")
        shard = int(np.searchsorted(self._first_doc, doc, side="right")) - 1
        return self.shards[shard].doc_tokens(doc - int(self._first_doc[shard]))
