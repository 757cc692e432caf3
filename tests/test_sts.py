"""STS: pair readers, the Spearman/Pearson record, and agreement with mteb's STS evaluator.

Default tests use a tiny deterministic encoder; the real MiniLM figures (MTEB's published 82.03 / 77.58)
are `slow`."""
import gzip
import zlib

import numpy as np
import pytest
from conftest import shared

from eval.sts import evaluate_sts, load_sts_pairs, sts_set, task_name
from retrieval.errors import DataError


class HashEncoder:
    """A tiny deterministic encoder: hashed bag of words times a fixed random matrix.

    Dense and continuous (ties between pairs are as unlikely as with a real model), no torch, instant.
    `doc_marker` makes documents encode differently from queries, to see which method was called.
    """

    normalize = True
    dim = 32

    def __init__(self, doc_marker: str = ""):
        self.doc_marker = doc_marker
        self.projection = np.random.default_rng(0).normal(size=(512, self.dim))

    def _encode(self, texts: list[str]) -> np.ndarray:
        counts = np.zeros((len(texts), 512))
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                counts[row, zlib.crc32(word.encode()) % 512] += 1
        return (counts @ self.projection).astype(np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.doc_marker + " " + t for t in texts] if self.doc_marker else texts)

    def describe(self) -> dict:
        return {"model": "hash-bow", "dim": self.dim}


class TableEncoder:
    """Vectors from a lookup table, for hand-worked cases."""

    def __init__(self, table: dict[str, tuple[float, ...]]):
        self.table = table

    def encode_queries(self, texts):
        return np.array([self.table[t] for t in texts], dtype=np.float32)

    encode_documents = encode_queries

    def describe(self):
        return {"model": "table"}


def write_stsb(folder, rows):
    """An STS-B style folder with only sts-test.csv.gz: genre, file, year, id, score, s1, s2 [, extra]."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "sts-test.csv.gz", "wt", encoding="utf-8") as out:
        for row in rows:
            out.write("\t".join(row) + "\n")
    return folder


# ---------------------------------------------------------------- readers


def test_split_sizes_match_provenance():
    sizes = {(name, split): len(load_sts_pairs(name, split, shared(name))) for name, split in [
        ("stsbenchmark", "train"), ("stsbenchmark", "dev"), ("stsbenchmark", "test"),
        ("sick", "train"), ("sick", "trial"), ("sick", "test"), ("sick", "all"),
    ]}
    assert sizes == {
        ("stsbenchmark", "train"): 5749, ("stsbenchmark", "dev"): 1500, ("stsbenchmark", "test"): 1379,
        ("sick", "train"): 4500, ("sick", "trial"): 500, ("sick", "test"): 4927, ("sick", "all"): 9927,
    }


def test_rows_read_as_documented():
    test = load_sts_pairs("STSBenchmark", "test", shared("stsbenchmark"))
    assert test[0] == ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)
    # a line with source notes in extra columns: only columns 0-6 are used
    extra = next(p for p in test if p.sentence1.startswith("I remained under the banyan tree"))
    assert extra.score == 3.0 and extra.sentence2.startswith("I remained under the banyan tree") and "StackExchange" not in extra.sentence2
    # bare quote characters stay in the text (QUOTE_NONE), so no line swallows the next one
    assert any('"' in p.sentence1 + p.sentence2 for p in load_sts_pairs("stsbenchmark", "train", shared("stsbenchmark")))
    sick = load_sts_pairs("SICK-R", "all", shared("sick"))
    assert sick[0].score == 4.5 and sick[0].sentence1.startswith("A group of kids is playing in a yard")
    assert all(1.0 <= p.score <= 5.0 for p in sick)


def test_bad_lines_name_file_line_and_field(tmp_path):
    good = ["main-captions", "MSRvid", "2012test", "0001", "2.5", "a", "b"]
    write_stsb(tmp_path / "short", [good, good[:6]])
    with pytest.raises(DataError, match=r"sts-test.csv.gz, line 2, field 'sentence2'"):
        load_sts_pairs("stsbenchmark", "test", tmp_path / "short")
    write_stsb(tmp_path / "range", [good, good[:4] + ["7.0"] + good[5:]])
    with pytest.raises(DataError, match=r"line 2, field 'score': 7.0 is outside 0-5"):
        load_sts_pairs("stsbenchmark", "test", tmp_path / "range")


def test_unknown_names_and_splits():
    assert sts_set("sts-b") == "stsbenchmark" and task_name("sick") == "SICK-R"
    with pytest.raises(ValueError, match="unknown STS data set"):
        sts_set("sts12")
    with pytest.raises(ValueError, match="no split 'all'"):
        load_sts_pairs("stsbenchmark", "all")
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_sts_pairs("sick", "dev")


# ---------------------------------------------------------------- scoring


def test_correlations_pinned_on_a_hand_worked_case(tmp_path):
    # cosines 1, 0.5, 0, -1 against gold 4.5, 3, 2, 0.5: Spearman 1; Pearson 4.25 / sqrt(2.1875 * 8.5) = 0.98561
    angle = {name: (np.cos(np.radians(deg)), np.sin(np.radians(deg))) for name, deg in
             [("east", 0), ("east2", 0), ("sixty", 60), ("north", 90), ("west", 180)]}
    rows = [("east", "east2", "4.5"), ("east", "sixty", "3"), ("east", "north", "2"), ("east", "west", "0.5")]
    folder = write_stsb(tmp_path / "hand", [["g", "f", "2017", f"{i:04d}", score, a, b] for i, (a, b, score) in enumerate(rows)])
    record = evaluate_sts(TableEncoder(angle), "stsbenchmark", "test", folder=folder)
    assert record.metrics["cosine_spearman"] == pytest.approx(1.0)
    assert record.metrics["cosine_pearson"] == pytest.approx(0.98561, abs=1e-5)
    assert record.num_queries == 4


def test_record_has_the_runner_shape():
    record = evaluate_sts(HashEncoder(), "stsbenchmark", "test", folder=shared("stsbenchmark"), limit=50)
    assert record.family == "STS" and record.schema_version == 1 and record.date
    assert (record.task, record.dataset, record.split, record.num_queries) == ("STSBenchmark", "stsbenchmark", "test", 50)
    assert record.retriever == {"kind": "encoder", "model": "hash-bow", "dim": 32}
    assert record.label == "encoder-hash-bow"
    assert record.main_metric == "cosine_spearman" and set(record.metrics) == {"cosine_spearman", "cosine_pearson"}
    assert -1.0 <= record.metrics["cosine_spearman"] <= 1.0


@pytest.mark.parametrize("name, split", [("stsbenchmark", "test"), ("sick", "all")])
def test_agrees_with_mteb_on_a_slice(name, split):
    from eval.mteb_adapter import MtebEncoder, mteb_scores
    from eval.mteb_tasks import local_sts_task

    encoder, folder = HashEncoder(), shared(name)
    ours = evaluate_sts(encoder, name, split, folder=folder, limit=60).metrics
    theirs = mteb_scores(MtebEncoder(encoder), local_sts_task(name, split, folder, limit=60))
    assert theirs["main_score"] == theirs["cosine_spearman"]
    assert ours["cosine_spearman"] == pytest.approx(theirs["cosine_spearman"], abs=1e-4)
    assert ours["cosine_pearson"] == pytest.approx(theirs["cosine_pearson"], abs=1e-4)
    # the slice is a real signal (bag-of-words overlap correlates with similarity), not noise around 0
    assert ours["cosine_spearman"] > 0.2


# ---------------------------------------------------------------- real model (slow)


@pytest.fixture(scope="module")
def minilm():
    from retrieval.dense.encoder import SentenceEncoder

    return SentenceEncoder("minilm")


@pytest.mark.slow
@pytest.mark.parametrize("name, split, published", [("stsbenchmark", "test", 0.8203), ("sick", "all", 0.7758)])
def test_minilm_reaches_mteb_published_figure_and_mteb_agrees(minilm, name, split, published):
    from eval.mteb_adapter import mteb_scores
    from eval.mteb_tasks import local_sts_task

    ours = evaluate_sts(minilm, name, split, folder=shared(name))
    theirs = mteb_scores(minilm, local_sts_task(name, split, shared(name)))
    print(f"\n{name} {split}: dengen {ours.metrics} mteb spearman {theirs['cosine_spearman']:.5f} pearson {theirs['cosine_pearson']:.5f}")
    assert ours.num_queries == {"stsbenchmark": 1379, "sick": 9927}[name]
    assert ours.metrics["cosine_spearman"] == pytest.approx(published, abs=0.01)
    assert ours.metrics["cosine_spearman"] == pytest.approx(theirs["cosine_spearman"], abs=1e-3)
    assert ours.metrics["cosine_pearson"] == pytest.approx(theirs["cosine_pearson"], abs=1e-3)
