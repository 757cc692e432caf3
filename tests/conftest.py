import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.data import shared_data

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data()

TINY_DOCS = [
    ("d1", "Vitamin D", "Vitamin D deficiency is common in elderly people and weakens bones."),
    ("d2", "Scurvy", "Scurvy is caused by a lack of vitamin C in the diet."),
    ("d3", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into sugar."),
    ("d4", "Black holes", "A black hole is a region of spacetime where gravity prevents light from escaping."),
    ("d5", "Insulin", "Insulin is a hormone that lowers blood glucose; diabetes follows when it fails."),
    ("d6", "Volcanoes", "Volcanic eruptions release ash and lava from magma chambers."),
    ("d7", "Antibiotics", "Penicillin and other antibiotics kill bacteria but not viruses."),
    ("d8", "Chess", "Chess is a strategy board game played between two players on 64 squares."),
]
TINY_QUERIES = {
    "q1": "what causes scurvy",
    "q2": "hormone controlling blood sugar",
    "q3": "why can light not escape a black hole",
    "q4": "do antibiotics work against viruses",
}
TINY_QRELS = {"q1": {"d2": 1}, "q2": {"d5": 1}, "q3": {"d4": 1}, "q4": {"d7": 1}}


def write_beir(folder: Path, docs=TINY_DOCS, queries=TINY_QUERIES, qrels=TINY_QRELS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as out:
        for doc_id, title, text in docs:
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "qrels" / "test.tsv", "w") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for qid, docs_ in qrels.items():
            for doc_id, score in docs_.items():
                out.write(f"{qid}\t{doc_id}\t{score}\n")
    return folder


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_beir_session(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("data") / "tiny")


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path


def run_python(code: str, cwd: Path = REPO) -> str:
    """Run code in a fresh interpreter (a new process, as a user restarting would) and return stdout."""
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{done.stderr[-3000:]}")
    return done.stdout


def assert_saved_encoder_reloads(encoder_folder: Path, data: Path, tmp_path: Path, **dense_options) -> dict:
    """The common-API round trip for a saved method module: a dense index over `encoder_folder` built here,
    saved, then loaded and searched in a NEW process must give the same run (ids and scores to 1e-5).

    Returns the in-process run, for further checks.
    """
    from retrieval import build_retriever, load_corpus, load_queries

    corpus, queries = load_corpus(data), load_queries(data)
    retriever = build_retriever("dense", model=str(encoder_folder), **dense_options)
    retriever.index(corpus)
    here = retriever.search(queries, k=5)
    retriever.save(tmp_path / "index")
    code = (
        "import json; from retrieval import load_retriever, load_queries\n"
        f"r = load_retriever({str(tmp_path / 'index')!r}, trust_paths=True)\n"  # the module folder is outside the index
        f"print(json.dumps(r.search(load_queries({str(data)!r}), k=5)))"
    )
    there = json.loads(run_python(code).strip().splitlines()[-1])
    assert_same_run(here, there)
    return here


def assert_same_run(here: dict, there: dict) -> None:
    """Two runs rank the same documents in the same order for every query, scores within 1e-5."""
    assert set(there) == set(here)
    for qid, ranked in here.items():
        assert list(there[qid]) == list(ranked), qid
        for doc_id, score in ranked.items():
            assert there[qid][doc_id] == pytest.approx(score, abs=1e-5)


def tiny_keymodel(vocab_size=None):
    """A 1-layer bert2bert with random weights and MiniLM's tokenizer: for code paths, never for numbers."""
    import torch
    from transformers import AutoTokenizer, BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    from retrieval.generative.keymodel import KeyModel
    from retrieval.models import model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    small = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**small), BertConfig(**small, is_decoder=True,
                                                                                                add_cross_attention=True))
    model = EncoderDecoderModel(config=config)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    keymodel = KeyModel(model, tokenizer, "bert2bert")
    keymodel._sync_generation_config()
    return keymodel
