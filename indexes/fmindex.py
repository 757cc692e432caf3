"""FM-index over integer token streams: n-gram counts, locations and next-token sets for a whole corpus.

The corpus is one stream, documents separated by a boundary symbol. The index is built over the stream
*reversed* (as SEAL's index does), so that backward search consumes an n-gram in its forward order: the
row range of a prefix extends to the range of `prefix + [t]` in one step, which is what constrained
decoding needs, and the BWT symbols inside a prefix's range are exactly the tokens that follow it.

Internal alphabet: 0 is a unique end sentinel (so suffix order equals rotation order), 1 is the document
boundary, and token t is stored as t + 2. Patterns may begin with `FMIndex.BOUNDARY` to match only at
the start of a document (SEAL's titles). Patterns never match across a document boundary unless they
contain it.

The suffix array comes from pydivsufsort and rank / distinct-values-in-range queries from a wavelet
matrix (the `wavelet-matrix` package) over the BWT. Saved folders keep every array as .npy, loaded
memory-mapped; the wavelet matrix is rebuilt from the memory-mapped BWT at load (it cannot be
serialised), which takes about a third of a second per million tokens. An index just built makes it at
its first query, so building and saving an index never pays for it. A memory-mapped load asks the
package for its `on_disk` layout (bit vectors in unlinked temporary files, mapped), so the whole index
is file-backed pages the kernel may drop under memory pressure, none of it anonymous memory.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from indexes.manifest import IndexLoadError, open_index, write_index_dir

SENTINEL, SEPARATOR, SHIFT = 0, 1, 2
_WAVELET_BUILD = threading.Lock()
KIND = "fmindex"


class FMIndex:
    """Count, locate and continue n-grams of token ids over a corpus of documents.

    Example:
        >>> fm = FMIndex.build([[5, 6, 7], [6, 7, 8]])
        >>> fm.count([6, 7]), fm.next_tokens([6]), fm.locate([7, 8])
        (2, {7: 2}, [(1, 1)])
    """

    BOUNDARY = -1  # a pattern's first element may be BOUNDARY: "at the start of a document"

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, suffix_array: np.ndarray, bwt: np.ndarray,
                 *, wavelet_on_disk: bool = False, lazy: bool = False):
        """lazy: build the wavelet matrix at the first query instead of now (`build` does: an index that is
        built and saved never queries it, and a saved index rebuilds it at load)."""
        self.tokens = tokens  # forward stream: documents back to back, no separators (int32)
        self.doc_starts = doc_starts  # n_docs + 1 offsets into `tokens`
        self.suffix_array = suffix_array  # over the reversed internal text
        self.bwt = bwt
        counts = np.bincount(bwt, minlength=SHIFT)
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # C[c]: rows before symbol c
        self._alphabet = len(counts)
        self.wavelet_on_disk = wavelet_on_disk  # its temporary files go where $TMPDIR says
        self._wavelet = None
        if not lazy:
            self._build_wavelet()

    def _build_wavelet(self):
        from wavelet_matrix import WaveletMatrix

        with _WAVELET_BUILD:  # concurrent first queries (dengen serve) build it once
            if self._wavelet is None:
                self._wavelet = WaveletMatrix(np.asarray(self.bwt), on_disk=self.wavelet_on_disk)
        return self._wavelet

    @property
    def _wm(self):
        """The wavelet matrix over the BWT (rank and distinct-values-in-range queries)."""
        return self._wavelet if self._wavelet is not None else self._build_wavelet()

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def build(cls, docs: Iterable[Sequence[int]], *, progress: bool = False) -> "FMIndex":
        """Index `docs`, each a sequence of non-negative token ids."""
        return cls(*cls.build_arrays(docs, progress=progress), lazy=True)

    @staticmethod
    def build_arrays(docs: Iterable[Sequence[int]], *, progress: bool = False) -> tuple[np.ndarray, ...]:
        """The stored arrays (`ARRAYS` order) of the index over `docs`, without the wavelet matrix: what a
        worker that builds a shard sends back (retrieval.ray_engine)."""
        import pydivsufsort

        pieces, lengths = [], []
        for i, doc in enumerate(tqdm(docs, desc="fm-index: gathering", unit="doc", disable=not progress)):
            given = np.asarray(doc)
            if given.size and not np.issubdtype(given.dtype, np.integer):  # 1.7 would silently become 1
                raise ValueError(f"document {i}: token ids must be integers, got {given.dtype}")
            arr = given.astype(np.int64)
            if arr.ndim != 1 or (arr.size and arr.min() < 0):
                raise ValueError(f"document {i}: token ids must be a flat sequence of non-negative integers")
            pieces.append(arr)
            lengths.append(arr.size)
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        del pieces  # int64 copies of every document: the build's peak memory matters at millions of documents
        if tokens.size and tokens.max() + SHIFT >= 2**31:
            raise ValueError(f"token id {int(tokens.max())} too large for an int32 index")
        tokens = tokens.astype(np.int32)
        doc_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # internal text T = SEP d1 SEP d2 ... SEP dn; the index is over reverse(T) + SENTINEL
        text = np.full(tokens.size + len(lengths) + 1, SEPARATOR, dtype=np.int32)
        text[-1] = SENTINEL
        forward = np.full(tokens.size + len(lengths), SEPARATOR, dtype=np.int32)
        is_token = np.ones(forward.size, dtype=bool)  # a mask, not int64 positions: 1 byte per symbol
        is_token[doc_starts[:-1] + np.arange(len(lengths))] = False  # document d's separator sits at start_d + d
        forward[is_token] = tokens + SHIFT
        del is_token
        text[:-1] = forward[::-1]
        suffix_array = pydivsufsort.divsufsort(text)
        bwt = text[suffix_array - 1]  # suffix 0 wraps to the sentinel at the end, as a rotation would
        return tokens, doc_starts, suffix_array, bwt

    # ---- queries --------------------------------------------------------------------------------------

    @property
    def n_docs(self) -> int:
        return len(self.doc_starts) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)

    def _symbol(self, token: int) -> int:
        if token == self.BOUNDARY:
            return SEPARATOR
        if token < 0:  # would alias the sentinel (-2) or index C[] from the end
            raise ValueError(f"token id {int(token)} is negative: only BOUNDARY ({self.BOUNDARY}) may be")
        return int(token) + SHIFT

    def extend(self, row_range: tuple[int, int], token: int) -> tuple[int, int]:
        """The row range of `prefix + [token]`, given the row range of `prefix` (one backward-search step)."""
        low, high = row_range
        if token == self.BOUNDARY and row_range != self.full_range():
            raise ValueError("BOUNDARY may only be an n-gram's first element")
        c = self._symbol(token)
        if c >= self._alphabet or low >= high:
            return (0, 0)
        base = int(self._first[c])
        return (base + self._wm.rank(c, low), base + self._wm.rank(c, high))

    def full_range(self) -> tuple[int, int]:
        return (0, len(self.bwt))

    def range(self, ngram: Sequence[int]) -> tuple[int, int]:
        """Rows [low, high) whose reversed suffixes start with `ngram`; the empty n-gram spans everything."""
        rows = self.full_range()
        for token in ngram:
            rows = self.extend(rows, token)  # refuses a BOUNDARY after the first token
            if rows[0] >= rows[1]:
                return (0, 0)
        return rows

    def rows_count(self, row_range: tuple[int, int]) -> int:
        """Occurrences behind a row range (a sharded index sums its shards' ranges)."""
        return max(0, row_range[1] - row_range[0])

    def count(self, ngram: Sequence[int]) -> int:
        """Occurrences of `ngram` in the corpus (the empty n-gram counts every token position)."""
        if len(ngram) == 0:
            return self.n_tokens
        low, high = self.range(ngram)
        return high - low

    def next_tokens(self, prefix: Sequence[int], row_range: tuple[int, int] | None = None) -> dict[int, int]:
        """{token: count} of the tokens that follow `prefix` somewhere inside a document.

        An empty prefix gives every token with its corpus count. Pass `row_range` (from `range` or
        `extend`) to skip the backward search."""
        low, high = self.range(prefix) if row_range is None else row_range
        if low >= high or self._alphabet <= SHIFT:  # the second: a corpus with no tokens at all
            return {}
        found = self._wm.range_list(low, high, SHIFT, self._alphabet)
        return {item["value"] - SHIFT: item["count"] for item in found}

    def locate(self, ngram: Sequence[int], limit: int | None = None) -> list[tuple[int, int]]:
        """(document, token offset) of up to `limit` occurrences of `ngram` (row order, not text order).

        A pattern that starts with BOUNDARY is located at the document's first token."""
        if len(ngram) == 0:
            raise ValueError("locate needs a non-empty n-gram")
        low, high = self.range(ngram)
        if limit is not None:
            high = min(high, low + limit)
        if low >= high:
            return []
        n = self.n_tokens + self.n_docs  # length of the forward internal text
        starts = n - np.asarray(self.suffix_array[low:high], dtype=np.int64) - len(ngram)
        # forward internal position -> document: document d's separator sits at doc_starts[d] + d. A BOUNDARY
        # pattern starts at that separator, so it is looked up before skipping it: the position after an
        # empty document's separator is the next document's separator.
        docs = np.searchsorted(self.doc_starts[:-1] + np.arange(self.n_docs), starts, side="right") - 1
        if ngram[0] == self.BOUNDARY:
            starts = starts + 1  # skip the separator itself
        offsets = starts - (self.doc_starts[docs] + docs) - 1
        return list(zip(docs.tolist(), offsets.tolist()))

    def doc_tokens(self, doc: int) -> np.ndarray:
        """Token ids of document `doc` (a view of the stored stream)."""
        if not 0 <= doc < self.n_docs:
            raise IndexError(f"document {doc} out of range: the index holds {self.n_docs}")
        return self.tokens[self.doc_starts[doc] : self.doc_starts[doc + 1]]

    def nbytes(self) -> int:
        """Bytes of the stored arrays (the wavelet matrix, rebuilt at load, is not counted)."""
        return sum(a.nbytes for a in (self.tokens, self.doc_starts, self.suffix_array, self.bwt))

    # ---- persistence ----------------------------------------------------------------------------------

    ARRAYS = ("tokens", "doc_starts", "suffix_array", "bwt")

    def write_arrays(self, folder: Path) -> None:
        """The arrays as .npy files in `folder` (for an index saved inside another, e.g. a retriever's)."""
        for name in self.ARRAYS:
            np.save(Path(folder) / f"{name}.npy", np.asarray(getattr(self, name)))

    @classmethod
    def read_arrays(cls, folder: str | Path, *, mmap: bool = True) -> "FMIndex":
        arrays = [np.load(Path(folder) / f"{name}.npy", mmap_mode="r" if mmap else None) for name in cls.ARRAYS]
        return cls(*arrays, wavelet_on_disk=mmap)

    def save(self, path: str | Path, *, overwrite: bool = False, **fields) -> dict:
        """Write the index folder atomically (manifest + .npy arrays); `fields` go into the manifest.
        `overwrite` replaces a dengen index at `path` (indexes.manifest.write_index_dir)."""

        def fill(tmp: Path) -> dict:
            self.write_arrays(tmp)
            return {"kind": KIND, "n_docs": self.n_docs, "n_tokens": self.n_tokens, **fields}

        return write_index_dir(path, fill, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True, verify: bool = True) -> "FMIndex":
        saved = open_index(path, verify=verify)
        if saved.manifest["kind"] != KIND:
            raise IndexLoadError(f"{path}: a {saved.manifest['kind']!r} index, not an FM-index")
        fm = cls.read_arrays(saved.folder, mmap=mmap)
        fm._saved = saved  # holds the generation its arrays are mapped from
        return fm
