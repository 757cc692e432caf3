"""Embeddings of a dataset cached as .npy files, named by content: the dataset, the model's weight hash
and the document count (plus a hash of any non-default prefix or normalisation). Scripts and trainers
that work on frozen vectors (scripts/bench_search.py, training/adapter.py) share them.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from indexes.manifest import atomic_path


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:  # never a half-written cache
        np.save(out, array)


def cache_key(encoder, dataset) -> str:
    """`{dataset}-{model}-{fingerprint[:12]}-{n}docs[-cfg<hash>]`: a name for vectors of one corpus by one encoder.

    The fingerprint hashes the model's weights; encoders without one are keyed by a hash of describe().
    A non-default prefix, normalisation or max_length adds a config hash, so such vectors never share a file.
    """
    fingerprint = getattr(encoder, "fingerprint", None)
    if not fingerprint:
        fingerprint = hashlib.sha256(json.dumps(encoder.describe(), sort_keys=True, default=str).encode()).hexdigest()
    model = str(getattr(encoder, "model_name", type(encoder).__name__)).replace("/", "_")  # a folder path stays one name
    key = f"{dataset.name}-{model}-{fingerprint[:12]}-{len(dataset.corpus)}docs"
    described = encoder.describe() if hasattr(encoder, "describe") else {}
    extras = {k: described[k] for k in ("query_prefix", "doc_prefix") if described.get(k)}
    if described.get("max_length") != getattr(encoder, "own_max_length", described.get("max_length")):
        extras["max_length"] = described["max_length"]  # a shorter cut changes the vectors of long documents
    if described.get("normalize") is False:
        extras["normalize"] = False
    if "base" in described:  # a method wrapper (retrieval.dense.encoders): its settings change the vectors
        extras["wrapper"] = described
    if extras:
        key += "-cfg" + hashlib.sha256(json.dumps(extras, sort_keys=True).encode()).hexdigest()[:8]
    return key


def cache_paths(cache_dir: str | Path, encoder, dataset) -> tuple[Path, Path]:
    """(document vectors file, query vectors file) of `dataset` encoded by `encoder` under `cache_dir`."""
    key = cache_key(encoder, dataset)
    return Path(cache_dir) / f"{key}.docs.npy", Path(cache_dir) / f"{key}-{dataset.split}{len(dataset.queries)}queries.npy"


def cached_embeddings(encoder, dataset, cache_dir: str | Path, check: int = 8) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(doc vectors in corpus order, query vectors, query ids), cached as .npy under `cache_dir`.

    Files: `{key}.docs.npy` and `{key}-{split}{n}queries.npy` (see `cache_key`). A cached document file
    is spot-checked by re-encoding its first `check` documents; a mismatch re-encodes everything.
    """
    doc_path, query_path = cache_paths(cache_dir, encoder, dataset)
    texts = [doc.full_text for doc in dataset.corpus]
    query_ids = list(dataset.queries)

    docs = None
    if doc_path.is_file():
        docs = np.load(doc_path)
        sample = encoder.encode_documents(texts[:check], progress=False) if check else None
        if docs.shape != (len(texts), encoder.dim) or (sample is not None and not np.allclose(docs[: len(sample)], sample, atol=1e-4)):
            print(f"{doc_path}: does not match this encoder; re-encoding", file=sys.stderr)
            docs = None
    if docs is None:
        docs = encoder.encode_documents(texts, progress=True)
        save_npy(doc_path, docs)

    queries = np.load(query_path) if query_path.is_file() else None
    if queries is None or queries.shape != (len(query_ids), encoder.dim):
        queries = encoder.encode_queries([dataset.queries[q] for q in query_ids], progress=True)
        save_npy(query_path, queries)
    return np.asarray(docs, dtype=np.float32), np.asarray(queries, dtype=np.float32), query_ids
