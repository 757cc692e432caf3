"""Vector storage and search on faiss: build from a factory string, save, load memory-mapped."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ADD_BATCH = 65536


def build_index(vectors: np.ndarray, factory: str = "Flat", metric: str = "ip"):
    """A faiss index over `vectors` (n x d float32), trained on them first when the type needs it
    (IVF, PQ). `metric` is "ip" (inner product; cosine on normalised vectors) or "l2"."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    metric_type = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[metric]
    index = faiss.index_factory(vectors.shape[1], factory, metric_type)
    if not index.is_trained:
        index.train(vectors)
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(vectors[start : start + ADD_BATCH])
    return index


def set_search_params(index, params: dict) -> None:
    """Search-time knobs by faiss name, e.g. {"nprobe": 16} for IVF or {"efSearch": 128} for HNSW."""
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def save_index(index, path: str | Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def load_index(path: str | Path, mmap: bool = True):
    """Read an index; flat codes (Flat, and the codes of IVF-Flat/PQ) are memory-mapped, not copied,
    when `mmap` is set, so loading is instant and pages come from the OS cache."""
    import faiss

    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions), each n x k; positions are -1 where fewer than k vectors exist."""
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
