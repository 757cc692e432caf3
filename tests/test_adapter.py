"""Low-rank residual adapter (arXiv:2310.05380): formula, identity at init, training, save/load."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from indexes.manifest import IndexLoadError
from retrieval.dense.adapter import AdaptedEncoder, ResidualAdapter
from indexes.manifest import current_folder

REPO = Path(__file__).resolve().parents[1]


def test_formula_hand_worked_rank_one():
    # d = 3, r = 1.  A = [[1, 0, 0]] (1x3), B = [[0], [2], [0]] (3x1), e = [1, 1, 0]
    #   A e      = 1*1 + 0*1 + 0*0             = 1
    #   B (A e)  = [0, 2, 0] * 1               = [0, 2, 0]
    #   e'       = e + B A e = [1, 1, 0] + [0, 2, 0] = [1, 3, 0]
    #   normalised: [1, 3, 0] / sqrt(1 + 9)    = [0.316228, 0.948683, 0]
    A = np.array([[1.0, 0.0, 0.0]])
    B = np.array([[0.0], [2.0], [0.0]])
    e = np.array([[1.0, 1.0, 0.0]], dtype=np.float32)
    raw = ResidualAdapter(A, B, normalize=False).apply(e)
    np.testing.assert_allclose(raw, [[1.0, 3.0, 0.0]], rtol=0, atol=1e-7)
    unit = ResidualAdapter(A, B, normalize=True).apply(e)
    np.testing.assert_allclose(unit, [[1 / np.sqrt(10), 3 / np.sqrt(10), 0.0]], rtol=0, atol=1e-6)
    # a single vector works too, and the output is float32
    single = ResidualAdapter(A, B, normalize=False).apply(e[0])
    assert single.shape == (3,) and single.dtype == np.float32
    np.testing.assert_allclose(single, [1.0, 3.0, 0.0], atol=1e-7)


def test_untrained_adapter_is_identity():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(20, 16)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    adapter = ResidualAdapter.identity(16, rank=4, normalize=True)
    assert adapter.A.any() and not adapter.B.any()  # A random as training starts, B zero
    np.testing.assert_allclose(adapter.apply(unit), unit, atol=1e-6)
    np.testing.assert_array_equal(ResidualAdapter.identity(16, rank=4, normalize=False).apply(vectors), vectors)


def reflected_problem(n=48, dim=16, seed=0):
    """Docs have a large, varied component along u; each query is its doc reflected through u's
    hyperplane (q = (I - 2uu^T) d, a rank-1 change), so the identity prefers docs whose u-component has
    the opposite sign and ranks the positive badly, while a rank-1 residual (A = u^T, B = -2u) would undo
    the reflection exactly."""
    rng = np.random.default_rng(seed)
    u = np.zeros(dim, dtype=np.float32)
    u[0] = 1.0
    docs = rng.normal(size=(n, dim)).astype(np.float32)
    docs[:, 0] = rng.uniform(-8.0, 8.0, size=n)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs - 2.0 * np.outer(docs @ u, u)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries.astype(np.float32), docs, [(i, i) for i in range(n)]


def mrr(queries, docs, pairs):
    scores = queries @ docs.T
    return float(np.mean([1.0 / (1 + np.sum(scores[q] > scores[q, d])) for q, d in pairs]))


def test_training_improves_training_mrr():
    pytest.importorskip("torch")
    from training.adapter import train_adapter

    queries, docs, pairs = reflected_problem()
    before = mrr(queries, docs, pairs)
    assert before < 0.4  # the identity ranks the positive wrong for most queries
    adapter = train_adapter(queries, docs, pairs, rank=2, epochs=20, lr=0.05, temperature=0.05, batch_size=16, seed=0, progress=False, threads=1)
    after = mrr(adapter.apply(queries), docs, pairs)
    assert adapter.normalize  # inputs are unit length, so the adapter re-normalises
    assert after > before + 0.3, (before, after)
    # deterministic with the seed
    again = train_adapter(queries, docs, pairs, rank=2, epochs=20, lr=0.05, temperature=0.05, batch_size=16, seed=0, progress=False, threads=1)
    np.testing.assert_array_equal(adapter.A, again.A)
    np.testing.assert_array_equal(adapter.B, again.B)


def test_training_with_documents_flag():
    pytest.importorskip("torch")
    from training.adapter import train_adapter

    queries, docs, pairs = reflected_problem(n=24)
    adapter = train_adapter(queries, docs, pairs, rank=2, epochs=3, lr=0.01, batch_size=8, documents=True, progress=False, threads=1)
    assert adapter.documents and adapter.info["negatives"] == "whole corpus"
    assert adapter.B.any()


def trained_adapter(seed=3, dim=8, rank=2):
    rng = np.random.default_rng(seed)
    return ResidualAdapter(rng.normal(size=(rank, dim)), rng.normal(size=(dim, rank)), normalize=True, info={"note": "test"})


def test_save_then_load_in_a_new_process(tmp_path):
    adapter = trained_adapter()
    folder = tmp_path / "adapter"
    adapter.save(folder)
    inputs = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    code = textwrap.dedent(f"""
        import numpy as np
        from retrieval.dense.adapter import ResidualAdapter
        a = ResidualAdapter.load({str(folder)!r})
        np.save({str(tmp_path / 'outputs.npy')!r}, a.apply(np.load({str(tmp_path / 'inputs.npy')!r})))
        print(a.rank, a.dim, a.normalize, a.documents, a.info["note"])
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "8", "True", "False", "test"]
    np.testing.assert_array_equal(np.load(tmp_path / "outputs.npy"), adapter.apply(inputs))


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_damaged_save_fails_to_load(tmp_path, damage):
    folder = tmp_path / "adapter"
    trained_adapter().save(folder)
    target = current_folder(folder) / "B.npy"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[:-4])
    elif damage == "edit":  # same size, one byte changed
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        target.unlink()
    with pytest.raises(IndexLoadError):
        ResidualAdapter.load(folder)


class FakeEncoder:
    dim = 3
    normalize = False

    def encode_queries(self, texts, progress=False):
        return np.array([[1.0, 1.0, 0.0]] * len(texts), dtype=np.float32)

    encode_documents = encode_queries

    def describe(self):
        return {"model": "fake"}


def test_adapted_encoder_applies_to_queries_and_optionally_documents():
    adapter = ResidualAdapter([[1.0, 0.0, 0.0]], [[0.0], [2.0], [0.0]], normalize=False)
    enc = AdaptedEncoder(FakeEncoder(), adapter)
    np.testing.assert_allclose(enc.encode_queries(["q"]), [[1.0, 3.0, 0.0]])
    np.testing.assert_allclose(enc.encode_documents(["d"]), [[1.0, 1.0, 0.0]])  # documents untouched by default
    assert enc.dim == 3
    assert enc.describe() == {"base": {"model": "fake"}, "adapter": "residual-adapter", "rank": 1, "documents": False, "normalize": False}
    both = AdaptedEncoder(FakeEncoder(), adapter, documents=True)
    np.testing.assert_allclose(both.encode_documents(["d"]), [[1.0, 3.0, 0.0]])
    assert both.describe()["documents"] is True
    trained_on_both = ResidualAdapter(adapter.A, adapter.B, normalize=False, documents=True)
    np.testing.assert_allclose(AdaptedEncoder(FakeEncoder(), trained_on_both).encode_documents(["d"]), [[1.0, 3.0, 0.0]])
    with pytest.raises(ValueError):
        AdaptedEncoder(FakeEncoder(), ResidualAdapter.identity(4, 1))


@pytest.mark.slow
def test_scifact_command_line(tmp_path):
    """Real MiniLM on SciFact (vectors from results/cache when there): base row and one small adapter."""
    import json

    from retrieval.data import shared_data

    data = shared_data("scifact")
    if not (data / "qrels" / "train.tsv").is_file():
        pytest.skip("SciFact with a train split is not available")
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {str(data)!r}\nranks: [4]\nepochs: 1\ncache: {str(REPO / 'results' / 'cache')!r}\nout: {str(tmp_path / 'out')!r}\n")
    done = subprocess.run([sys.executable, "-m", "training.adapter", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    base, adapted = report["results"]
    assert base["test"]["ndcg@10"] == pytest.approx(0.6451, abs=5e-4)
    assert 0.0 < adapted["test"]["ndcg@10"] <= 1.0
    assert ResidualAdapter.load(tmp_path / "out" / "rank-4").rank == 4


def test_dense_index_over_a_saved_adapter_reloads_in_a_new_process(tiny_beir, tmp_path):
    """A saved AdaptedEncoder is a `model` for the dense retriever; the index round-trips through a new process."""
    from conftest import assert_saved_encoder_reloads

    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import encoder_fingerprint, load_encoder

    base = SentenceEncoder("minilm")
    rng = np.random.default_rng(0)
    adapter = ResidualAdapter(rng.normal(size=(4, 384)) / 20, rng.normal(size=(384, 4)) / 20, documents=True)
    AdaptedEncoder(base, adapter).save(tmp_path / "adapter")
    loaded = load_encoder(tmp_path / "adapter")
    assert isinstance(loaded, AdaptedEncoder) and loaded.documents
    texts = ["what causes scurvy", "vitamin C"]
    np.testing.assert_allclose(loaded.encode_queries(texts), adapter.apply(base.encode_queries(texts)), atol=1e-6)
    assert loaded.fingerprint == encoder_fingerprint(tmp_path / "adapter") != base.fingerprint
    run = assert_saved_encoder_reloads(tmp_path / "adapter", tiny_beir, tmp_path)
    assert next(iter(run["q1"])) == "d2"


def test_adapter_without_base_record_is_refused(tmp_path):
    from retrieval.dense.encoders import load_encoder

    ResidualAdapter.identity(8, 2).save(tmp_path / "bare")
    with pytest.raises(IndexLoadError, match="base encoder"):
        load_encoder(tmp_path / "bare")
