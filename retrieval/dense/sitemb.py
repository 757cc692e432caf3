"""SitEmb: situated chunk embeddings, a short chunk encoded inside its surrounding context.

Wu et al. 2025, "SitEmb-v1.5: Improved Context-Aware Dense Retrieval for Semantic Association and Long Story
Comprehension", arXiv:2508.01959; model cards SituatedEmbedding/SitEmb-v1.5-Qwen3 (and -chunk-only, -note).
See docs/sitemb.md for what we follow and where we differ.

- Situated input: the chunk first, then its context window (neighbouring units of the same document, the
  chunk included, grown around it up to `context_tokens` tokens). The model card separates the two with the
  tokenizer's end-of-sequence token (`chunk<eos>context`); for a BERT encoder that is a sentence pair,
  `[CLS] chunk [SEP] context [SEP]` (token types 0 / 1), which marks the chunk the same way.
- Residual learning: a frozen chunk-only model Θb embeds the chunk alone; the situated model Θs embeds the
  situated input; the query-chunk score is

      score(q, c) = <q_s, s(c | context)> + factor * <q_b, b(c)>          (factor 0.5 in the model cards)

  where q_s, q_b are the query embedded by Θs and Θb. Only Θs is trained (InfoNCE on this score), so it
  learns what the context adds to the chunk-only score. One inner product computes it: chunk vector
  [s ; b], query vector [q_s ; factor * q_b], so a faiss inner-product index serves it exactly, and the
  factor can change at query time without re-encoding chunks.

`SituatedEncoder` wraps the two sentence encoders; `SituatedRetriever` (kind "situated") chunks documents
(sentences, lines, or word / token windows with overlap), indexes the situated chunks, and returns chunk
ids `<doc>#c<n>` whose parent document and character offsets `chunk(chunk_id)` gives.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from indexes.manifest import IndexLoadError, write_index_dir
from retrieval.api import Retriever
from retrieval.data import Corpus, Doc
from retrieval.dense.encoders import (
    EncoderWrapper,
    base_record,
    load_base,
    save_model_inside,
)
from retrieval.longdoc import (
    chunk_id,
    line_spans,
    max_pool,
    sentence_spans,
    token_spans,
    window_starts,
    word_spans,
)

KIND = "sitemb"
MODEL_DIR = "model"
CHUNK_UNITS = ("sentences", "lines", "words", "tokens")
CHUNKS_FILE = "chunks.jsonl"
RETURNS = ("chunks", "documents")
CHUNK_DEPTH = 10  # chunks searched per wanted document when returning documents


# ------------------------------------------------------------------------------------ chunks and contexts


class Chunk(NamedTuple):
    """One chunk of a document: id `<doc>#c<n>`, its parent, character offsets into the document's text,
    and the offsets of its context window (which contains the chunk)."""

    id: str
    doc_id: str
    start: int
    end: int
    context_start: int
    context_end: int


def unit_spans(text: str, unit: str, tokenizer=None) -> list[tuple[int, int]]:
    """Character spans of the units a document is chunked by."""
    if unit == "sentences":
        return sentence_spans(text)
    if unit == "lines":
        return line_spans(text)
    if unit == "words":
        return word_spans(text)
    if unit == "tokens":
        return token_spans(tokenizer, text)
    raise ValueError(f"unit must be one of {CHUNK_UNITS}, got {unit!r}")


def context_window(first: int, last: int, costs: list[int], budget: int) -> tuple[int, int]:
    """Units [lo, hi) around the chunk's units [first, last): neighbours are added alternately left and right
    (left first) while the whole window costs at most `budget` tokens; a side that does not fit stops
    growing, the other goes on. The chunk alone is kept even when it exceeds the budget."""
    lo, hi = first, last
    used = sum(costs[first:last])
    grow_left, grow_right = True, True
    while grow_left or grow_right:
        if grow_left:
            if lo > 0 and used + costs[lo - 1] <= budget:
                lo -= 1
                used += costs[lo]
            else:
                grow_left = False
        if grow_right:
            if hi < len(costs) and used + costs[hi] <= budget:
                used += costs[hi]
                hi += 1
            else:
                grow_right = False
    return lo, hi


def situate_document(doc: Doc, spans: list[tuple[int, int]], costs: list[int], window: int, stride: int,
                     context_tokens: int) -> list[Chunk]:
    """The chunks of one document (windows of `window` units, `stride` apart) with their context windows."""
    if not spans:
        return [Chunk(chunk_id(doc.id, 0), doc.id, 0, len(doc.text), 0, len(doc.text))]
    chunks = []
    for n, first in enumerate(window_starts(len(spans), window, stride)):
        last = min(first + window, len(spans))
        lo, hi = context_window(first, last, costs, context_tokens)
        chunks.append(Chunk(chunk_id(doc.id, n), doc.id, spans[first][0], spans[last - 1][1], spans[lo][0], spans[hi - 1][1]))
    return chunks


def situate_corpus(corpus: Corpus, tokenizer, unit: str = "sentences", window: int = 1, stride: int | None = None,
                   context_tokens: int = 128, progress: bool = True) -> list[Chunk]:
    """Every document's chunks with context windows, in corpus order; token costs come from `tokenizer`."""
    from tqdm.auto import tqdm

    stride = stride or window
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    out: list[Chunk] = []
    for doc in tqdm(corpus, desc=f"situating ({unit})", unit="doc", disable=not progress, mininterval=1.0):
        spans = unit_spans(doc.text, unit, tokenizer)
        if unit == "tokens":
            costs = [1] * len(spans)
        else:
            pieces = [doc.text[s:e] for s, e in spans]
            costs = [len(ids) for ids in tokenizer(pieces, add_special_tokens=False, verbose=False)["input_ids"]] if pieces else []
        out += situate_document(doc, spans, costs, window, stride, context_tokens)
    return out


# ------------------------------------------------------------------------------------ the encoder


def situated_features(st_model, chunks: list[str], contexts: list[str], max_length: int) -> dict:
    """Tokenized sentence pairs (chunk, context): `[CLS] chunk [SEP] context [SEP]`, the longer side cut first."""
    return dict(st_model.tokenizer(chunks, contexts, truncation="longest_first", max_length=max_length,
                                   padding=True, return_tensors="pt"))


def pooled(st_model, features: dict):
    """The model's sentence embedding (its own pooling), L2-normalised."""
    import torch

    return torch.nn.functional.normalize(st_model(features)["sentence_embedding"], dim=-1)


def residual_scores(q_s: np.ndarray, q_b: np.ndarray, s: np.ndarray, b: np.ndarray, factor: float) -> np.ndarray:
    """score(q, c) = <q_s, s> + factor * <q_b, b> for every query (rows) and chunk (columns)."""
    return q_s @ s.T + factor * (q_b @ b.T)


class SituatedEncoder(EncoderWrapper):
    """Θs (situated, trainable) + Θb (chunk-only, frozen) combined by the residual factor.

    Args:
        base: the situated model Θs, a `SentenceEncoder` (its `model` is what training updates).
        baseline: the chunk-only model Θb (a `SentenceEncoder`), or None for situated vectors only.
        residual_factor: weight of the chunk-only score (the model cards' 0.5).
        max_length: tokens of a situated input (chunk + context + 3 special tokens).
        tuned: whether `base` was fine-tuned (then `save` stores its weights; else it names the model).
        info: training facts kept in the saved manifest.

    Example:
        >>> enc = SituatedEncoder(SentenceEncoder("minilm"), SentenceEncoder("minilm"), residual_factor=0.5)
        >>> enc.encode_situated(["It binds CD4."], ["HIV gp120 is a protein. It binds CD4."]).shape
        (1, 768)
    """

    def __init__(self, base, baseline=None, residual_factor: float = 0.5, max_length: int = 256, tuned: bool = False,
                 info: dict | None = None):
        super().__init__(base)
        if residual_factor < 0:
            raise ValueError(f"residual_factor must be >= 0, got {residual_factor}")
        self.baseline = baseline
        self.residual_factor = float(residual_factor)
        self.situated_max_length = int(max_length)
        self.tuned = bool(tuned)
        self.info = dict(info or {})

    @property
    def dim(self) -> int:
        return self.base.dim + (self.baseline.dim if self.baseline is not None else 0)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        q_s = self.base.encode_queries(texts, progress=progress)
        if self.baseline is None:
            return q_s
        q_b = q_s if self.baseline is self.base else self.baseline.encode_queries(texts, progress=progress)
        return np.ascontiguousarray(np.hstack([q_s, self.residual_factor * q_b]), dtype=np.float32)

    def encode_situated_only(self, chunks: list[str], contexts: list[str], progress: bool = True) -> np.ndarray:
        """s(c | context) for each (chunk, context) pair, normalised."""
        import torch
        from tqdm.auto import tqdm

        if len(chunks) != len(contexts):
            raise ValueError(f"{len(chunks)} chunks but {len(contexts)} contexts")
        st = self.base.model
        st.eval()
        batch = getattr(self.base, "batch_size", 32)
        device = next(st.parameters()).device
        prefix = getattr(self.base, "doc_prefix", "")
        order = np.argsort([-len(c) - len(x) for c, x in zip(chunks, contexts)], kind="stable")  # less padding
        out = np.zeros((len(chunks), self.base.dim), dtype=np.float32)
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch), desc="situated chunks", disable=not progress, mininterval=2.0):
                rows = order[start : start + batch]
                features = situated_features(st, [prefix + chunks[i] for i in rows], [contexts[i] for i in rows],
                                             self.situated_max_length)
                out[rows] = pooled(st, {k: v.to(device) for k, v in features.items()}).float().cpu().numpy()
        return out

    def encode_situated(self, chunks: list[str], contexts: list[str], progress: bool = True) -> np.ndarray:
        """Chunk vectors [s(c | context) ; b(c)] (or s alone without a baseline)."""
        s = self.encode_situated_only(chunks, contexts, progress)
        if self.baseline is None:
            return s
        b = self.baseline.encode_documents(chunks, progress=progress)
        return np.ascontiguousarray(np.hstack([s, b]), dtype=np.float32)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """A text without a document around it is its own context."""
        return self.encode_situated(texts, texts, progress)

    def describe(self) -> dict:
        return {"base": self.base.describe(), "module": KIND, "residual_factor": self.residual_factor,
                "baseline": self.baseline.describe() if self.baseline is not None else None,
                "situated_max_length": self.situated_max_length}

    def save(self, folder: str | Path) -> dict:
        """Write the module folder: Θs's weights (model/) when tuned, else its name; Θb by name and hash."""

        def fill(tmp: Path) -> dict:
            base = save_model_inside(tmp, self.base, MODEL_DIR) if self.tuned else base_record(self.base)
            return {"kind": KIND, "base": base,
                    "baseline": base_record(self.baseline) if self.baseline is not None else None,
                    "residual_factor": self.residual_factor, "max_length": self.situated_max_length,
                    "dim": self.dim, "info": self.info}

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused


def load_encoder(folder: Path, manifest: dict, **options) -> SituatedEncoder:
    """`encoders.load_encoder` for a saved "sitemb" folder: Θs (options go there and to Θb) + Θb + the factor."""
    if "residual_factor" not in manifest or "base" not in manifest:
        raise IndexLoadError(f"{folder}: not a complete sitemb manifest (needs base, baseline, residual_factor)")
    base = load_base(folder, manifest["base"], **options)
    baseline = load_base(folder, manifest["baseline"], **options) if manifest.get("baseline") else None
    return SituatedEncoder(base, baseline, residual_factor=manifest["residual_factor"],
                           max_length=manifest.get("max_length", 256), tuned=bool(manifest["base"].get("inside")),
                           info=manifest.get("info"))


def situated_encoder(model: str = "minilm", baseline: str | None = "minilm", residual_factor: float | None = None,
                     max_length: int = 256, batch_size: int = 32) -> SituatedEncoder:
    """A saved sitemb folder as saved (a given `residual_factor` overrides its own), or Θs = `model`,
    Θb = `baseline` (the same object when they are the same model) for an untrained situated encoder."""
    from retrieval.dense.encoders import load_encoder as load_any
    from retrieval.dense.encoders import saved_kind

    if saved_kind(model) == KIND:
        encoder = load_any(model, batch_size=batch_size)
        if residual_factor is not None:
            encoder.residual_factor = float(residual_factor)
        return encoder
    base = load_any(model, batch_size=batch_size)
    chunk_only = None
    if baseline:
        chunk_only = base if str(baseline) == str(model) else load_any(baseline, batch_size=batch_size)
    return SituatedEncoder(base, chunk_only, 0.5 if residual_factor is None else residual_factor, max_length)


# ------------------------------------------------------------------------------------ the retriever


class ChunkHit(NamedTuple):
    """A retrieved chunk: its id `<doc>#c<n>` (in `doc_id`, as in every run), score, text, parent document
    and character offsets into that document's text."""

    doc_id: str
    score: float
    text: str | None
    parent: str
    start: int
    end: int


class SituatedRetriever(Retriever):
    """Chunk documents, embed every chunk situated in its context (SitEmb), search chunks.

    Args:
        model: a saved sitemb module folder, or a model (registry name / folder) used as Θs untrained.
        baseline: the chunk-only model Θb for a plain `model` (None: situated vectors only); a module
            folder brings its own.
        residual_factor: the chunk-only score's weight (None: the module's own, else 0.5).
        unit: what chunks are made of: "sentences", "lines" (e.g. meeting turns), "words" or "tokens".
        window: units per chunk; stride: units between chunk starts (default window, no overlap).
        context_tokens: the context window's token budget (chunk included), counted with Θs's tokenizer.
        max_length: tokens of one situated input (chunk + context).
        batch_size: texts per forward pass.
        returns: "chunks" (ids `<doc>#c<n>`) or "documents" (each document scored by its best chunk, MaxP,
            so `dengen eval` works on document-level qrels).

    Example:
        >>> r = SituatedRetriever(model="results/sitemb/scifact/situated", unit="sentences")
        >>> r.index(corpus); r.save("runs/scifact-situated")
        >>> hits = r.search_one("what binds CD4?", k=5)   # ChunkHit(doc_id="123#c4", ..., parent="123", start, end)
    """

    kind = "situated"
    chunks_documents = True

    def __init__(self, model: str = "minilm", baseline: str | None = "minilm", residual_factor: float | None = None,
                 unit: str = "sentences", window: int = 1, stride: int | None = None, context_tokens: int = 128,
                 max_length: int = 256, batch_size: int = 32, returns: str = "chunks"):
        if unit not in CHUNK_UNITS:
            raise ValueError(f"unit must be one of {CHUNK_UNITS}, got {unit!r}")
        window = int(window)
        stride = int(stride) if stride is not None else window
        if window < 1 or not 1 <= stride <= window:
            raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
        if returns not in RETURNS:
            raise ValueError(f"returns must be one of {RETURNS}, got {returns!r}")
        super().__init__(model=str(model), baseline=baseline, residual_factor=residual_factor, unit=unit, window=window,
                         stride=stride, context_tokens=int(context_tokens), max_length=int(max_length),
                         batch_size=int(batch_size), returns=returns)
        self._encoder = None
        self._faiss = None
        self.chunks: list[Chunk] = []
        self._chunk_texts: list[str] = []
        self._position: dict[str, int] = {}

    @property
    def encoder(self) -> SituatedEncoder:
        if self._encoder is None:
            c = self.config
            self._encoder = situated_encoder(c["model"], c["baseline"], c["residual_factor"], c["max_length"], c["batch_size"])
        return self._encoder

    # ------------------------------------------------------------ chunks
    def chunk(self, chunk_id: str) -> tuple[str, int, int]:
        """(parent document id, start, end): where chunk `chunk_id` lies in its document's text."""
        c = self.chunks[self._position[chunk_id]]
        return c.doc_id, c.start, c.end

    def chunk_text(self, chunk_id: str) -> str:
        return self._chunk_texts[self._position[chunk_id]]

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def search_one(self, query: str, k: int = 10) -> list[ChunkHit]:
        """Ranked chunks for one query string, each with its text, parent document and offsets."""
        self._require_index()
        hits = self._search_chunks({"q": query}, k)["q"]
        return [ChunkHit(cid, score, self.chunk_text(cid), *self.chunk(cid)) for cid, score in hits.items()]

    def _use(self, chunks: list[Chunk], texts: list[str], faiss_index) -> None:
        self.chunks, self._chunk_texts, self._faiss = chunks, texts, faiss_index
        self._position = {c.id: i for i, c in enumerate(chunks)}

    # ------------------------------------------------------------ Retriever
    def _index(self, corpus: Corpus) -> None:
        from indexes.faiss_index import build_index

        c = self.config
        chunks = situate_corpus(corpus, self.encoder.base.model.tokenizer, c["unit"], c["window"], c["stride"],
                                c["context_tokens"])
        texts = {doc.id: doc.text for doc in corpus}
        chunk_texts = [texts[x.doc_id][x.start : x.end] for x in chunks]
        contexts = [texts[x.doc_id][x.context_start : x.context_end] for x in chunks]
        vectors = self.encoder.encode_situated(chunk_texts, contexts, progress=True)
        self._use(chunks, chunk_texts, build_index(vectors, "Flat"))

    def _search_chunks(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        from indexes.faiss_index import search_index

        qids = list(queries)
        scores, positions = search_index(self._faiss, self.encoder.encode_queries([queries[q] for q in qids]), k)
        return {qid: {self.chunks[p].id: float(s) for s, p in zip(row_s, row_p) if p >= 0}
                for qid, row_s, row_p in zip(qids, scores, positions)}

    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        if self.config.get("returns", "chunks") == "chunks":
            return self._search_chunks(queries, k)
        run = self._search_chunks(queries, min(len(self.chunks), k * CHUNK_DEPTH))  # enough chunks for k documents
        return {qid: dict(sorted(max_pool(hits).items(), key=lambda x: -x[1])[:k]) for qid, hits in run.items()}

    def _fingerprint(self) -> str:
        from retrieval.dense.encoders import encoder_fingerprint

        parts = [encoder_fingerprint(self.config["model"])]
        if self.config["baseline"]:
            parts.append(encoder_fingerprint(self.config["baseline"]))
        return "+".join(parts)

    def _save_files(self, folder: Path) -> dict:
        from indexes.faiss_index import save_index

        save_index(self._faiss, folder / "vectors.faiss")
        with open(folder / CHUNKS_FILE, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({**chunk._asdict(), "text": text}, ensure_ascii=False) + "\n"
                         for chunk, text in zip(self.chunks, self._chunk_texts))
        self._write_docstore(folder)
        return {"engine": "faiss", "chunk_count": len(self.chunks), "dims": int(self._faiss.d),
                "encoder": {"describe": self.encoder.describe(), "sha256": self._fingerprint()}}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        from indexes.faiss_index import load_index

        recorded, installed = manifest["encoder"]["sha256"], self._fingerprint()
        if recorded != installed:
            raise IndexLoadError(f"{folder}: built with encoder weights {recorded[:24]}..., but {self.config['model']!r} "
                                 f"now hashes {installed[:24]}...: re-index")
        chunks, texts = [], []
        with open(folder / CHUNKS_FILE, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts.append(row.pop("text"))
                chunks.append(Chunk(**row))
        faiss_index = load_index(folder / "vectors.faiss")
        if faiss_index.ntotal != len(chunks) or len(chunks) != manifest["chunk_count"]:
            raise IndexLoadError(f"{folder}: {faiss_index.ntotal} vectors but {len(chunks)} chunks")
        self._use(chunks, texts, faiss_index)
