"""One FM-index seen at a finer granularity: its documents split into units (UGR's shared index).

UGR (Chen et al., SIGIR 2023) searches document, passage and sentence granularities over one
FM-index. Here an `FMIndex` holds the coarse documents (a page: `title, eos, paragraph 1 tokens,
paragraph 2 tokens, ...`) and `FMUnits` presents the same index as if each unit had been indexed on its
own, as `header + unit tokens` (the header is the document's `title, eos`, which every unit keeps, as
KILT passages keep their page title):

- constrained decoding (`range`, `extend`, `next_tokens`) and corpus counts are the shared index's: the
  n-grams a model may generate are the corpus text's at every granularity;
- `locate` maps each occurrence to its unit; an occurrence inside the header (a title) belongs to every
  unit of the document, as it would with per-unit indexes (one running on into the body, to the first
  non-empty unit only: n-grams from the title into a later unit, which per-unit indexes would hold, are not in the
  shared text); an n-gram that runs across two units is credited to the unit it starts in;
- `doc_starts` and offsets are those of the per-unit stream (`header + unit` back to back), so SEAL's
  coverage bookkeeping (`seal_scoring.first_stage`) sees each unit's copy of a title as its own span.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from indexes.fmindex import FMIndex


class FMUnits:
    """`fm` with each document cut into units: unit u is tokens[starts[u]:ends[u]] of document docs[u].

    Units of a document are contiguous and in order; the tokens before a document's first unit are its
    header. Anything not defined here (count, range, extend, next_tokens, n_tokens, ...) is `fm`'s.

    Example:
        >>> fm = FMIndex.build([[9, 1, 2, 3, 4]])          # header [9], units [1, 2] and [3, 4]
        >>> units = FMUnits(fm, starts=[1, 3], ends=[3, 5], docs=[0, 0])
        >>> units.locate([3]), units.locate([FMIndex.BOUNDARY, 9]), units.doc_tokens(1).tolist()
        ([(1, 1)], [(0, 0), (1, 0)], [9, 3, 4])
    """

    BOUNDARY = FMIndex.BOUNDARY
    ARRAYS = ("unit_starts", "unit_ends", "unit_docs")

    def __init__(self, fm: FMIndex, starts: Sequence[int], ends: Sequence[int], docs: Sequence[int]):
        self.fm = fm
        self.unit_starts = np.asarray(starts, dtype=np.int64)
        self.unit_ends = np.asarray(ends, dtype=np.int64)
        self.unit_docs = np.asarray(docs, dtype=np.int64)
        if not (len(self.unit_starts) == len(self.unit_ends) == len(self.unit_docs)):
            raise ValueError("unit starts, ends and documents differ in length")
        if len(self.unit_docs) and (np.any(np.diff(self.unit_docs) < 0) or np.any(self.unit_ends < self.unit_starts)
                                    or np.any(self.unit_starts[1:] < self.unit_ends[:-1])):
            raise ValueError("units must be ordered, non-overlapping spans, grouped by document")
        doc_starts = np.asarray(fm.doc_starts, dtype=np.int64)
        self._first_unit = np.searchsorted(self.unit_docs, np.arange(fm.n_docs + 1))  # units of d: [first[d], first[d+1])
        has_units = self._first_unit[:-1] < self._first_unit[1:]
        body_start = doc_starts[:-1].copy()
        body_start[has_units] = self.unit_starts[self._first_unit[:-1][has_units]]
        self._header_len = body_start - doc_starts[:-1]  # per document
        lengths = self._header_len[self.unit_docs] + (self.unit_ends - self.unit_starts)
        self.doc_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # the per-unit stream's

    def __getattr__(self, name):  # count, range, extend, full_range, next_tokens, n_tokens: the shared index's
        return getattr(self.fm, name)

    @property
    def n_docs(self) -> int:
        return len(self.unit_docs)

    def units_of(self, doc: int) -> range:
        return range(int(self._first_unit[doc]), int(self._first_unit[doc + 1]))

    def locate(self, ngram: Sequence[int], limit: int | None = None) -> list[tuple[int, int]]:
        """(unit, offset in `header + unit`) of up to `limit` occurrences; a header hit counts once per unit."""
        found: list[tuple[int, int]] = []
        length = len(ngram) - (1 if ngram[0] == self.BOUNDARY else 0)
        for doc, offset in self.fm.locate(ngram, limit=limit):
            position = int(self.fm.doc_starts[doc]) + offset
            header = int(self._header_len[doc])
            if offset + length <= header:  # inside the title: every unit of the document carries it
                found += [(u, offset) for u in self.units_of(doc)]
            else:  # the unit holding its first body token (from the title on: the first non-empty unit)
                at = max(position, int(self.fm.doc_starts[doc]) + header)
                u = int(np.searchsorted(self.unit_starts, at, side="right")) - 1
                if 0 <= u < self.n_docs and self.unit_docs[u] == doc and at < self.unit_ends[u]:
                    found.append((u, header + position - int(self.unit_starts[u])))
            if limit is not None and len(found) >= limit:
                return found[:limit]
        return found

    def doc_tokens(self, unit: int) -> np.ndarray:
        """`header + unit` tokens of `unit` (what a per-unit index would have stored for it)."""
        if not 0 <= unit < self.n_docs:
            raise IndexError(f"unit {unit} out of range: the index holds {self.n_docs}")
        doc = int(self.unit_docs[unit])
        start = int(self.fm.doc_starts[doc])
        header = self.fm.tokens[start : start + int(self._header_len[doc])]
        return np.concatenate([header, self.fm.tokens[self.unit_starts[unit] : self.unit_ends[unit]]])

    def write_arrays(self, folder: Path) -> None:
        """The unit arrays as .npy files (the FM-index itself is written by its own `write_arrays`)."""
        for name in self.ARRAYS:
            np.save(Path(folder) / f"{name}.npy", getattr(self, name))

    @classmethod
    def read_arrays(cls, fm: FMIndex, folder: str | Path) -> "FMUnits":
        return cls(fm, *[np.load(Path(folder) / f"{name}.npy", mmap_mode="r") for name in cls.ARRAYS])
