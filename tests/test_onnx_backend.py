"""The ONNX backend (retrieval/dense/onnx_backend.py): MiniLM exported with torch.onnx, run by onnxruntime."""
import json

import numpy as np
import pytest

from conftest import assert_same_run, run_python, shared
from retrieval import build_retriever, load_corpus, load_dataset

TEXTS = ["what causes scurvy?", "Insulin is a hormone made by the pancreas that lowers blood sugar.",
         "a" * 3000, "Sailors ate citrus fruit to prevent it.", "", "blood sugar"] * 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    folder = tmp_path_factory.mktemp("dengen-cache")
    before = os.environ.get("DENGEN_CACHE")
    os.environ["DENGEN_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["DENGEN_CACHE"]
    else:
        os.environ["DENGEN_CACHE"] = before


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def minilm():
    from retrieval.dense.encoder import SentenceEncoder

    return SentenceEncoder("minilm", batch_size=4)


def test_fp32_and_int8_agree_with_torch(cache, minilm):
    """fp32: cosine >= 0.999 on any text, an empty and an over-long one too; int8: >= 0.98 on SciFact
    documents and queries (degenerate texts such as 3,000 a's drop to about 0.975)."""
    from retrieval.dense.onnx_backend import OnnxEncoder

    scifact = load_dataset(shared("scifact"))
    real = [d.full_text for d in list(scifact.corpus)[:40]] + list(scifact.queries.values())[:20]
    fp32 = OnnxEncoder(minilm)
    int8 = OnnxEncoder(minilm, quantize="int8")
    assert fp32.onnx_file.parent == cache / "onnx" and int8.onnx_file.name.endswith("-int8.onnx")
    assert int8.onnx_file.stat().st_size < fp32.onnx_file.stat().st_size / 2  # int8 weights
    for encoder, texts, floor in ((fp32, TEXTS + real, 0.999), (int8, real, 0.98)):
        vectors = encoder.encode_documents(texts, progress=False)
        torch_vectors = minilm.encode_documents(texts, progress=False)
        assert vectors.dtype == np.float32 and vectors.shape == torch_vectors.shape
        assert cosines(vectors, torch_vectors).min() >= floor
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert fp32.fingerprint not in (minilm.fingerprint, int8.fingerprint)
    assert OnnxEncoder(minilm).onnx_file == fp32.onnx_file  # the cached export is reused
    # the export is fused by onnxruntime's transformer optimizer (what docs/onnx.md's speed rests on);
    # the attention of each of MiniLM's 6 layers becomes one Attention op, also in the int8 graph
    import onnx

    ops = [node.op_type for node in onnx.load(str(fp32.onnx_file)).graph.node]
    assert ops.count("Attention") == 6 and ops.count("EmbedLayerNormalization") == 1
    assert ops.count("SkipLayerNormalization") == 12
    assert [node.op_type for node in onnx.load(str(int8.onnx_file)).graph.node].count("QAttention") == 6


def test_a_matryoshka_sub_model_is_exported_with_its_layers(cache, minilm):
    from retrieval.dense.matryoshka2d import Matryoshka2dEncoder
    from retrieval.dense.onnx_backend import OnnxEncoder, onnx_file, use_onnx

    sub = Matryoshka2dEncoder(minilm, layers=3, dim=128)
    onnx = use_onnx(sub)
    assert isinstance(onnx, Matryoshka2dEncoder) and onnx.dim == 128 and onnx.describe()["layers"] == 3
    assert cosines(onnx.encode_queries(TEXTS), sub.encode_queries(TEXTS)).min() >= 0.999
    full = OnnxEncoder(minilm).onnx_file
    assert onnx_file(onnx) != full and onnx_file(onnx).stat().st_size < 0.8 * full.stat().st_size  # 3 of 6 layers


def test_a_saved_onnx_index_carries_its_model_and_reloads_in_a_new_process(cache, tiny_beir_session, tmp_path):
    dataset = load_dataset(tiny_beir_session)
    r = build_retriever("dense", model="minilm", backend="onnx", quantize="int8")
    r.index(load_corpus(tiny_beir_session))
    run = r.search(dataset.queries, k=3)
    r.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["onnx"] == {"file": "onnx/model-int8.onnx", "quantize": "int8", "layers": None}
    assert "onnx/model-int8.onnx" in manifest["files"]
    empty = tmp_path / "empty-cache"
    code = (
        "import json, os\n"
        f"os.environ['DENGEN_CACHE'] = {str(empty)!r}\n"
        "from retrieval import load_retriever, load_dataset\n"
        f"r = load_retriever({str(tmp_path / 'index')!r})\n"
        f"print(json.dumps(r.search(load_dataset({str(tiny_beir_session)!r}).queries, k=3)))"
    )
    assert_same_run(run, json.loads(run_python(code).strip().splitlines()[-1]))
    assert not empty.exists()  # the index's own file ran: nothing was exported


def test_refusals(cache, minilm):
    from retrieval.dense.onnx_backend import OnnxEncoder, use_onnx

    with pytest.raises(ValueError, match="backend='tensorrt'"):
        build_retriever("dense", backend="tensorrt")
    with pytest.raises(ValueError, match="'int8' needs backend='onnx'"):
        build_retriever("dense", quantize="int8")
    with pytest.raises(ValueError, match="quantize='int4'"):
        OnnxEncoder(minilm, quantize="int4")
    from retrieval.dense.encoders import EncoderWrapper

    with pytest.raises(ValueError, match="EncoderWrapper runs its own torch code"):
        use_onnx(EncoderWrapper(minilm))
    from retrieval.dense.onnx_backend import onnx_file

    with pytest.raises(ValueError, match="does not run an ONNX model"):
        onnx_file(EncoderWrapper(minilm))


def test_the_fast_preset_is_the_int8_encoder_stored_expanded():
    from retrieval.spec import parse_spec

    fast = parse_spec("dense:model=minilm,preset=fast").describe()
    assert (fast["backend"], fast["quantize"]) == ("onnx", "int8") and "preset" not in fast
    with pytest.raises(ValueError, match="preset='turbo': choose one of fast"):
        build_retriever("dense", preset="turbo")
    with pytest.raises(ValueError, match="sets backend and quantize itself"):
        build_retriever("dense", preset="fast", backend="onnx")


def test_an_interrupted_export_leaves_no_cached_model(tmp_path, monkeypatch, minilm):
    import torch

    from retrieval.dense.onnx_backend import OnnxEncoder

    monkeypatch.setenv("DENGEN_CACHE", str(tmp_path))

    def crash(*args, **kwargs):
        open(args[2], "wb").write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", crash)
    with pytest.raises(KeyboardInterrupt):
        OnnxEncoder(minilm, quantize=None, onnx_file=None)
    assert not list((tmp_path / "onnx").glob("*.onnx"))


def test_onnx_results_are_labelled_apart_from_torch():
    from eval.runner import label
    from retrieval.spec import parse_spec

    r = parse_spec("dense:model=minilm,backend=onnx,quantize=int8")
    assert r.config["backend"] == "onnx" and r.config["quantize"] == "int8"
    assert label(r.describe()) == "dense-minilm-Flat-onnx-int8"
    assert label(parse_spec("dense:model=minilm,layers=3,backend=onnx").describe()) == "dense-minilm-Flat-L3-onnx"
    assert label(parse_spec("dense:model=minilm").describe()) == "dense-minilm-Flat"  # torch: unchanged
    assert "backend" not in parse_spec("dense:model=minilm").config
