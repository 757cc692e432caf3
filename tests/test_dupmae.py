"""DupMAE (arXiv:2211.08769): masks, each loss on a hand-computed case, the [CLS] decoder's per-position
attention, the encoder module's save / reload (new process), and the recipe end to end at a tiny size."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_saved_encoder_reloads, run_python, shared

from retrieval.dense.dupmae import combine, ot_embedding, reduce_ot, split_joint
from training.dupmae import (
    Collator,
    bag_of_words_weights,
    bow_loss,
    decoder_attention_mask,
    dupmae_loss,
    duplex_classes,
    load_config,
    mlm_loss,
    replace_masked,
    whole_word_mask,
    word_spans,
)

SPECIAL = {"[CLS]", "[SEP]", "[PAD]"}
TOKENS = ["[CLS]", "vit", "##amin", "d", "is", "[SEP]"]  # words: {1, 2}, {3}, {4}


def tiny_bert(folder):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from retrieval.models import model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------------------------- masks


def test_word_spans_group_wordpieces_and_skip_special_tokens():
    assert word_spans(TOKENS, SPECIAL) == [[1, 2], [3], [4]]


def test_whole_word_mask_hand_cases():
    spans = word_spans(TOKENS, SPECIAL)
    rng = np.random.default_rng(0)
    # p = 1: target round(6 * 1) = 6 > 4 ordinary positions, so every word, never [CLS] / [SEP]
    assert whole_word_mask(spans, 6, 1.0, rng).tolist() == [0, 1, 1, 1, 1, 0]
    # p = 0: target max(1, 0) = 1: one single-piece word; "vit ##amin" (2 pieces) would overshoot
    for _ in range(20):
        mask = whole_word_mask(spans, 6, 0.0, rng)
        assert mask.sum() == 1 and mask[1] == mask[2] == 0
    # p = 0.5: target 3; whole words only (both pieces of "vitamin" or neither), never more than 3
    for _ in range(50):
        mask = whole_word_mask(spans, 6, 0.5, rng)
        assert mask[1] == mask[2] and mask[0] == mask[5] == 0 and 1 <= mask.sum() <= 3


def test_decoder_attention_mask_hand_case_and_diagonal():
    spans = word_spans(TOKENS, SPECIAL)
    rng = np.random.default_rng(0)
    # p = 1: every row's sampled mask covers all ordinary tokens; row i also hides itself
    expected = np.array([[0, 0, 0, 0, 0, 1]] + [[1, 0, 0, 0, 0, 1]] * 4 + [[1, 0, 0, 0, 0, 0]])
    assert decoder_attention_mask(spans, 6, 1.0, rng).tolist() == expected.tolist()
    # p = 0: each row hides itself and exactly one single-piece word (possibly itself)
    matrix = decoder_attention_mask(spans, 6, 0.0, rng)
    assert (np.diag(matrix) == 0).all()
    for i, row in enumerate(matrix):
        hidden = set(np.flatnonzero(row == 0))
        assert i in hidden and len(hidden - {i}) <= 1 and hidden - {i} <= {3, 4}


def test_replace_masked_labels_and_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (200, 100))
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    corrupted, labels = replace_masked(ids, mask, mask_token_id=103, vocab_size=30522, generator=generator)
    assert torch.equal(labels[mask], ids[mask]) and (labels[~mask] == -100).all()
    assert torch.equal(corrupted[~mask], ids[~mask])
    share_mask = (corrupted[mask] == 103).float().mean().item()
    share_same = (corrupted[mask] == ids[mask]).float().mean().item()
    assert 0.77 < share_mask < 0.83 and 0.08 < share_same < 0.12  # 80% [MASK], ~10% kept (+ rare random hits)


def test_bag_of_words_weights_as_the_reference():
    # tokens 5, 7, 5: n = 3; each DISTINCT token gets 1/3 (set, not summed)
    weights = bag_of_words_weights([5, 7, 5], 10)
    expected = np.zeros(10, dtype=np.float32)
    expected[[5, 7]] = 1 / 3
    assert np.allclose(weights, expected)


# ---------------------------------------------------------------------------------------- losses


def test_ot_embedding_max_pools_and_ignores_padding():
    logits = torch.tensor([[[1.0, 9.0, 0.0], [4.0, 2.0, -1.0], [50.0, 50.0, 50.0]]])  # last position is padding
    assert ot_embedding(logits, torch.tensor([[1, 1, 0]])).tolist() == [[4.0, 9.0, 0.0]]


def test_bow_loss_hand_computed():
    ot = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]))  # softmax = .1 .2 .3 .4
    weights = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]])
    expected = (-(0.5 * math.log(0.1) + 0.5 * math.log(0.3)) - math.log(0.2)) / 2
    assert bow_loss(ot, weights).item() == pytest.approx(expected, rel=1e-6)


def test_mlm_loss_ignores_unlabelled_positions():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, -100, 0]])
    expected = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_weights_bow_by_point_one():
    assert dupmae_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)).item() == pytest.approx(4.2)
    assert dupmae_loss(1.0, 2.0, 3.0, bow_loss_weight=0.5) == pytest.approx(5.0)


def test_reduce_ot_bucket_max_and_joint_split():
    # |V| = 5, 2 buckets: ids 0-2 | 3-4 (bucket = floor(v * 2 / 5))
    assert reduce_ot(torch.tensor([[1.0, 5.0, 2.0, 7.0, 3.0]]), 2).tolist() == [[5.0, 7.0]]
    # |V| = 30522 into 384 buckets: none empty (ceil-sized buckets would leave the last two empty, -inf)
    assert torch.isfinite(reduce_ot(torch.randn(2, 30522), 384)).all()
    cls, ot = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    joint = combine(cls, ot, "joint")
    assert joint.norm().item() == pytest.approx(1.0)
    parts = split_joint(joint.numpy(), cls_dim=2)
    assert np.allclose(parts["cls"], [[0.6, 0.8]]) and np.allclose(parts["ot"], [[0.0, 1.0, 0.0]])
    assert np.allclose(parts["cls"], combine(cls, ot, "cls").numpy())
    with pytest.raises(ValueError, match="representation"):
        combine(cls, ot, "mean")


# ---------------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")
    return AutoTokenizer.from_pretrained(str(folder)), AutoModelForMaskedLM.from_pretrained(str(folder)), folder


def test_collator_batch(tiny_model):
    tokenizer = tiny_model[0]
    docs = tokenizer(["vitamin d is good", "scurvy"])["input_ids"]
    batch = Collator(tokenizer, seed=0)(docs)
    n = len(docs[0])
    assert batch["decoder_attention_mask"].shape == (2, n, n)
    labels = batch["decoder_labels"]
    assert labels[0, 0] == labels[0, n - 1] == -100 and labels[0, 1:n - 1].tolist() == docs[0][1:-1]
    assert (labels[1, len(docs[1]) - 1:] == -100).all()  # [SEP] and padding
    assert (batch["decoder_attention_mask"][1, :, len(docs[1]):] == 0).all()  # nobody attends to padding
    ordinary = [t for t in docs[0] if t not in tokenizer.all_special_ids]
    assert batch["bag_word_weight"][0].sum().item() == pytest.approx(len(set(ordinary)) / len(ordinary))


def test_pretrainer_losses_and_per_position_decoder_masks(tiny_model):
    tokenizer, lm, _ = tiny_model
    model = duplex_classes()[1](lm, bow_loss_weight=0.1).eval()
    batch = Collator(tokenizer, seed=0)(tokenizer(["vitamin d deficiency weakens bones", "scurvy"])["input_ids"])
    with torch.no_grad():
        losses = model(batch)
    assert losses["loss"].item() == pytest.approx(
        losses["decoder_mlm"].item() + 0.1 * losses["bow"].item() + losses["encoder_mlm"].item(), rel=1e-5)
    # the decoder's row i must not see a token its own mask hides: change such a token's embedding input
    decoder = model.decoder
    n = batch["input_ids"].shape[1]
    matrix = torch.ones(1, n, n, dtype=torch.long)
    matrix[0, 2, 4] = 0  # row 2 may not see position 4
    query, hidden = torch.randn(1, n, 32), torch.randn(1, n, 32)
    from training.dupmae import additive_mask

    with torch.no_grad():
        before = decoder(query, hidden, additive_mask(matrix, hidden.dtype))
        changed = hidden.clone()
        changed[0, 4] += 1.0
        after = decoder(query, changed, additive_mask(matrix, hidden.dtype))
    assert torch.allclose(before[0, 2], after[0, 2], atol=1e-6)  # row 2: unchanged
    assert not torch.allclose(before[0, 3], after[0, 3], atol=1e-4)  # row 3 sees position 4


def test_bad_config_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain_stepz: 3\n")
    with pytest.raises(SystemExit, match="bad.yaml.*pretrain_stepz"):
        load_config(str(bad))
    bad.write_text("decoder_mlm_probability: 1.5\n")
    with pytest.raises(SystemExit, match="bad.yaml.*decoder_mlm_probability"):
        load_config(str(bad))
    bad.write_text("starts: [none, retromae]\n")
    with pytest.raises(SystemExit, match="bad.yaml.*retromae"):
        load_config(str(bad))


# ---------------------------------------------------------------------------------------- recipe + module


def small_scifact(tmp_path, **sizes):
    from training.lexsembridge import write_small_scifact

    return write_small_scifact(shared("scifact"), tmp_path / "data", **sizes)


def write_recipe(tmp_path, data, model, **extra) -> str:
    import yaml

    config = {"data": str(data), "model": str(model), "pretrain_max_steps": 2, "pretrain_batch_size": 4,
              "pretrain_max_length": 32, "ft_max_steps": 2, "ft_batch_size": 4, "doc_max_length": 32,
              "query_max_length": 16, "base_row": False, "pretrained_row": True,
              "cache": str(tmp_path / "cache"), "out": str(tmp_path / "out"), **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_recipe_small_setting_end_to_end(tmp_path):
    """The recipe at a tiny size (random 2-layer BERT): pre-train, fine-tune both starts, evaluate cls / ot /
    joint, resume without retraining, and reload a saved module in a new process with the same scores."""
    from training.dupmae import main

    data = small_scifact(tmp_path, train_queries=16, test_queries=6, extra_docs=10)
    recipe = write_recipe(tmp_path, data, tiny_bert(tmp_path / "tiny"))
    report = main(["--config", recipe])
    names = [row["name"] for row in report["rows"]]
    assert names == ["DupMAE pre-trained, no fine-tuning", "fine-tuned, no pre-training", "DupMAE pre-trained + fine-tuned"]
    for row in report["rows"]:
        assert set(row["results"]) == {"cls", "ot", "joint", "encode_seconds"}
    assert report["pretrain"]["steps"] == 2 and report["rows"][1]["train"]["steps"] == 2
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["rows"][2]["folder"] == str(out / "ft-dupmae")
    mtime = (out / "ft-dupmae" / "manifest.json").stat().st_mtime
    assert main(["--config", recipe])["rows"][2]["results"]["joint"] == report["rows"][2]["results"]["joint"]
    assert (out / "ft-dupmae" / "manifest.json").stat().st_mtime == mtime  # reused, not retrained
    printed = run_python(f"from training.dupmae import main; main(['--config', {recipe!r}, '--verify', 'dupmae'])")
    assert '"same": true' in printed
    paired = main(["--config", recipe, "--compare"])
    joint = [r["results"]["joint"]["ndcg@10"] for r in report["rows"][1:]]
    assert paired["joint"]["queries"] == 6 and paired["joint"]["mean_diff"] == pytest.approx(joint[1] - joint[0], abs=1e-4)


def test_saved_minilm_module_reloads_in_new_process(tmp_path, tiny_beir):
    """A DupMAE module over MiniLM (joint representation) through the dense retriever and a new process."""
    from retrieval.dense.encoders import load_encoder
    from retrieval.models import model_path
    from training.dupmae import save_module, start_model

    st, head = start_model(str(model_path("minilm")), max_length=64, seed=0)
    save_module(st, head, tmp_path / "module", ot_dim=384, info={"test": True})
    encoder = load_encoder(tmp_path / "module", device="cpu")
    assert encoder.dim == 768 and encoder.representation == "joint"
    vectors = encoder.encode_queries(["what causes scurvy"])
    assert vectors.shape == (1, 768) and np.linalg.norm(vectors) == pytest.approx(1.0, abs=1e-5)
    cls_only = load_encoder(tmp_path / "module", device="cpu", representation="cls").encode_queries(["what causes scurvy"])
    assert np.allclose(split_joint(vectors, 384)["cls"], cls_only, atol=1e-5)
    run = assert_saved_encoder_reloads(tmp_path / "module", tiny_beir, tmp_path)
    assert set(run) == {"q1", "q2", "q3", "q4"}


@pytest.mark.slow
def test_recipe_real_minilm_small_slice(tmp_path):
    """MiniLM itself: 6 pre-training steps on 96 documents, 6 fine-tuning steps per start, a small SciFact cut."""
    from training.dupmae import main

    data = small_scifact(tmp_path, train_queries=48, test_queries=12, extra_docs=60)
    recipe = write_recipe(tmp_path, data, "minilm", pretrain_max_steps=6, pretrain_batch_size=8, pretrain_max_length=96,
                          pretrain_max_docs=96, ft_max_steps=6, ft_batch_size=8, doc_max_length=96, pretrained_row=False)
    report = main(["--config", recipe])
    steps = json.loads((tmp_path / "out" / "pretrained" / "dupmae-pretrain.json").read_text())["every_step"]["loss"]
    assert len(steps) == 6 and steps[-1] < steps[0]  # MiniLM's new head transform learns fast
    for row in report["rows"]:
        assert 0.0 < row["results"]["joint"]["ndcg@10"] <= 1.0
