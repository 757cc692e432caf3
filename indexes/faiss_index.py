"""Vector storage and search on faiss: build from a factory string, save, load memory-mapped; shards of
contiguous rows joined by faiss's own `IndexShards` (searched in parallel threads, top-k merged)."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Iterable

import numpy as np

ADD_BATCH = 65536
TRAIN_SIZE = 262144  # vectors an IVF/PQ index is trained on when built from a stream (>= 256 per list for 1024 lists)


BUILD_PARAMS = ("efConstruction",)  # set on the empty index: they shape the graph as vectors are added
BLAS_MIN_VALUES = 49_152  # queries x dimensions from which exhaustive search multiplies matrices: 128 384-d queries


@cache
def faiss_module():
    """faiss, with exhaustive search (Flat, IVF's coarse quantizer) multiplying matrices from BLAS_MIN_VALUES.
    faiss 1.15 does so only from 128,000 query x dimension values (333 384-d queries) and below takes one inner
    product at a time: batches of 128-300 384-d (64-128 768-d) queries measured 5-15x faster on the matrix path on
    2 idle cores and 2.7-17x with two busy processes beside; at 32 queries the matrix path lost under load, so smaller
    batches and single queries keep faiss's paths (scripts/bench_flat_paths.py, docs/scale.md)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_VALUES
    return faiss


def build_index(vectors: np.ndarray, factory: str = "Flat", metric: str = "ip", build_params: dict | None = None):
    """A faiss index over `vectors` (n x d float32), trained on them first when the type needs it
    (IVF, PQ). `metric` is "ip" (inner product; cosine on normalised vectors) or "l2"; `build_params` as
    in `set_build_params`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_index(vectors.shape[1], factory, metric, build_params)
    _train_and_add(index, vectors)
    return index


def build_index_streamed(chunks: Iterable[np.ndarray], factory: str = "Flat", metric: str = "ip",
                         train_size: int = TRAIN_SIZE, build_params: dict | None = None):
    """A faiss index over vectors that arrive in chunks and are dropped once added, so the vectors of a
    corpus larger than memory never need to be held at once. A type that needs training (IVF, PQ) is trained
    on the first `train_size` vectors, gathered in one buffer (the memory bound: train_size x d x 4 bytes),
    as faiss's own out-of-core recipes train on a sample."""
    index, buffer, filled = None, None, 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if index is None:
            index = new_index(chunk.shape[1], factory, metric, build_params)
        if index.is_trained:
            _train_and_add(index, chunk)
            continue
        if buffer is None:  # pages are only touched as rows are filled
            buffer = np.empty((train_size, chunk.shape[1]), dtype=np.float32)
        take = min(len(chunk), train_size - filled)
        buffer[filled : filled + take] = chunk[:take]
        filled += take
        if filled == train_size:
            _train_and_add(index, buffer)
            buffer = None
            _train_and_add(index, chunk[take:])
    if index is None:
        raise ValueError("no vectors to index")
    if buffer is not None:
        _train_and_add(index, buffer[:filled])
    return index


def new_index(dim: int, factory: str, metric: str = "ip", build_params: dict | None = None):
    """An empty faiss index from a factory string, PQ's polysemous training off (see below)."""
    faiss = faiss_module()

    index = faiss.index_factory(dim, factory, {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[metric])
    _skip_polysemous_training(index)
    set_build_params(index, build_params or {})
    return index


def set_build_params(index, params: dict) -> None:
    """Build-time knobs, set before any vector is added: {"efConstruction": 200} for an HNSW graph (the
    index's own or an IVF index's HNSW quantizer). faiss's ParameterSpace accepts efConstruction at search
    time too, where it changes nothing: the graph is already built. ValueError for anything else."""
    faiss = faiss_module()

    for name, value in params.items():
        if name not in BUILD_PARAMS:
            raise ValueError(f"{name!r} is not a build parameter (known: {', '.join(BUILD_PARAMS)})")
        ivf = faiss.try_extract_index_ivf(index)
        graphs = [part.hnsw for part in (faiss.downcast_index(index), ivf and faiss.downcast_index(ivf.quantizer))
                  if part is not None and hasattr(part, "hnsw")]
        if not graphs:
            raise ValueError(f"{name} needs an HNSW index (e.g. HNSW32, IVF1024_HNSW32,Flat)")
        for graph in graphs:
            graph.efConstruction = int(value)


def _skip_polysemous_training(index) -> None:
    """PQ codebooks are trained a second time by default so that Hamming distances between codes mean
    something (polysemous codes); that only serves a Hamming pre-filter (polysemous_ht), which dengen never
    sets, and it made IVF-PQ training ~10x slower (123 s vs 12 s at 2k vectors: an ad-hoc timing during
    scripts/bench_scale.py's quick check, not a script's output)."""
    faiss = faiss_module()

    ivf = faiss.try_extract_index_ivf(index)
    for part in (index, ivf):
        if part is not None and hasattr(faiss.downcast_index(part), "do_polysemous_training"):
            faiss.downcast_index(part).do_polysemous_training = False


def _train_and_add(index, vectors: np.ndarray) -> None:
    """Train `index` on `vectors` if it still needs training, then add them in batches."""
    if not index.is_trained:
        index.train(vectors)
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(vectors[start : start + ADD_BATCH])


def set_search_params(index, params: dict) -> None:
    """Search-time knobs by faiss name, e.g. {"nprobe": 16} for IVF or {"efSearch": 128} for HNSW; a build
    parameter is refused (ValueError): set after the build it would do nothing."""
    faiss = faiss_module()

    built = [name for name in params if name in BUILD_PARAMS]
    if built:
        raise ValueError(f"{', '.join(built)} shapes the index as it is built and does nothing at search time: "
                         f"give it as build_params.{built[0]}=N")
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def save_index(index, path: str | Path) -> None:
    faiss = faiss_module()

    faiss.write_index(index, str(path))


def load_index(path: str | Path, mmap: bool = True, inverted_lists: bool = False):
    """Read an index; with `mmap` its codes stay on disk and pages come from the OS cache, so loading is
    instant and an index larger than memory can be searched: flat codes (Flat, HNSW's storage) are
    memory-mapped, and an IVF index (`inverted_lists=True`: IVF-Flat, IVF-PQ) reads its inverted lists
    through faiss's OnDiskInvertedLists over the same file."""
    faiss = faiss_module()

    if not mmap:
        flags = 0
    elif inverted_lists:
        flags = faiss.IO_FLAG_MMAP  # the lists as OnDiskInvertedLists, mapped read-only from `path`
    else:
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(path), flags)


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions), each n x k; positions are -1 where fewer than k vectors exist."""
    faiss_module()
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """`shards` contiguous (start, end) row ranges of near-equal size covering 0..n."""
    if not 1 <= shards <= n:
        raise ValueError(f"shards={shards}: choose 1..{n} (one shard needs at least one vector)")
    cuts = [n * i // shards for i in range(shards + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def join_shards(shards: list):
    """One searchable index over shards of successive rows: faiss.IndexShards searches every shard in its
    own thread and merges their top-k, numbering rows shard after shard (so positions stay corpus order).
    For exact (Flat) shards the merged top-k equals one Flat index's."""
    faiss = faiss_module()

    joined = faiss.IndexShards(shards[0].d, True, True)  # threaded, successive ids
    for shard in shards:
        joined.add_shard(shard)  # the Python wrapper keeps a reference to each shard
    joined.metric_type = shards[0].metric_type
    return joined


def shard_list(index) -> list:
    """The shards of a joined index, or [index] for a plain one."""
    faiss = faiss_module()

    if isinstance(index, faiss.IndexShards):
        return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
    return [index]
