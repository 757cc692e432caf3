"""LexSemBridge (arXiv:2508.17858): formulas on hand-worked cases, queries-only default, save/load keeps the
bridge, a training step, config errors; a slow run of the whole recipe on a small SciFact cut."""
import json
import math

import numpy as np
import pytest

from conftest import assert_saved_encoder_reloads, shared
from retrieval.dense.lexsembridge import LexSemBridgeEncoder, lexical_bridge_class, make_bridge
from indexes.manifest import current_folder

torch = pytest.importorskip("torch")

P = [0.6, 0.8]  # the pooled embedding of every hand-worked case (unit length already)


def _normalise(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _bridge(method, vocab, dim=2, special=(0, 1, 2), W=None, b=None):
    bridge = lexical_bridge_class()(method, vocab, dim, special_ids=special)
    with torch.no_grad():
        bridge.linear.weight.copy_(torch.tensor(W, dtype=torch.float32))
        bridge.linear.bias.copy_(torch.tensor(b or [0.0] * dim, dtype=torch.float32))
    return bridge


def test_slr_formula_hand_worked():
    # vocab 6, ids 0 PAD, 1 CLS, 2 UNK ignored; query [CLS, 3, 5, 3, PAD] (PAD masked); scale 2
    # s = [0, 0, 0, 2, 0, 2] (presence x scale, repeated id counted once: amax)
    W = [[0, 0, 0, 0.5, 0, 0], [0, 0, 0, 0, 0, 0.25]]
    bridge = _bridge("slr", 6, W=W)
    with torch.no_grad():
        bridge.scale.fill_(2.0)
    ids = torch.tensor([[1, 3, 5, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    s = bridge.lexical_vector(ids, mask)
    assert s.tolist() == [[0, 0, 0, 2, 0, 2]]
    # W s = [1.0, 0.5] -> e = softmax = [1/(1+e^-0.5), e^-0.5/(1+e^-0.5)]
    e0 = 1 / (1 + math.exp(-0.5))
    e = [e0, 1 - e0]
    assert bridge.gate(s)[0].tolist() == pytest.approx(e, abs=1e-6)
    expected = _normalise([e[0] * P[0], e[1] * P[1]])  # = [0.77755, 0.62881]
    assert expected == pytest.approx([0.77755, 0.62881], abs=1e-4)
    got = bridge(torch.tensor([P]), ids, mask)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_llr_formula_hand_worked():
    # w_t = relu(u.h_t + c), u = [1, -1], c = 0; s_v = max over positions of id v; CLS/PAD/UNK zeroed
    bridge = _bridge("llr", 6, W=[[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        bridge.token_weight.weight.copy_(torch.tensor([[1.0, -1.0]]))
        bridge.token_weight.bias.zero_()
    ids = torch.tensor([[1, 3, 4, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    states = torch.tensor([[[5.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [9.0, 0.0]]])
    # CLS: 5 but special -> 0; id 3: max(relu(1), relu(2)) = 2; id 4: relu(-2) = 0; PAD: masked/zeroed
    s = bridge.lexical_vector(ids, mask, token_states=states)
    assert s.tolist() == [[0, 0, 0, 2, 0, 0]]
    # W s = [2, 0] -> e = [e^2/(e^2+1), 1/(e^2+1)] = [0.880797, 0.119203]
    e = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    expected = _normalise([e[0] * P[0], e[1] * P[1]])
    got = bridge(torch.tensor([P]), ids, mask, token_states=states)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_clr_formula_hand_worked():
    # MLM head: dense = identity, gelu, LayerNorm over 2 dims (-> [1, -1] for any [a > b]), decoder = E^T + bias
    bridge = _bridge("clr", 4, W=[[1, 0, 0, 0], [0, 0, 1, 0]])
    with torch.no_grad():
        bridge.head_dense.weight.copy_(torch.eye(2))
        bridge.head_dense.bias.zero_()
        bridge.head_bias.copy_(torch.tensor([0.0, 0.0, 0.5, -2.0]))
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.5, -1.0]])
    ids = torch.tensor([[1, 3, 2]])
    mask = torch.ones_like(ids)
    states = torch.tensor([[[2.0, -1.0], [7.0, 7.0], [0.0, 3.0]]])  # only position 0 (CLS) is used
    # logits = E [1, -1] + bias = [1, -1, 1, 1.5] + [0, 0, 0.5, -2] = [1, -1, 1.5, -0.5]
    # s = log1p(relu(logits)) = [ln 2, 0, ln 2.5, 0]
    s = bridge.lexical_vector(ids, mask, token_states=states, word_embeddings=E)
    assert s[0].tolist() == pytest.approx([math.log(2), 0, math.log(2.5), 0], abs=1e-5)
    # W s = [ln 2, ln 2.5] -> e = [2/4.5, 2.5/4.5]
    expected = _normalise([2 / 4.5 * P[0], 2.5 / 4.5 * P[1]])  # = [0.5145, 0.8575]
    assert expected == pytest.approx([0.5145, 0.8575], abs=1e-4)
    got = bridge(torch.tensor([P]), ids, mask, token_states=states, word_embeddings=E)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_untrained_slr_gate_is_close_to_identity():
    """nn.Linear's init keeps W s small, so e is nearly uniform and q' ~ p: training starts at the encoder."""
    bridge = lexical_bridge_class()("slr", 30522, 8, special_ids=(0,))  # a real vocabulary size
    p = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    ids = torch.randint(1, 30522, (3, 5))
    q = bridge(p, ids, torch.ones_like(ids))
    assert torch.allclose((q * p).sum(-1), torch.ones(3), atol=1e-3)


# ---------------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random BERT (MiniLM's tokenizer) saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retrieval.models import model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    transformer = models.Transformer(str(folder / "hf"), max_seq_length=32)
    st = SentenceTransformer(modules=[transformer, models.Pooling(16, "mean"), models.Normalize()], device="cpu")
    st.save(str(folder / "st"))
    return folder / "st"


def _loud(bridge, seed=0):
    """Make W large so the gate visibly changes vectors (an untrained bridge is nearly the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bridge.linear.weight.copy_(torch.randn(bridge.linear.weight.shape, generator=g) * 2.0)
    return bridge


TEXTS = ["what causes scurvy", "insulin lowers blood glucose", "black holes trap light"]


@pytest.mark.parametrize("method", ["slr", "llr", "clr"])
def test_queries_only_by_default(tiny_model, method):
    from retrieval.dense.encoder import SentenceEncoder

    base = SentenceEncoder(str(tiny_model), device="cpu")
    enc = LexSemBridgeEncoder(base, _loud(make_bridge(base.model, method)))
    assert enc.documents is False
    np.testing.assert_allclose(enc.encode_documents(TEXTS, progress=False), base.encode_documents(TEXTS, progress=False), atol=1e-6)
    q, plain = enc.encode_queries(TEXTS), base.encode_queries(TEXTS)
    assert q.shape == plain.shape and q.dtype == np.float32
    assert np.abs(q - plain).max() > 1e-2
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    both = LexSemBridgeEncoder(base, enc.bridge, documents=True)
    np.testing.assert_allclose(both.encode_documents(TEXTS, progress=False), q, atol=1e-6)


def test_save_load_keeps_bridge_in_process(tiny_model, tmp_path):
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import load_encoder

    base = SentenceEncoder(str(tiny_model), device="cpu")
    enc = LexSemBridgeEncoder(base, _loud(make_bridge(base.model, "llr")), info={"note": "test"})
    manifest = enc.save(tmp_path / "module")
    assert manifest["kind"] == "lexsembridge" and manifest["bridge"]["method"] == "llr"
    module = current_folder(tmp_path / "module")
    assert (module / "bridge.safetensors").is_file() and (module / "model").is_dir()
    loaded = load_encoder(tmp_path / "module", device="cpu")
    assert isinstance(loaded, LexSemBridgeEncoder) and loaded.bridge.method == "llr"
    np.testing.assert_allclose(loaded.encode_queries(TEXTS), enc.encode_queries(TEXTS), atol=1e-6)
    bridgeless = load_encoder(module / "model", device="cpu")  # what the reference's save keeps
    assert np.abs(loaded.encode_queries(TEXTS) - bridgeless.encode_queries(TEXTS)).max() > 1e-2


def test_saved_module_reloads_in_new_process_and_bridge_matters(tmp_path, tiny_beir):
    """minilm + a loud SLR bridge through the dense retriever: same run in a new process, and not the
    bridge-less run (dropping the bridge, as the reference's save does, would change it)."""
    from retrieval import build_retriever, load_corpus, load_queries
    from retrieval.dense.encoder import SentenceEncoder

    base = SentenceEncoder("minilm", device="cpu")
    enc = LexSemBridgeEncoder(base, _loud(make_bridge(base.model, "slr"), seed=1))
    enc.save(tmp_path / "module")
    run = assert_saved_encoder_reloads(tmp_path / "module", tiny_beir, tmp_path)
    plain = build_retriever("dense", model=str(current_folder(tmp_path / "module") / "model"))
    plain.index(load_corpus(tiny_beir))
    plain_run = plain.search(load_queries(tiny_beir), k=5)
    assert any(abs(run[q][d] - plain_run[q].get(d, -9)) > 1e-3 for q in run for d in run[q])


def test_tampered_bridge_is_refused(tiny_model, tmp_path):
    from indexes.manifest import IndexLoadError
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import load_encoder

    base = SentenceEncoder(str(tiny_model), device="cpu")
    LexSemBridgeEncoder(base, make_bridge(base.model, "slr")).save(tmp_path / "m")
    path = current_folder(tmp_path / "m") / "bridge.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(IndexLoadError):
        load_encoder(tmp_path / "m")


def test_training_step_updates_encoder_and_bridge(tiny_model, tiny_beir):
    from retrieval import load_dataset
    from retrieval.dense.encoder import SentenceEncoder
    from training.lexsembridge import DEFAULTS, fine_tune

    config = {**DEFAULTS, "model": str(tiny_model), "batch_size": 2, "max_steps": 1, "bridge_lr": 1e-2}
    data = load_dataset(tiny_beir, "test")
    for method in ("slr", "llr", "clr"):
        fresh = make_bridge(SentenceEncoder(str(tiny_model), device="cpu").model, method, seed=0)  # fine_tune's init
        st, bridge, info = fine_tune(method, config, data, progress=False)
        assert info["steps"] == 1 and math.isfinite(info["loss_last10"])
        assert not torch.allclose(bridge.linear.weight, fresh.linear.weight)  # the bridge learned
    st, bridge, info = fine_tune("plain", config, data, progress=False)
    assert bridge is None and info["steps"] == 1


# ---------------------------------------------------------------------------------------- config, tasks


@pytest.mark.parametrize("text, key", [
    ("epochz: 1\n", "epochz"),
    ("methods: [slr, splade]\n", "methods"),
    ("tasks: {docz: 3}\n", "docz"),
    ("lr: -1\n", "lr"),
    ("bridge_lr: fast\n", "bridge_lr"),
])
def test_config_errors_name_file_and_key(tmp_path, text, key):
    from training.lexsembridge import load_config

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as err:
        load_config(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_shipped_config_loads():
    from training.lexsembridge import load_config

    config = load_config("training/configs/lexsembridge-scifact.yaml")
    assert config["methods"] == ["plain", "slr", "llr", "clr"] and config["documents"] is False


def test_fine_grained_tasks(tmp_path):
    from conftest import write_beir

    from retrieval import load_corpus
    from training.lexsembridge import fine_grained_tasks

    filler = " ".join(f"filler{k}" for k in range(20))  # in every document: idf 0
    docs = [(f"d{i}", "", f"{filler} special{i}y unique{i}x") for i in range(6)]
    corpus = load_corpus(write_beir(tmp_path / "b", docs=docs, queries={"q": "x"}, qrels={"q": {"d0": 1}}))
    tasks = fine_grained_tasks(corpus, exclude={"d0"}, docs=3, keywords=2, pop_words=[4, 8], seed=0)
    assert set(tasks) == {"keyword", "pop4", "pop8"}
    for name, (queries, qrels) in tasks.items():
        assert len(queries) == 3 and set(queries) == set(qrels)
        for qid, text in queries.items():
            (doc_id,) = qrels[qid]
            assert doc_id != "d0"
            if name == "keyword":
                assert text == f"special{doc_id[1:]}y unique{doc_id[1:]}x"  # the only terms with idf > 0
            else:
                assert len(text.split()) == int(name[3:]) and text in corpus[doc_id].text
    again = fine_grained_tasks(corpus, exclude={"d0"}, docs=3, keywords=2, pop_words=[4, 8], seed=0)
    assert again == tasks


# ---------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_recipe_on_small_scifact(tmp_path):
    """The whole recipe (plain + SLR, 3 steps) on a SciFact cut: results written, module reloads anew."""
    from training.lexsembridge import main, write_small_scifact

    data = write_small_scifact(shared("scifact"), tmp_path / "small", train_queries=32, test_queries=12, extra_docs=40)
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {data}\nmethods: [plain, slr]\nmax_steps: 3\nbatch_size: 8\ndoc_max_length: 128\n"
                      f"tasks: {{docs: 10}}\ncache: {tmp_path / 'cache'}\nout: {tmp_path / 'out'}\n")
    report = main(["--config", str(config)])
    names = [row["name"] for row in report["rows"]]
    assert names == ["base minilm", "plain fine-tuned", "LexSemBridge-SLR"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rows"][2]["results"]["scifact-test"]["ndcg@10"] == report["rows"][2]["results"]["scifact-test"]["ndcg@10"]
    for row in report["rows"]:
        assert set(row["results"]) >= {"scifact-test", "keyword", "pop16", "pop64"}
    assert_saved_encoder_reloads(tmp_path / "out" / "slr", data, tmp_path)


def test_in_batch_infonce_hand_worked():
    """Row 0: -log softmax([2, 0, 1])[0]; row 1's column 2 is another positive of its query, so masked out:
    -log softmax([0, 1])[1]. Mean of the two, temperature 0.5 doubles the scores."""
    import math

    import torch

    from training.contrastive import in_batch_infonce

    scores = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.5, 0.5], [0.2, 0.1, 0.3]])
    positives = {"a": {"d0"}, "b": {"d1", "d2"}, "c": {"d2"}}
    loss = in_batch_infonce(scores, 0.5, ["a", "b", "c"], ["d0", "d1", "d2"], positives)
    row0 = -(2.0 - math.log(math.exp(2.0) + math.exp(0.0) + math.exp(1.0)))
    row1 = -(1.0 - math.log(math.exp(0.0) + math.exp(1.0)))
    row2 = -(0.6 - math.log(math.exp(0.4) + math.exp(0.2) + math.exp(0.6)))
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, abs=1e-6)


def test_saved_row_names_the_results_file_when_a_folder_has_no_row(tmp_path):
    from training.recipe import saved_row, write_results

    write_results(tmp_path, {"rows": [{"name": "a", "folder": str(tmp_path / "a")}]})
    assert saved_row(tmp_path, tmp_path / "a")["name"] == "a"
    with pytest.raises(SystemExit, match=r"results\.json: no row for .*/b"):
        saved_row(tmp_path, tmp_path / "b")


def test_a_plain_variant_replaces_only_its_own_folder(tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    from indexes.manifest import IndexSaveError
    from training.lexsembridge import save_variant

    st = SentenceTransformer(str(tiny_model), device="cpu")
    user = tmp_path / "plain"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(IndexSaveError, match="not a model this recipe wrote"):
        save_variant(st, None, {"variant": "plain"}, user)
    assert (user / "notes.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    save_variant(st, None, {"variant": "plain", "steps": 1}, ours)
    save_variant(st, None, {"variant": "plain", "steps": 2}, ours)  # a re-run replaces it whole
    assert json.loads((ours / "lexsembridge-info.json").read_text())["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours", "plain"]  # no partial or old folder left
