"""Long documents: cut them to a retriever's limit (truncate) or split them into windows (chunk).

- Truncate: keep a document's first `max_words` words (`truncate_corpus`), or, for a dense encoder, let
  sentence-transformers cut at its token limit, which it does silently; `encoder_truncation` counts what
  that limit cuts with the model's own tokenizer, and `warn_truncation` says it once.
- Chunk: `ChunkedRetriever` splits every document into overlapping windows of words or tokens, indexes the
  windows with any inner dengen retriever, and scores a document by the best score of its windows
  (max-pooling, MaxP in Dai & Callan, "Deeper Text Understanding for IR with Contextual Neural Language
  Modeling", SIGIR 2019).

Chunk ids are `<doc id>#c<n>`; the parent is everything before the last `#c`, so any doc id works.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

from retrieval.api import Retriever, load_retriever
from retrieval.data import Corpus, Doc
from retrieval.run import ranked

UNITS = ("words", "tokens")
CHUNK_SEP = "#c"
_WORD = re.compile(r"\S+")


class TruncationStats(NamedTuple):
    """How much a length limit cuts from a corpus (in `unit`s: words or tokens)."""

    docs: int
    docs_cut: int
    units: int
    units_cut: int
    limit: int
    unit: str

    @property
    def cut_fraction(self) -> float:
        return self.units_cut / self.units if self.units else 0.0

    def message(self, what: str = "documents") -> str:
        return (f"{self.docs_cut} of {self.docs} {what} exceed {self.limit} {self.unit}; "
                f"{100 * self.cut_fraction:.1f}% of {self.unit} were cut")

    def as_dict(self) -> dict:
        return {**self._asdict(), "cut_fraction": self.cut_fraction}


def truncation_stats(lengths: list[int], limit: int, unit: str) -> TruncationStats:
    """What cutting each length to `limit` removes.

    Args:
        lengths: each document's length in `unit`s.
        limit: the most units kept per document.
        unit: "words" or "tokens", for messages.
    """
    cut = [max(0, n - limit) for n in lengths]
    return TruncationStats(len(lengths), sum(c > 0 for c in cut), sum(lengths), sum(cut), limit, unit)


def warn_truncation(stats: TruncationStats, what: str = "documents", advice: str = "") -> None:
    """One warning when anything is cut (and none when nothing is)."""
    if stats.docs_cut:
        warnings.warn(stats.message(what) + (f": {advice}" if advice else ""), stacklevel=3)


# ---------------------------------------------------------------- truncation


def truncate_words(text: str, max_words: int) -> str:
    """The first `max_words` whitespace-separated words of `text`, with the original spacing kept."""
    for i, match in enumerate(_WORD.finditer(text)):
        if i == max_words - 1:
            return text[: match.end()]
    return text


def truncate_corpus(corpus: Corpus, max_words: int, *, warn: bool = True) -> tuple[Corpus, TruncationStats]:
    """A corpus whose texts keep their first `max_words` words (titles are kept whole).

    Args:
        corpus: the documents.
        max_words: words kept per document text.
        warn: emit one warning saying how much was cut.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    stats = truncation_stats([len(_WORD.findall(d.text)) for d in corpus], max_words, "words")
    if warn:
        warn_truncation(stats)
    cut = Corpus((Doc(d.id, d.title, truncate_words(d.text, max_words)) for d in corpus), source=corpus.source)
    return cut, stats


def encoder_of(retriever: Retriever):
    """The sentence encoder of a dense retriever (anything with `encoder.model.tokenizer`), else None."""
    if "model" not in retriever.config:  # checked first: `.encoder` loads the model
        return None
    encoder = getattr(retriever, "encoder", None)
    return encoder if hasattr(getattr(encoder, "model", None), "tokenizer") else None


def token_lengths(tokenizer, texts: list[str], batch: int = 256) -> list[int]:
    """Token counts as the encoder sees them (special tokens included), without truncating."""
    from tqdm.auto import tqdm

    lengths: list[int] = []
    for start in tqdm(range(0, len(texts), batch), desc="counting tokens", unit="batch", disable=len(texts) <= batch):
        ids = tokenizer(texts[start : start + batch], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


def encoder_truncation(encoder, texts: list[str], *, prefix: str = "", warn: bool = True, what: str = "documents",
                       advice: str = "") -> TruncationStats:
    """What a sentence encoder's token limit silently cuts from `texts`.

    Args:
        encoder: a `SentenceEncoder` (its `model.tokenizer` and `max_length` are used).
        texts: the texts it will encode.
        prefix: the document prefix the encoder prepends.
        warn: emit one warning when anything is cut.
        what: what the texts are, for the message ("documents", "chunks").
        advice: appended to the warning.
    """
    limit = int(encoder.max_length)
    stats = truncation_stats(token_lengths(encoder.model.tokenizer, [prefix + t for t in texts]), limit, "tokens")
    if warn:
        warn_truncation(stats, what, advice)
    return stats


# ---------------------------------------------------------------- chunking


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the whitespace-separated words of `text`."""
    return [m.span() for m in _WORD.finditer(text)]


def token_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the tokens of `text` (a fast tokenizer's offset mapping)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    return [tuple(span) for span in encoded["offset_mapping"]]


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Start positions of windows of `window` units, `stride` apart, covering n units.

    The last window is moved back to end at the last unit, so no window is a short tail
    (a few-word chunk can score oddly high with a dense encoder).
    """
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


def chunk_text(text: str, spans: list[tuple[int, int]], window: int, stride: int) -> list[str]:
    """The windows of `text`, each cut from the original string so spacing and newlines survive."""
    if not spans:
        return [text]
    return [text[spans[s][0] : spans[min(s + window, len(spans)) - 1][1]] for s in window_starts(len(spans), window, stride)]


def chunk_id(doc_id: str, n: int) -> str:
    return f"{doc_id}{CHUNK_SEP}{n}"


def parent_id(chunk: str) -> str:
    """The document a chunk id belongs to (ids are `<doc id>#c<n>`, so the last `#c` is ours)."""
    return chunk.rsplit(CHUNK_SEP, 1)[0]


def max_pool(chunk_scores: dict[str, float]) -> dict[str, float]:
    """Document scores as the maximum of their chunks' scores."""
    docs: dict[str, float] = {}
    for chunk, score in chunk_scores.items():
        doc = parent_id(chunk)
        if doc not in docs or score > docs[doc]:
            docs[doc] = score
    return docs


class ChunkedRetriever(Retriever):
    """Index windows of long documents with an inner retriever; a document scores its best window's score.

    Args:
        inner: the retriever for the windows: a spec ("bm25", "dense:model=minilm", a dict
            {"kind": "dense", "model": "minilm", ...}) or a `Retriever`. It is (re)built on the windows.
        window: units per window. The default, 150 words, is about 200 MiniLM tokens (QMSum averages
            1.32 tokens per word), under its 256-token limit with room for longer words.
        stride: units between window starts (default window // 2: 50% overlap).
        unit: "words" (whitespace) or "tokens" (the tokenizer of `tokenizer`, else of the inner encoder).
        tokenizer: model name or folder whose tokenizer counts tokens for unit="tokens" (default: the
            inner dense retriever's model).
        depth: windows fetched per query before pooling; deepened (doubling) for queries that reach fewer
            than k documents, so the top k documents are exact for an exact inner search.

    Example:
        >>> r = ChunkedRetriever(inner="dense:model=minilm", window=200, stride=100)
        >>> r.index(corpus); r.save("runs/qmsum-chunked")
        >>> # the same from a spec: parse_spec("chunked:inner=dense,window=200,stride=100")
    """

    kind = "chunked"
    chunks_documents = True

    def __init__(
        self,
        inner: str | dict | Retriever = "bm25",
        window: int = 150,
        stride: int | None = None,
        unit: str = "words",
        tokenizer: str | None = None,
        depth: int = 1000,
        **unknown,
    ):
        from retrieval.spec import parse_spec

        if unknown:  # most likely an inner option written at the outer level of a spec
            raise ValueError(
                f"chunked retriever: unknown option(s) {', '.join(sorted(unknown))}; options of the inner retriever go "
                "under inner., e.g. chunked:inner.kind=dense,inner.index=HNSW32,window=200 (or a JSON spec)"
            )
        window, stride = int(window), int(stride) if stride is not None else max(1, int(window) // 2)
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if window < 1 or not 1 <= stride <= window:
            raise ValueError(f"need window >= 1 and 1 <= stride <= window (no gaps), got window={window}, stride={stride}")
        super().__init__(window=window, stride=stride, unit=unit, tokenizer=tokenizer, depth=int(depth))
        self.inner = inner if isinstance(inner, Retriever) else parse_spec(inner)
        self.chunk_count = self.inner.doc_count
        self._tokenizer = None

    def describe(self) -> dict:
        return {**super().describe(), "inner": self.inner.describe()}

    # ------------------------------------------------------------ chunking
    def tokenizer(self):
        """The tokenizer that counts tokens for unit="tokens"."""
        if self._tokenizer is None:
            name = self.config["tokenizer"]
            if name is None:
                encoder = encoder_of(self.inner)
                if encoder is None:
                    raise ValueError("unit='tokens' needs a tokenizer: set tokenizer=<model name> (e.g. minilm) or use unit='words'")
                self._tokenizer = encoder.model.tokenizer
            else:
                from transformers import AutoTokenizer

                from retrieval.models import model_path

                self._tokenizer = AutoTokenizer.from_pretrained(str(model_path(name)))
        return self._tokenizer

    def chunks(self, doc: Doc) -> list[Doc]:
        """The windows of one document, each keeping the document's title."""
        if self.config["unit"] == "words":
            spans = word_spans(doc.text)
        else:
            spans = token_spans(self.tokenizer(), doc.text)
        texts = chunk_text(doc.text, spans, self.config["window"], self.config["stride"])
        return [Doc(chunk_id(doc.id, i), doc.title, t) for i, t in enumerate(texts)]

    def chunk_corpus(self, corpus: Corpus) -> Corpus:
        """Every document's windows, in corpus order."""
        from tqdm.auto import tqdm

        return Corpus(
            (c for doc in tqdm(corpus, desc=f"chunking ({self.config['unit']})", unit="doc", mininterval=1.0) for c in self.chunks(doc)),
            source=corpus.source,
        )

    # ------------------------------------------------------------ Retriever
    def _index(self, corpus: Corpus) -> None:
        chunks = self.chunk_corpus(corpus)
        encoder = encoder_of(self.inner)
        if encoder is not None:  # sentence-transformers would cut over-long windows silently
            encoder_truncation(encoder, [c.full_text for c in chunks], prefix=self.inner.config.get("doc_prefix", ""),
                               what="chunks", advice="lower window")
        self.inner.index(chunks)
        self.chunk_count = len(chunks)

    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        depth = min(max(self.config["depth"], 10 * k), self.chunk_count)
        pending, out = dict(queries), {}
        while pending:
            run = self.inner.search(pending, depth)
            for qid in list(pending):
                chunk_scores = run.get(qid, {})
                docs = max_pool(chunk_scores)
                # fewer than `depth` hits means the inner retriever has nothing more to give
                if len(docs) >= k or depth >= self.chunk_count or len(chunk_scores) < depth:
                    out[qid] = dict(ranked(docs)[:k])
                    del pending[qid]
            depth = min(2 * depth, self.chunk_count)
        return out

    def _save_files(self, folder: Path) -> dict:
        self.inner.save_inside(folder / "inner")
        self._write_docstore(folder)  # whole documents, for search_one's texts
        return {"inner": self.inner.kind, "chunk_count": self.chunk_count}

    @classmethod
    def _init_args(cls, folder: Path, manifest: dict) -> dict:
        # the outer manifest already verified every inner file
        return {**manifest["config"], "inner": load_retriever(folder / "inner", verify=False)}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        self.chunk_count = manifest["chunk_count"]


# ---------------------------------------------------------------- sentence and line units (situated chunks)

# a sentence ends at . ! or ? (optionally followed by closing quotes/brackets) before whitespace and a
# capital letter, digit or opening bracket; abbreviations like "e.g. the" do not split (lower case follows)
_SENTENCE_END = re.compile(r"""[.!?]["')\]]*(?=\s+["'(\[]?[A-Z0-9])""")
_LINE = re.compile(r"[^\n]*\S[^\n]*")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text` (a rule-based split, whitespace trimmed)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    trimmed = []
    for s, e in spans:
        piece = text[s:e]
        if piece.strip():
            s += len(piece) - len(piece.lstrip())
            e -= len(piece) - len(piece.rstrip())
            trimmed.append((s, e))
    return trimmed


def line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the non-blank lines of `text` (e.g. one meeting turn per line)."""
    return [m.span() for m in _LINE.finditer(text)]
