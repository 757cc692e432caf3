"""Low-rank residual adapter over frozen embeddings (Adapted Dense Retrieval, "ADDER").

Khatry et al. 2023, "Augmented Embeddings for Custom Retrievals", arXiv:2310.05380: keep a black-box
pretrained embedding and learn a low-rank *residual* adaptation of it for one retrieval task.

The map implemented here (see docs/adapter.md for what we follow and where we differ):

    e' = e + B (A e)          A: r x d,  B: d x r,  r << d
    e' <- e' / ||e'||         only when the base encoder L2-normalises (so inner product stays cosine)

B starts at zero, so an untrained adapter is exactly the identity (and the re-normalisation of an
already unit vector is a no-op). The adapter is always applied to queries; with `documents=True` it is
applied to documents too (then the corpus must be re-indexed with the adapted vectors).

Training lives in `training/adapter.py` (torch, imported lazily there); this module needs numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexes.manifest import IndexLoadError, open_index, write_index_dir
from retrieval.dense.encoders import EncoderWrapper, base_record, load_base

KIND = "residual-adapter"
A_FILE, B_FILE = "A.npy", "B.npy"


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class ResidualAdapter:
    """e -> e + B·A·e (then L2-normalised when `normalize`), A: rank x dim, B: dim x rank, float32.

    Args:
        A, B: the factors; `B` all zeros makes the adapter the identity.
        normalize: re-normalise adapted vectors to unit length (set it when the base encoder normalises).
        documents: whether the adapter was trained to be applied to documents as well as queries.
        info: free-form training metadata saved alongside (hyper-parameters, data, timings).
    """

    def __init__(self, A: np.ndarray, B: np.ndarray, normalize: bool = True, documents: bool = False, info: dict | None = None):
        A = np.ascontiguousarray(A, dtype=np.float32)
        B = np.ascontiguousarray(B, dtype=np.float32)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.shape[1] != B.shape[0]:
            raise ValueError(f"A must be rank x dim and B dim x rank; got A {A.shape}, B {B.shape}")
        self.A, self.B = A, B
        self.normalize = bool(normalize)
        self.documents = bool(documents)
        self.info = dict(info or {})

    @classmethod
    def identity(cls, dim: int, rank: int, normalize: bool = True, seed: int = 0, documents: bool = False) -> ResidualAdapter:
        """An untrained adapter: A small random (as training starts), B zero, so apply() returns its input."""
        rng = np.random.default_rng(seed)
        A = rng.normal(0.0, 1.0 / np.sqrt(dim), size=(rank, dim)).astype(np.float32)
        return cls(A, np.zeros((dim, rank), dtype=np.float32), normalize=normalize, documents=documents)

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Adapt one vector (dim,) or a batch (n, dim); returns float32 of the same shape."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[-1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[-1]}, the adapter expects {self.dim}")
        out = vectors + (vectors @ self.A.T) @ self.B.T
        if self.normalize:
            out = _l2_normalise(out)
        return out.astype(np.float32, copy=False)

    __call__ = apply

    def describe(self) -> dict:
        return {"kind": KIND, "dim": self.dim, "rank": self.rank, "normalize": self.normalize, "documents": self.documents}

    # ------------------------------------------------------------------ persistence

    def save(self, folder: str | Path, base: dict | None = None) -> dict:
        """Write A.npy, B.npy and manifest.json (sizes + sha256) atomically; returns the manifest.

        `base` names the encoder the adapter was trained on (`encoders.base_record`), so that
        `load_encoder(folder)` can rebuild the adapted encoder; `AdaptedEncoder.save` fills it.
        """

        def fill(tmp: Path) -> dict:
            np.save(tmp / A_FILE, self.A)
            np.save(tmp / B_FILE, self.B)
            return {"kind": KIND, **self.describe(), "base": base, "info": self.info}

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused

    @classmethod
    def load(cls, folder: str | Path) -> ResidualAdapter:
        """Load a saved adapter; raises `IndexLoadError` if any file is missing, truncated or altered."""
        saved = open_index(folder)  # verifies every file's size and checksum
        manifest, folder = saved.manifest, saved.folder
        if manifest["kind"] != KIND:
            raise IndexLoadError(f"{folder}: a {manifest['kind']!r} folder, not a {KIND}")
        try:
            A = np.load(folder / A_FILE, allow_pickle=False)
            B = np.load(folder / B_FILE, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise IndexLoadError(f"{folder}: unreadable adapter weights ({err})") from None
        if A.shape != (manifest["rank"], manifest["dim"]) or B.shape != (manifest["dim"], manifest["rank"]):
            raise IndexLoadError(f"{folder}: weights of shape A {A.shape}, B {B.shape} disagree with the manifest")
        return cls(A, B, normalize=manifest["normalize"], documents=manifest["documents"], info=manifest.get("info"))


class AdaptedEncoder(EncoderWrapper):
    """An encoder whose outputs pass through a `ResidualAdapter`: queries always, documents if `documents`.

    `documents=None` (the default) takes the adapter's own setting, i.e. how it was trained. Save it with
    `save(folder)`; `retrieval.dense.encoders.load_encoder(folder)` (or a dense retriever with
    `model=folder`) rebuilds it over the same base model.
    """

    def __init__(self, base, adapter: ResidualAdapter, documents: bool | None = None):
        if adapter.dim != base.dim:
            raise ValueError(f"adapter dimension {adapter.dim} differs from the encoder's {base.dim}")
        super().__init__(base)
        self.adapter = adapter
        self.documents = adapter.documents if documents is None else bool(documents)

    def save(self, folder: str | Path) -> dict:
        return self.adapter.save(folder, base=base_record(self.base))

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.adapter.apply(self.base.encode_queries(texts, progress=progress))

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        vectors = self.base.encode_documents(texts, progress=progress)
        return self.adapter.apply(vectors) if self.documents else vectors

    def describe(self) -> dict:
        return {
            "base": self.base.describe(),
            "adapter": KIND,
            "rank": self.adapter.rank,
            "documents": self.documents,
            "normalize": self.adapter.normalize,
        }


def load_encoder(folder: Path, manifest: dict, **options) -> AdaptedEncoder:
    """`encoders.load_encoder` for a saved adapter: its base encoder (options go there) plus the adapter."""
    return AdaptedEncoder(load_base(folder, manifest.get("base"), **options), ResidualAdapter.load(folder))
