"""Distilled Sentence Embedding (arXiv:1908.05161): the loss by hand, the indexable head, teacher and
student training steps on tiny random models, save / load (same process and a new one), config errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_saved_encoder_reloads
from indexes.manifest import IndexLoadError
from retrieval.dense.dse import CrossEncoderScorer, DSEEncoder, DSEHead, dse_loss
from indexes.manifest import current_folder

torch = pytest.importorskip("torch")

FIRST = ["a man is playing a guitar", "a woman slices an onion", "the cat sleeps", "two dogs run on grass"]
SECOND = ["a man plays guitar", "someone is cutting an onion", "a car drives fast", "dogs are running outside"]
LABELS = np.array([0.9, 0.8, 0.0, 0.85], dtype=np.float32)


# ---------------------------------------------------------------------------------------- loss


def test_dse_loss_hand_worked():
    # student s = [0.5, 0.2], gold y = [1.0, 0.0], teacher t = [0.7, 0.1]
    #   task    = ((0.5-1.0)^2 + (0.2-0.0)^2) / 2 = (0.25 + 0.04) / 2 = 0.145
    #   distill = ((0.5-0.7)^2 + (0.2-0.1)^2) / 2 = (0.04 + 0.01) / 2 = 0.025
    #   L(alpha) = (1 - alpha) * task + alpha * distill       (alpha weighs the distillation term)
    s, y, t = torch.tensor([0.5, 0.2]), torch.tensor([1.0, 0.0]), torch.tensor([0.7, 0.1])
    assert dse_loss(s, y, t, alpha=0.5).item() == pytest.approx(0.5 * 0.145 + 0.5 * 0.025)  # 0.085
    assert dse_loss(s, y, t, alpha=0.0).item() == pytest.approx(0.145)  # labels only: the no-distillation baseline
    assert dse_loss(s, y, None, alpha=0.0).item() == pytest.approx(0.145)
    assert dse_loss(s, y, t, alpha=1.0).item() == pytest.approx(0.025)  # teacher only
    # alpha = 0.25 must weigh the TEACHER term by 0.25: 0.75 * 0.145 + 0.25 * 0.025 = 0.115 (the other way: 0.055)
    assert dse_loss(s, y, t, alpha=0.25).item() == pytest.approx(0.115)
    # (n, 1) outputs, as the reference's one-logit heads give: sum over outputs, mean over pairs -> same numbers
    assert dse_loss(s[:, None], y[:, None], t[:, None], alpha=0.25).item() == pytest.approx(0.115)


def test_dse_loss_refuses_bad_alpha_and_missing_teacher():
    s = torch.zeros(2)
    with pytest.raises(ValueError, match="alpha"):
        dse_loss(s, s, s, alpha=1.5)
    with pytest.raises(ValueError, match="teacher"):
        dse_loss(s, s, None, alpha=0.5)


# ---------------------------------------------------------------------------------------- head


def test_head_ranking_is_the_index_ranking():
    rng = np.random.default_rng(0)
    query, docs = rng.normal(size=16).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    unit_q, unit_d = query / np.linalg.norm(query), docs / np.linalg.norm(docs, axis=1, keepdims=True)
    by_index = np.argsort(-(unit_d @ unit_q), kind="stable")  # what a Flat inner-product index over unit vectors returns
    for head in (DSEHead("cosine"), DSEHead("cosine", scale=3.0, shift=-0.7)):
        scores = head.score(query, docs)
        np.testing.assert_array_equal(np.argsort(-scores, kind="stable"), by_index)
    # the affine map is applied on top of the cosine, exactly
    np.testing.assert_allclose(DSEHead("cosine", 3.0, -0.7).score(query, docs), 3.0 * (unit_d @ unit_q) - 0.7, atol=1e-5)
    # dot head: ranking by raw inner product; row-wise pair scores agree with the one-vs-many form
    np.testing.assert_array_equal(np.argsort(-DSEHead("dot", 2.0).score(query, docs), kind="stable"),
                                  np.argsort(-(docs @ query), kind="stable"))
    pairs = DSEHead("dot").score(np.repeat(query[None], 50, axis=0), docs)
    np.testing.assert_allclose(pairs, docs @ query, rtol=1e-5)
    # torch form = numpy form
    u, v = torch.from_numpy(np.repeat(query[None], 50, axis=0)), torch.from_numpy(docs)
    np.testing.assert_allclose(DSEHead("cosine", 2.0, 0.1).torch_score(u, v).numpy(),
                               DSEHead("cosine", 2.0, 0.1).score(query, docs), atol=1e-5)


def test_head_refuses_a_non_monotone_map():
    with pytest.raises(ValueError, match="positive"):
        DSEHead("cosine", scale=-1.0)
    with pytest.raises(ValueError, match="similarity"):
        DSEHead("l2")


# ---------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random BERT (2 layers, 32 hidden) with the MiniLM tokenizer: as a sentence-transformers
    bi-encoder folder and as a one-output sequence classifier (the teacher)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    from retrieval.models import model_path

    root = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(root / "bert"))
    tokenizer.save_pretrained(str(root / "bert"))
    SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(32, "mean")], device="cpu").save(str(root / "st"))
    teacher = BertForSequenceClassification(config)
    return {"st": root / "st", "teacher": teacher, "tokenizer": tokenizer}


def tiny_student(tiny):
    from retrieval.dense.encoder import SentenceEncoder

    return SentenceEncoder(str(tiny["st"]), device="cpu")


def test_teacher_training_step_lowers_loss_and_scores_pairs(tiny, tmp_path):
    from training.dse import train_teacher

    teacher = CrossEncoderScorer(tiny["teacher"], tiny["tokenizer"], batch_size=3)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    loss_before = float(np.mean((teacher.score(FIRST, SECOND) - LABELS) ** 2))
    info = train_teacher(teacher, FIRST, SECOND, LABELS, epochs=20, lr=1e-3, batch_size=4, warmup=0.0, progress=False)
    loss_after = float(np.mean((teacher.score(FIRST, SECOND) - LABELS) ** 2))
    assert info["steps"] == 20 and loss_after < loss_before
    assert any(not torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    scores = teacher.score(FIRST, SECOND)
    assert scores.shape == (4,) and scores.dtype == np.float32
    # saved teacher reloads with the same scores; the manifest kind is checked
    teacher.save(tmp_path / "teacher", info={"note": "tiny"})
    again = CrossEncoderScorer.load(tmp_path / "teacher", batch_size=3)
    np.testing.assert_allclose(again.score(FIRST, SECOND), scores, atol=1e-6)
    assert again.info == {"note": "tiny"}


def test_student_training_step_lowers_the_dse_loss(tiny):
    from training.dse import train_student

    encoder = tiny_student(tiny)
    teacher_scores = np.array([0.7, 0.6, 0.1, 0.8], dtype=np.float32)

    def current_loss():
        with torch.no_grad():
            s = torch.from_numpy(DSEHead().score(encoder.encode_queries(FIRST), encoder.encode_queries(SECOND)))
        return dse_loss(s, torch.from_numpy(LABELS), torch.from_numpy(teacher_scores), alpha=0.5).item()

    before_weights = [p.detach().clone() for p in encoder.model.parameters()]
    before = current_loss()
    head, info = train_student(encoder.model, FIRST, SECOND, LABELS, teacher_scores, alpha=0.5, affine=True, epochs=15,
                               lr=1e-3, batch_size=4, warmup=0.0, progress=False)
    assert current_loss() < before
    assert any(not torch.equal(a, b) for a, b in zip(before_weights, encoder.model.parameters()))
    assert info["steps"] == 15 and info["alpha"] == 0.5
    assert head.scale > 0 and (head.scale, head.shift) != (1.0, 0.0)  # the affine map was learned


def test_no_distillation_run_ignores_the_teacher(tiny):
    """alpha = 0 with the teacher given or not: identical weights after identical seeded steps."""
    from training.dse import train_student

    runs = []
    for teacher_scores in (None, np.array([5.0, -5.0, 5.0, -5.0], dtype=np.float32)):
        encoder = tiny_student(tiny)
        train_student(encoder.model, FIRST, SECOND, LABELS, teacher_scores, alpha=0.0, epochs=2, lr=1e-3, batch_size=2,
                      seed=3, progress=False)
        runs.append([p.detach().clone() for p in encoder.model.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(*runs))


# ---------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tiny, tmp_path):
    from retrieval.dense.encoders import load_encoder, saved_kind

    module = DSEEncoder(tiny_student(tiny), DSEHead("cosine", 2.5, -0.5), info={"alpha": 0.5})
    manifest = module.save(tmp_path / "dse")
    assert saved_kind(tmp_path / "dse") == "dse" and manifest["head"] == {"similarity": "cosine", "scale": 2.5, "shift": -0.5}
    assert manifest["base"]["inside"] and manifest["base"]["model"] == "model"
    loaded = load_encoder(tmp_path / "dse", device="cpu")
    assert isinstance(loaded, DSEEncoder) and loaded.info == {"alpha": 0.5}
    np.testing.assert_allclose(loaded.encode_documents(SECOND, progress=False), module.encode_documents(SECOND, progress=False), atol=1e-6)
    np.testing.assert_allclose(loaded.score(FIRST, SECOND), module.score(FIRST, SECOND), atol=1e-6)


def test_damaged_or_incomplete_folder_is_refused(tiny, tmp_path):
    from retrieval.dense.encoders import load_encoder

    DSEEncoder(tiny_student(tiny)).save(tmp_path / "dse")
    with open(current_folder(tmp_path / "dse") / "model" / "model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(IndexLoadError):
        load_encoder(tmp_path / "dse")
    with pytest.raises(ValueError, match="normalize"):  # a cosine head over a non-normalising encoder
        from retrieval.dense.encoder import SentenceEncoder

        DSEEncoder(SentenceEncoder(str(tiny["st"]), normalize=False, device="cpu"), DSEHead("cosine"))


def test_dense_index_over_a_saved_student_reloads_in_a_new_process(tiny_beir, tmp_path):
    """The common-API round trip with MiniLM itself as the (untrained) student."""
    from retrieval.dense.encoder import SentenceEncoder

    DSEEncoder(SentenceEncoder("minilm", device="cpu")).save(tmp_path / "student")
    run = assert_saved_encoder_reloads(tmp_path / "student", tiny_beir, tmp_path)
    assert next(iter(run["q1"])) == "d2"  # scurvy -> the scurvy document


# ---------------------------------------------------------------------------------------- config


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dse-bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key", [
    ("alpah: 0.5\n", "alpah"),
    ("alpha: 1.5\n", "alpha"),
    ("alpha: half\n", "alpha"),
    ("student_epochs: 0\n", "student_epochs"),
    ("similarity: l2\n", "similarity"),
    ("baseline: maybe\n", "baseline"),
])
def test_bad_config_names_file_and_key(tmp_path, text, key):
    from training.dse import load_config

    path = write_config(tmp_path, text)
    with pytest.raises(SystemExit) as err:
        load_config(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_shipped_config_loads():
    from training.dse import DEFAULTS, load_config

    config = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "dse-stsb.yaml")
    assert config["alpha"] == 0.5 and set(config) == set(DEFAULTS)


# ---------------------------------------------------------------------------------------- recipe (slow)


@pytest.mark.slow
def test_recipe_small_setting(tmp_path):
    """The whole recipe on 160 STS-B train pairs / 200 test pairs, 1 epoch each: every stage runs, all
    modules are saved, and the student reloaded in a new process gives the same STS-B scores."""
    from training.dse import main

    config = write_config(tmp_path, f"teacher_epochs: 1\nstudent_epochs: 1\ntrain_limit: 160\ntest_limit: 200\nout: {tmp_path / 'out'}\n")
    report = main(["--config", str(config)])
    names = [row["name"] for row in report["results"]]
    assert names == ["MiniLM (no training)", "teacher (cross-encoder)", "student (alpha=0.5)", "no-distillation (alpha=0.0)"]
    assert report["reload"]["same"]
    assert report["test_pairs"] == 200 and report["train_pairs"] == 160
    for name in ("teacher", "student", "no-distillation"):
        assert (tmp_path / "out" / name / "manifest.json").is_file()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["relative_degradation"] == report["relative_degradation"]
