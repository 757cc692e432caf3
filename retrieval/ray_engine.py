"""Indexing on Ray: dense retrievers encode the corpus with Ray Data (a pool of actors, each loading the
encoder once and encoding batch after batch); SEAL builds its FM-index shards as Ray tasks.

`dengen index build ... --engine ray [--ray-address ADDR]` and `retriever.index(corpus, engine="ray")` come
here. Without an address a local Ray is started on this machine (and stopped afterwards); with one
(`head:6379`, or $RAY_ADDRESS; `ray://` needs ray[client]) the job joins that cluster. Vectors come back to the
driver in corpus order, which writes them as faiss shards (retrieval.dense.retriever); FM-index shards come
back as their arrays. Every worker needs what the driver has: Python 3.11,
`pip install torch==2.13.0 'dengen[dense,onnx,ray]'` (or `[generative,ray]`) and the model's package
(docs/ray.md).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
from tqdm.auto import tqdm


@contextmanager
def ray_session(address: str | None = None):
    """Use the Ray already initialised in this process, join the cluster at `address`, or start a local one;
    a Ray started here is shut down on leaving."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        where = address or os.environ.get("RAY_ADDRESS", "(a new local Ray)")
        raise ConnectionError(f"could not join the Ray cluster at {where}: {error}. A cluster started with "
                              "`ray start` (Ray >= 2.59) wants RAY_AUTH_MODE=token and its token, from "
                              "~/.ray/auth_token or RAY_AUTH_TOKEN (docs/ray.md)") from error
    try:
        yield ray
    finally:
        ray.shutdown()


class EncodeBatch:
    """A Ray Data actor: builds the encoder of a dense retriever config once, then encodes batches."""

    def __init__(self, config: dict):
        from retrieval.dense.retriever import DenseRetriever

        self.encoder = DenseRetriever(**config).encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode_documents([str(t) for t in batch["text"]], progress=False)
        return {"row": batch["row"], "vector": vectors}


def block_plan(n: int, workers: int, batch_size: int) -> tuple[int, int]:
    """(blocks, batch size) for `n` rows on `workers` actors: at least 4 blocks a worker where there are rows
    enough (load balance), and batches no larger than a block, because Ray Data bundles blocks up to the
    batch size: 300 rows in 2 blocks with batches of 256 went to one actor, which halved the speed of a
    2-worker cluster (scripts/bench_ray.py)."""
    blocks = max(1, min(n, max(workers * 4, -(-n // batch_size))))
    return blocks, max(1, min(batch_size, -(-n // blocks)))


def encode_on_ray(config: dict, texts: list[str], workers: int | None = None, address: str | None = None,
                  batch_size: int = 256, cpus_per_worker: float = 1) -> tuple[np.ndarray, int]:
    """(vectors of `texts` in row order, the number of workers) from `workers` actors (default: one per CPU
    of the cluster).

    Args:
        config: a DenseRetriever config (model, layers, backend, ...): each actor builds that encoder.
        texts: document texts, in corpus order.
        workers: actor pool size; each actor holds one copy of the model.
        address: a Ray cluster to join; None starts a local Ray (or uses the one already running).
        batch_size: documents per Ray Data batch (the encoder splits it into its own batch size).
        cpus_per_worker: CPUs reserved per actor (torch in the actor uses that many threads).
    """
    with ray_session(address) as ray:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
        items = [{"row": i, "text": t} for i, t in enumerate(texts)]
        blocks, batch_size = block_plan(len(items), workers, batch_size)
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            EncodeBatch, fn_constructor_kwargs={"config": config}, batch_size=batch_size,
            concurrency=workers, num_cpus=cpus_per_worker, batch_format="numpy",
        )
        vectors = None
        with tqdm(total=len(texts), desc=f"encoding on Ray ({workers} workers)", unit="doc") as bar:
            for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
                if vectors is None:
                    vectors = np.zeros((len(texts), batch["vector"].shape[1]), dtype=np.float32)
                vectors[batch["row"]] = batch["vector"]
                bar.update(len(batch["row"]))
            if bar.n != len(texts):
                raise RuntimeError(f"Ray returned {bar.n} of {len(texts)} document vectors")
        return vectors, workers


def fm_shard_arrays(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    """A Ray task: the FM-index arrays of one shard, whose documents arrive as one token stream + lengths
    (two arrays travel through Ray's object store without pickling a list per document)."""
    from indexes.fmindex import FMIndex

    return FMIndex.build_arrays(np.split(tokens, np.cumsum(lengths)[:-1]))


def build_fm_on_ray(docs: list, shards: int | None = None, address: str | None = None):
    """A `ShardedFMIndex` over `docs` (token-id sequences, corpus order) whose shards are built by Ray tasks
    of one CPU each, in parallel; `shards` defaults to the cluster's CPUs. The shards and their merged
    answers are those of `ShardedFMIndex.build(docs, shards)` in this process."""
    from indexes.fm_shards import ShardedFMIndex
    from indexes.fmindex import FMIndex

    with ray_session(address) as ray:
        if shards is None:
            shards = max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1)(fm_shard_arrays)
        refs = []
        for start, end in ShardedFMIndex.split(len(docs), shards):
            part = [np.asarray(d) for d in docs[start:end]]
            refs.append(task.remote(np.concatenate(part), np.array([d.size for d in part], dtype=np.int64)))
        built = []
        for ref in tqdm(refs, desc=f"FM-index shards on Ray ({len(refs)})", unit="shard"):
            # copies: arrays from ray.get live in the object store, which a local Ray frees at shutdown
            built.append(FMIndex(*[np.array(a) for a in ray.get(ref)]))
        return ShardedFMIndex(built)
