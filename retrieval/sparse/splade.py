"""Learned sparse retrieval: SPLADE term weights searched on a Lucene impact index through pyserini.

SPLADE (Formal et al., "SPLADE v2: Sparse Lexical and Expansion Model for Information Retrieval", 2021)
weights every vocabulary term j of a text by max-pooling over its tokens i:

    w_j = max_i log(1 + ReLU(logit_ij))            (the masked-LM logits of token i for term j)

and scores a document by the dot product of its weights with the query's. Documents and queries are
encoded by the same model (pyserini's SpladeQueryEncoder does the same pooling); weights are quantised to
integers as round(100 * w), the factor of Anserini's SPLADE regressions, and indexed by Anserini as a
JsonVectorCollection with `-impact -pretokenized` (each term's weight is its term frequency). Search is
Anserini's SimpleImpactSearcher: the sum over query terms of query weight x document impact.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from indexes.lucene_index import _JAVA_LOCK, anserini
from retrieval.api import Retriever
from retrieval.data import Corpus
from retrieval.errors import IndexLoadError, SpecError

QUANTISATION = 100  # Anserini's SPLADE regressions store round(100 * w)
TEMP_PREFIX = "dengen-splade-"


def splade_weights(logits, attention_mask):
    """(batch, vocab) SPLADE-max weights from masked-LM logits (batch, tokens, vocab): padding never counts.

    log(1 + ReLU(x)) never decreases in x, so the max over tokens is taken first and the transform applied to
    (batch, vocab) only: the same weights, without two passes over the (batch, tokens, vocab) logits."""
    import torch

    top = logits.masked_fill(attention_mask.unsqueeze(-1) == 0, float("-inf")).amax(dim=1)
    return torch.log1p(torch.relu(top))


def quantised(weights, vocab: list[str]) -> list[dict[str, int]]:
    """Each row's nonzero weights as {term: round(100 * w)}, terms whose weight rounds to 0 left out."""
    import torch

    scaled = torch.round(weights * QUANTISATION).to(torch.int64)
    rows = []
    for row in scaled:
        ids = torch.nonzero(row).squeeze(1).tolist()
        rows.append({vocab[i]: int(row[i]) for i in ids})
    return rows


class SpladeEncoder:
    """A masked-LM folder (default the registry's splade-tiny) turning texts into quantised term weights."""

    def __init__(self, model: str = "splade-tiny", max_length: int = 256, batch_size: int = 32):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from retrieval.models import model_fingerprint, model_path

        folder = model_path(model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
        self.fingerprint = model_fingerprint(folder)
        self.max_length, self.batch_size = max_length, batch_size
        vocab = self.tokenizer.get_vocab()
        self.vocab = [""] * len(vocab)
        for term, i in vocab.items():
            self.vocab[i] = term

    def encode(self, texts: list[str], max_length: int | None = None, progress: str | None = None) -> list[dict[str, int]]:
        import torch
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None or len(starts) < 2):
            batch = self.tokenizer(texts[start: start + self.batch_size], max_length=max_length or self.max_length,
                                   truncation=True, padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out += quantised(splade_weights(logits, batch["attention_mask"]), self.vocab)
        return out


class SpladeRetriever(Retriever):
    """SPLADE on a Lucene impact index.

    Args:
        model: a registry name (splade-tiny) or a local masked-LM folder.
        max_length: tokens read per document (queries: query_length).
        threads: Lucene search threads for a batch of queries (default: all cores).
    """

    kind = "splade"

    def __init__(self, model: str = "splade-tiny", max_length: int = 256, query_length: int = 64,
                 batch_size: int = 32, threads: int | None = None):
        for name, value in (("max_length", max_length), ("query_length", query_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"splade: {name} must be a positive integer, got {value!r}")
        super().__init__(model=model, max_length=max_length, query_length=query_length, batch_size=batch_size)
        self.threads = threads or os.cpu_count() or 1
        self._encoder: SpladeEncoder | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._lucene_dir: Path | None = None
        self._searcher = None

    @property
    def encoder(self) -> SpladeEncoder:
        if self._encoder is None:
            self._encoder = SpladeEncoder(self.config["model"], self.config["max_length"], self.config["batch_size"])
        return self._encoder

    def _index(self, corpus: Corpus) -> None:
        workdir = tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-", ignore_cleanup_errors=True)
        try:
            vectors = self.encoder.encode([d.full_text for d in corpus], progress="SPLADE encoding")
            collection = Path(workdir.name) / "collection"
            collection.mkdir()
            with open(collection / "docs.jsonl", "w", encoding="utf-8") as out:
                for doc, vector in zip(corpus, vectors):
                    out.write(json.dumps({"id": doc.id, "contents": "", "vector": vector}, ensure_ascii=False) + "\n")
            folder = Path(workdir.name) / "lucene"
            with _JAVA_LOCK:
                anserini("io.anserini.index.IndexCollection").main([
                    "-collection", "JsonVectorCollection", "-input", str(collection), "-index", str(folder),
                    "-generator", "DefaultLuceneDocumentGenerator", "-threads", "1", "-impact", "-pretokenized", "-quiet"])
            shutil.rmtree(collection)
            self._open(folder)
        except BaseException:  # Ctrl-C included: remove the half-built index now, not at exit
            workdir.cleanup()
            raise
        self._workdir = workdir

    def _open(self, folder: Path) -> None:
        with _JAVA_LOCK:
            self._searcher = anserini("io.anserini.search.SimpleImpactSearcher")(str(folder))
        self._lucene_dir = folder

    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        qids = list(queries)
        vectors = self.encoder.encode([queries[q] for q in qids], max_length=self.config["query_length"])
        with _JAVA_LOCK:
            hash_map, array_list, integer = (anserini(name) for name in ("java.util.HashMap", "java.util.ArrayList",
                                                                           "java.lang.Integer"))
            batch, ids = array_list(), array_list()
            for qid, vector in zip(qids, vectors):
                terms = hash_map()
                for term, weight in vector.items():
                    terms.put(term, integer(weight))
                batch.add(terms)
                ids.add(qid)
            results = self._searcher.batch_search(batch, ids, int(k), int(self.threads))
            found = {entry.getKey(): {hit.docid: float(hit.score) for hit in entry.getValue()}
                     for entry in results.entrySet().toArray()}
        return {qid: found.get(qid, {}) for qid in qids}

    def _save_files(self, folder: Path) -> dict:
        shutil.copytree(self._lucene_dir, folder / "lucene", ignore=shutil.ignore_patterns("write.lock"))
        self._write_docstore(folder)
        return {"engine": "lucene impact (pyserini)", "model_sha256": self.encoder.fingerprint}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        if manifest.get("model_sha256") != self.encoder.fingerprint:
            raise IndexLoadError(f"{folder}: built with other {self.config['model']!r} weights than the ones installed; "
                                 "re-index with this model")
        self._open(folder / "lucene")
