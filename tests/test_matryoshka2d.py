"""2D Matryoshka (arXiv:2402.14776): truncation formula, real layer truncation, one-pass grid, training, save/load."""
import json
import random
from pathlib import Path

import numpy as np
import pytest

from indexes.manifest import IndexLoadError
from retrieval.dense.matryoshka2d import (
    Matryoshka2dEncoder,
    all_layer_embeddings,
    first_layers,
    truncate_normalise,
)
from tests.conftest import assert_saved_encoder_reloads
from indexes.manifest import current_folder

TEXTS = [
    "what causes scurvy?",
    "Scurvy is caused by a lack of vitamin C in the diet, which weakens connective tissue.",
    "chess",
    "Insulin is a hormone that lowers blood glucose; diabetes follows when it fails.",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 3-layer, 32-d BERT with the MiniLM tokenizer, mean pooling + Normalize, saved as a folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retrieval.models import model_path

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    transformer = Transformer(str(folder / "hf"), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model):
    from retrieval.dense.encoder import SentenceEncoder

    return SentenceEncoder(str(tiny_model), device="cpu", batch_size=2)


def test_truncate_normalise_hand_worked():
    # e = [3, 4, 12], ||e|| = 13.  dim=2: [3, 4] / 5 = [0.6, 0.8];  dim=None: [3, 4, 12] / 13
    e = np.array([[3.0, 4.0, 12.0]])
    np.testing.assert_allclose(truncate_normalise(e, 2), [[0.6, 0.8]], atol=1e-7)
    np.testing.assert_allclose(truncate_normalise(e, None), [[3 / 13, 4 / 13, 12 / 13]], atol=1e-7)
    np.testing.assert_allclose(truncate_normalise(e, 1), [[1.0]], atol=1e-7)
    assert truncate_normalise(np.zeros((1, 3)), 2).tolist() == [[0.0, 0.0]]  # no division by zero


def test_layers_k_is_kth_hidden_state_mean_pooled(tiny_encoder):
    import torch

    st = tiny_encoder.model
    batch = st.preprocess(TEXTS)
    with torch.no_grad():
        hidden = st[0].auto_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    for k in (1, 2, 3):
        pooled = ((hidden[k] * mask).sum(1) / mask.sum(1)).numpy()  # mean over real tokens
        expected = truncate_normalise(pooled, 8)
        got = Matryoshka2dEncoder(tiny_encoder, layers=k, dim=8).encode_queries(TEXTS)
        assert got.shape == (len(TEXTS), 8)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # fewer layers really gives other vectors, and the shared base model is left whole
    one = Matryoshka2dEncoder(tiny_encoder, layers=1).encode_documents(TEXTS, progress=False)
    assert not np.allclose(one, tiny_encoder.encode_documents(TEXTS, progress=False), atol=1e-3)
    assert len(st[0].auto_model.encoder.layer) == 3


def test_layers_restored_after_an_error(tiny_encoder):
    layer_list = tiny_encoder.model[0].auto_model.encoder.layer
    with pytest.raises(RuntimeError):
        with first_layers(tiny_encoder.model, 1):
            assert len(tiny_encoder.model[0].auto_model.encoder.layer) == 1
            raise RuntimeError("boom")
    assert tiny_encoder.model[0].auto_model.encoder.layer is layer_list


def test_one_pass_grid_equals_real_truncated_encoder(tiny_encoder):
    grid = all_layer_embeddings(tiny_encoder.model, TEXTS, batch_size=3, progress=False)
    assert grid.shape == (3, len(TEXTS), 32)
    for k in (1, 2, 3):
        for dim in (32, 16, 4):
            real = Matryoshka2dEncoder(tiny_encoder, layers=k, dim=dim).encode_documents(TEXTS, progress=False)
            np.testing.assert_allclose(truncate_normalise(grid[k - 1], dim), real, atol=1e-5)


def test_bad_layers_and_dim(tiny_encoder):
    with pytest.raises(ValueError, match=r"layers=4.*1\.\.3"):
        Matryoshka2dEncoder(tiny_encoder, layers=4)
    with pytest.raises(ValueError, match=r"layers=0"):
        Matryoshka2dEncoder(tiny_encoder, layers=0)
    with pytest.raises(ValueError, match=r"dim=33.*1\.\.32"):
        Matryoshka2dEncoder(tiny_encoder, dim=33)
    with pytest.raises(ValueError, match=r"dim='8'"):
        Matryoshka2dEncoder(tiny_encoder, dim="8")


def test_dim_describe_fingerprint_and_rewrap(tiny_encoder):
    enc = Matryoshka2dEncoder(tiny_encoder, layers=2, dim=16)
    assert enc.dim == 16 and enc.describe()["layers"] == 2 and enc.describe()["dim"] == 16
    assert Matryoshka2dEncoder(tiny_encoder).dim == 32 and Matryoshka2dEncoder(tiny_encoder).describe()["layers"] == 3
    assert enc.fingerprint != tiny_encoder.fingerprint  # sub-model vectors never share a cache entry
    assert Matryoshka2dEncoder(tiny_encoder).fingerprint == tiny_encoder.fingerprint
    rewrapped = Matryoshka2dEncoder(enc, dim=8)  # overrides, not stacks: layers kept, dim replaced
    assert rewrapped.base is tiny_encoder and rewrapped.layers == 2 and rewrapped.dim == 8


def test_save_load_round_trip(tiny_encoder, tmp_path):
    from retrieval.dense.encoders import EncoderWrapper, load_encoder

    Matryoshka2dEncoder(tiny_encoder, layers=2, dim=16).save(tmp_path / "m2d", info={"note": "test"})
    manifest = json.loads((tmp_path / "m2d" / "manifest.json").read_text())
    assert manifest["kind"] == "matryoshka2d" and manifest["layers"] == 2 and manifest["dim"] == 16
    assert (current_folder(tmp_path / "m2d") / "model").is_dir()
    loaded = load_encoder(tmp_path / "m2d", device="cpu")
    assert isinstance(loaded, Matryoshka2dEncoder) and loaded.layers == 2 and loaded.dim == 16
    np.testing.assert_allclose(loaded.encode_queries(TEXTS),
                               Matryoshka2dEncoder(tiny_encoder, layers=2, dim=16).encode_queries(TEXTS), atol=1e-6)
    with pytest.raises(TypeError, match="SentenceEncoder"):  # a wrapper in between would be silently lost
        Matryoshka2dEncoder(EncoderWrapper(tiny_encoder)).save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # a tampered weight file is refused
    weights = next((current_folder(tmp_path / "m2d") / "model").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(IndexLoadError):
        load_encoder(tmp_path / "m2d")


def test_saved_module_index_reloads_in_new_process(tiny_encoder, tiny_beir, tmp_path):
    Matryoshka2dEncoder(tiny_encoder).save(tmp_path / "m2d")
    run = assert_saved_encoder_reloads(tmp_path / "m2d", tiny_beir, tmp_path, layers=2, dim=8)
    assert len(run) == 4


def test_dense_retriever_layers_dim_on_untrained_base(tiny_model, tiny_beir):
    from retrieval import build_retriever, load_corpus, load_queries

    r = build_retriever("dense", model=str(tiny_model), layers=1, dim=4)
    r.index(load_corpus(tiny_beir))
    assert r._faiss.d == 4
    assert len(r.search(load_queries(tiny_beir), k=3)) == 4


def test_tiny_training_step_changes_weights_and_lowers_loss(tiny_model):
    import torch

    from retrieval.dense.encoder import SentenceEncoder
    from training.matryoshka2d import DEFAULTS, make_losses, train_steps

    random.seed(0)
    torch.manual_seed(0)
    model = SentenceEncoder(str(tiny_model), device="cpu").model
    config = {**DEFAULTS, "dims": [32, 16, 8], "lr": 1e-3, "warmup": 0.0}
    pairs = [(t, t) for t in TEXTS]
    before = [p.detach().clone() for p in model.parameters()]
    loss_fn = make_losses(model, config)["pairs"]

    def full_loss():  # every layer every time, so the value is comparable across calls
        loss_fn.n_layers_per_step = -1
        model.eval()
        with torch.no_grad():
            feats = [model.preprocess([a for a, _ in pairs]), model.preprocess([b for _, b in pairs])]
            return float(loss_fn(feats, None))

    start = full_loss()
    history = train_steps(model, [("pairs", pairs)] * 8 + [("sts", [(a, b, 0.9) for a, b in pairs])], config, progress=False)
    assert len(history["losses"]) == 9
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert full_loss() < start


def test_paper_formulation_composition(tiny_encoder):
    """Paper2dmseLoss = l(X_L) + l(X_L[:d']) + l(X_i) + l(X_i[:d']) + w T KL, recomputed here by hand."""
    import torch
    import torch.nn.functional as F
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from training.matryoshka2d import Paper2dmseLoss

    model = tiny_encoder.model
    model.eval()
    base = MultipleNegativesRankingLoss(model)
    loss_fn = Paper2dmseLoss(model, base, [32, 16, 8], kl_div_weight=0.5, kl_temperature=0.3)
    feats = [model.preprocess(TEXTS[:2]), model.preprocess(TEXTS[2:])]
    random.seed(3)
    with torch.no_grad():
        got = float(loss_fn(feats, None))
    random.seed(3)
    i, d = random.randint(1, 2), random.choice([16, 8])  # the same draws, in the same order
    with torch.no_grad():
        layers = [all_layer_embeddings(model, TEXTS[:2], progress=False), all_layer_embeddings(model, TEXTS[2:], progress=False)]
        last = [torch.from_numpy(x[2]) for x in layers]
        mid = [torch.from_numpy(x[i - 1]) for x in layers]
        expected = sum(float(base.compute_loss_from_embeddings(e, None)) for e in (last, mid))
        expected += sum(float(base.compute_loss_from_embeddings([x[:, :d] for x in e], None)) for e in (last, mid))
        kl = F.kl_div(F.log_softmax(torch.cat(mid) / 0.3, -1), F.softmax(torch.cat(last) / 0.3, -1), reduction="batchmean")
        expected += 0.5 * 0.3 * float(kl)
    assert got == pytest.approx(expected, rel=1e-4)


def test_paper_formulation_trains(tiny_model):
    import torch

    from retrieval.dense.encoder import SentenceEncoder
    from training.matryoshka2d import DEFAULTS, train_steps

    random.seed(0)
    torch.manual_seed(0)
    model = SentenceEncoder(str(tiny_model), device="cpu").model
    before = [p.detach().clone() for p in model.parameters()]
    config = {**DEFAULTS, "formulation": "paper", "dims": [32, 16, 8], "lr": 1e-3, "warmup": 0.0}
    history = train_steps(model, [("pairs", [(t, t) for t in TEXTS]), ("sts", [(TEXTS[0], TEXTS[1], 0.2), (TEXTS[1], TEXTS[3], 0.7)])],
                          config, progress=False)
    assert len(history["losses"]) == 2 and all(np.isfinite(v) for _, v in history["losses"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_interleave_alternates():
    from training.matryoshka2d import interleave

    assert interleave(["a1", "a2", "a3", "a4"], ["b1", "b2"]) == ["a1", "a2", "b1", "a3", "a4", "b2"]
    assert interleave(["a"], []) == ["a"]
    assert interleave(["a1", "a2"], ["b1", "b2"]) == ["a1", "b1", "a2", "b2"]


@pytest.mark.parametrize("body, message", [
    ("lr: 0.1\nlayerz: 3\n", "unknown key(s) ['layerz']"),
    ("dims: [64, 128]\n", "dims=[64, 128]: list them largest first"),
    ("grid_layers: []\n", "grid_layers=[]"),
    ("sts_loss: mse\n", "sts_loss='mse'"),
    ("use_sts: false\nuse_scifact: false\n", "nothing to train on"),
    ("batch_size: 0\n", "batch_size=0"),
    ("formulation: v3\n", "formulation='v3'"),
])
def test_bad_config(tmp_path, body, message):
    from training.matryoshka2d import load_config

    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(SystemExit) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.slow
def test_recipe_small_on_minilm(tmp_path):
    """The real recipe on MiniLM with 64 pairs per task, no grid: trains, saves, reloads with the same vectors."""
    import yaml

    from retrieval.dense.encoders import load_encoder
    from tests.conftest import run_python
    from training.matryoshka2d import main

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"limit_pairs": 64, "batch_size": 16, "evaluate": False, "out": str(tmp_path / "out"),
                                      "cache": str(tmp_path / "cache")}))
    report = main(["--config", str(config)])
    assert report["train"]["steps"] == 8
    folder = tmp_path / "out" / "model"
    here = load_encoder(folder, device="cpu")
    sub = Matryoshka2dEncoder(here, layers=3, dim=64).encode_queries(TEXTS)
    code = (
        "import json; from retrieval.dense.encoders import load_encoder\n"
        "from retrieval.dense.matryoshka2d import Matryoshka2dEncoder\n"
        f"e = Matryoshka2dEncoder(load_encoder({str(folder)!r}, device='cpu'), layers=3, dim=64)\n"
        f"print(json.dumps(e.encode_queries({TEXTS!r}).tolist()))"
    )
    there = np.array(json.loads(run_python(code).strip().splitlines()[-1]))
    np.testing.assert_allclose(there, sub, atol=1e-5)
