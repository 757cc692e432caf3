"""Sharded dense indexes (faiss shards joined by IndexShards) and encoding on Ray: the same top-k as one index."""
import json

import numpy as np
import pytest
from conftest import assert_same_run, run_python, shared

from indexes.faiss_index import build_index, join_shards, shard_bounds
from retrieval import build_retriever, load_retriever
from retrieval.data import load_dataset


@pytest.fixture(scope="module")
def scifact_slice():
    data = load_dataset(shared("scifact"))
    corpus = data.corpus.subset(data.corpus.ids[:120])
    queries = dict(list(data.queries.items())[:15])
    return corpus, queries


@pytest.fixture(scope="module")
def local_run(scifact_slice):
    """The run of one Flat index built in this process: what every sharded variant must reproduce."""
    corpus, queries = scifact_slice
    single = build_retriever("dense", model="minilm")
    single.index(corpus)
    return single.search(queries, k=10)


def test_shard_bounds_cover_rows_in_order():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 2) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="shards=3"):
        shard_bounds(2, 3)


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_joined_flat_shards_equal_one_flat_index(shards):
    rng = np.random.default_rng(shards)
    vectors = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((30, 24)).astype(np.float32)
    one = build_index(vectors)
    joined = join_shards([build_index(vectors[a:b]) for a, b in shard_bounds(len(vectors), shards)])
    (s1, p1), (s2, p2) = one.search(queries, 10), joined.search(queries, 10)
    np.testing.assert_array_equal(p1, p2)  # positions are corpus rows, shard after shard
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_sharded_retriever_equals_single_and_reloads(scifact_slice, local_run, tmp_path):
    corpus, queries = scifact_slice
    sharded = build_retriever("dense", model="minilm")
    sharded.index(corpus, shards=3)
    expected = local_run
    assert_same_run(expected, sharded.search(queries, k=10))

    sharded.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["shards"] == ["shards/00000.faiss", "shards/00001.faiss", "shards/00002.faiss"]
    assert not (tmp_path / "index" / "vectors.faiss").exists()
    code = (
        "import json; from retrieval import load_retriever\n"
        f"r = load_retriever({str(tmp_path / 'index')!r})\n"
        f"print(json.dumps(r.search({queries!r}, k=10)))"
    )
    assert_same_run(expected, json.loads(run_python(code).strip().splitlines()[-1]))


def test_hnsw_shards_take_search_params(scifact_slice):
    corpus, _ = scifact_slice
    r = build_retriever("dense", model="minilm", index="HNSW32", search_params={"efSearch": 77})
    r.index(corpus, shards=2)
    import faiss

    assert all(faiss.downcast_index(r._faiss.at(i)).hnsw.efSearch == 77 for i in range(2))


def test_encoding_on_ray_equals_local(scifact_slice, local_run, tmp_path):
    pytest.importorskip("ray")
    corpus, queries = scifact_slice
    # Ray runs in a fresh interpreter: its gRPC threads and signal handlers must not outlive it inside pytest
    code = (
        "import json; from retrieval import build_retriever; from retrieval.data import load_dataset, shared_data\n"
        "data = load_dataset(shared_data('scifact'))\n"
        f"corpus = data.corpus.subset(data.corpus.ids[:{len(corpus)}])\n"
        "r = build_retriever('dense', model='minilm')\n"
        "r.index(corpus, engine='ray', workers=2)  # a local Ray with two encoder actors -> two shards\n"
        f"r.save({str(tmp_path / 'ray-index')!r})\n"
        f"print(json.dumps([r._faiss.count(), r.search({queries!r}, k=10)]))"
    )
    shards, on_ray = json.loads(run_python(code).strip().splitlines()[-1])
    assert shards == 2
    assert_same_run(local_run, on_ray)
    assert_same_run(local_run, load_retriever(tmp_path / "ray-index").search(queries, k=10))


def test_ray_blocks_are_never_bundled_onto_fewer_actors():
    from retrieval.ray_engine import block_plan

    for n, workers, batch in [(300, 2, 256), (1000, 2, 256), (5, 4, 256), (1, 3, 8), (1_000_000, 16, 256)]:
        blocks, size = block_plan(n, workers, batch)
        assert size <= -(-n // blocks) and size <= batch, (n, workers, batch)  # a batch never spans blocks
        assert blocks >= min(n, workers * 4)  # every actor can get work
    assert block_plan(1_000_000, 2, 256) == (3907, 256)  # large corpora keep the encoder's batch size


def test_a_refused_ray_join_names_the_address_and_the_token_setting():
    """ray.init refusing the driver (Ray >= 2.59's token authentication) becomes a ConnectionError that says
    where and how; ray.init is replaced in a fresh interpreter, so no Ray starts and none lives in pytest."""
    pytest.importorskip("ray")
    code = (
        "import ray\nfrom retrieval.ray_engine import ray_session\n"
        "def refuse(**kwargs):\n"
        "    raise ray.exceptions.AuthenticationError('RPC error: InvalidAuthToken')\n"
        "ray.init = refuse\n"
        "try:\n"
        "    with ray_session('head:6379'):\n"
        "        pass\n"
        "except ConnectionError as error:\n"
        "    print(type(error.__cause__).__name__, '|', error)\n"
    )
    cause, message = run_python(code).strip().splitlines()[-1].split(" | ")
    assert cause == "AuthenticationError"
    assert "could not join the Ray cluster at head:6379" in message and "InvalidAuthToken" in message
    assert "RAY_AUTH_MODE=token" in message and "docs/ray.md" in message


def test_engine_refusals(scifact_slice):
    corpus, _ = scifact_slice
    with pytest.raises(ValueError, match="indexes with engine 'local'"):
        build_retriever("bm25").index(corpus, engine="ray")
    with pytest.raises(ValueError, match=r"shards: not an indexing option of a bm25 retriever \(it has none\)"):
        build_retriever("bm25").index(corpus, shards=2)
    dense = build_retriever("dense", model="minilm")
    with pytest.raises(ValueError, match="engine='ray'"):
        dense.index(corpus, workers=2)
    with pytest.raises(ValueError, match="engine 'local' or 'ray'"):
        dense.index(corpus, engine="spark")
    with pytest.raises(ValueError, match="shards=500"):
        dense.index(corpus, shards=500)


@pytest.mark.parametrize("batch", [1, 3, 130])
def test_flat_search_on_either_faiss_path_is_exact(batch):
    """dengen lowers faiss's BLAS threshold (a batch of 130 x 384 multiplies matrices, 3 x 384 does not): both
    paths give numpy's exact top 10."""
    from indexes.faiss_index import BLAS_MIN_VALUES, faiss_module, search_index

    rng = np.random.default_rng(batch)
    vectors = rng.standard_normal((3000, 384)).astype(np.float32)
    queries = rng.standard_normal((batch, 384)).astype(np.float32)
    scores, positions = search_index(build_index(vectors), queries, 10)
    assert faiss_module().cvar.distance_compute_blas_threshold == BLAS_MIN_VALUES
    assert (batch * 384 >= BLAS_MIN_VALUES) == (batch == 130)
    exact = queries @ vectors.T
    np.testing.assert_array_equal(positions, np.argsort(-exact, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, positions, axis=1), rtol=1e-5, atol=1e-4)
