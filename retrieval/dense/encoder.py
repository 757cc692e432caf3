"""The base dense encoder: a sentence-transformers model returning float32 numpy arrays.

Method modules (Matryoshka, adapters, LexSemBridge, ...) wrap an encoder and return one, so anything
with `encode_queries`, `encode_documents`, `dim` and `describe()` can be indexed by the dense retriever.
"""
from __future__ import annotations

import numpy as np

from retrieval.models import model_fingerprint, model_path


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEncoder:
    """A sentence-transformers model from the offline registry (or any local folder).

    Args:
        model: registry name ("minilm", "mpnet", ...) or a local model folder.
        batch_size: texts per forward pass.
        normalize: L2-normalise outputs, so inner product is cosine.
        query_prefix / doc_prefix: strings prepended to queries / documents (instruction models).
        max_length: truncate inputs to this many tokens (default: the model's own).
        device: "cpu" or "cuda" (default: cuda when available).

    Example:
        >>> enc = SentenceEncoder("minilm")
        >>> enc.encode_queries(["what causes scurvy?"]).shape
        (1, 384)
    """

    def __init__(
        self,
        model: str = "minilm",
        batch_size: int = 32,
        normalize: bool = True,
        query_prefix: str = "",
        doc_prefix: str = "",
        max_length: int | None = None,
        device: str | None = None,
    ):
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.folder = model_path(model)
        self.model = SentenceTransformer(str(self.folder), device=device or default_device(), local_files_only=True)
        self.own_max_length = self.model.max_seq_length  # the model's own limit, before any override
        if max_length:
            self.model.max_seq_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prefix, self.doc_prefix = query_prefix, doc_prefix
        self.max_length = self.model.max_seq_length
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return self.model.get_embedding_dimension()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.folder)
        return self._fingerprint

    def _encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        vectors = self.model.encode(
            [prefix + t for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.query_prefix, progress)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        return self._encode(texts, self.doc_prefix, progress)

    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "batch_size": self.batch_size,
            "normalize": self.normalize,
            "query_prefix": self.query_prefix,
            "doc_prefix": self.doc_prefix,
            "max_length": self.max_length,
        }
