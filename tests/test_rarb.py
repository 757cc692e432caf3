"""RAR-b multiple-choice retrieval: CSV reading, query composition, accuracy and the tie rule.

Hand-made fixtures pin the accuracy formula (ties = expected accuracy under random tie-breaking over
distinct candidate texts; `accuracy_argmax` = RAR-b's np.argmax rule); small real-data slices check the
shared sets; full runs are `slow` and pin the numbers in docs/rarb.md.
"""
import csv
import gzip
import re

import numpy as np
import pytest
from conftest import shared

from eval.rarb import (
    MCR_SETS, EncoderScorer, MCRItem, RetrieverScorer, compose_query, evaluate_mcr, evaluate_mcr_sets,
    format_mcr_table, load_mcr, mcr_scorer, tie_credit,
)
from retrieval import DataError, build_retriever

HEADER = ["instructions", "queries", "documents", "labels"]


def write_mcr(path, rows, header=HEADER, gz=False):
    """A RAR-b MCR CSV: rows of (instruction, query, candidates list or raw cell, label)."""
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for instruction, query, docs, label in rows:
            writer.writerow([instruction, query, docs if isinstance(docs, str) else repr(list(docs)), label])
    return path


class WordCountEncoder:
    """A fake bi-encoder: counts of a fixed vocabulary, so cosines are worked out by hand. Records calls."""

    VOCAB = ("red", "blue", "green", "pick")

    def __init__(self):
        self.queries, self.documents = [], []

    def _vectors(self, texts):
        return np.array([[t.lower().replace(".", " ").split().count(w) for w in self.VOCAB] for t in texts], dtype=np.float32)

    def encode_queries(self, texts):
        self.queries += texts
        return self._vectors(texts)

    def encode_documents(self, texts):
        self.documents += texts
        return self._vectors(texts)


# q, candidates, label -> credit (ties at random over distinct texts), RAR-b argmax hit
COLOURS = [
    ("red", ["blue", "red"], 1, 1.0, True),  # plain hit
    ("green", ["blue", "red"], 0, 0.5, True),  # both cosines 0: a tie of two; argmax credits index 0
    ("red", ["red", "blue", "red"], 2, 1.0, False),  # the gold text is repeated: still the one top answer
    ("blue", ["blue", "red"], 1, 0.0, False),  # plain miss
]


@pytest.fixture
def colours(tmp_path):
    return write_mcr(tmp_path / "colours-test.csv", [("Pick blue.", q, docs, label) for q, docs, label, _, _ in COLOURS])


# ------------------------------------------------------------------ reading


def test_load_mcr_reads_rows_in_order(colours):
    items = load_mcr(colours)
    assert [i.query for i in items] == [c[0] for c in COLOURS]
    assert items[2] == MCRItem("Pick blue.", "red", ("red", "blue", "red"), 2, 4)
    assert len(load_mcr(colours, limit=2)) == 2


def test_load_mcr_reads_gzip_and_cells_with_commas_quotes_and_newlines(tmp_path):
    docs = ["a, b", 'say "hi"', "it's", "two\nlines"]
    path = write_mcr(tmp_path / "odd-test.csv.gz", [("", "first\nquery", docs, 3), ("I", "q2", ["x", "y"], 1)], gz=True)
    first, second = load_mcr(path)
    assert first.candidates == tuple(docs) and first.query == "first\nquery" and first.label == 3
    assert second.line == 4  # the first record spans lines 2-3


@pytest.mark.parametrize(
    "cell, label, field, message",
    [
        ("['a', 'b'", 0, "documents", "not a Python list literal"),
        ("__import__('os')", 0, "documents", "not a Python list literal"),  # never evaluated
        ("'just a string'", 0, "documents", "non-empty list"),
        ("[]", 0, "documents", "non-empty list"),
        ("['a', 2]", 0, "documents", "must be a string"),
        ("['a', 'b']", 2, "labels", "outside the 2 candidates"),
        ("['a', 'b']", -1, "labels", "outside the 2 candidates"),
        ("['a', 'b']", "one", "labels", "integer index"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, cell, label, field, message):
    path = write_mcr(tmp_path / "bad.csv", [("I", "good", ["a", "b"], 0), ("I", "bad", cell, label)])
    with pytest.raises(DataError, match=re.escape(message)) as err:
        load_mcr(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, field)


def test_bad_structure_is_reported(tmp_path):
    with pytest.raises(DataError, match="missing column") as err:
        load_mcr(write_mcr(tmp_path / "a.csv", [], header=["instructions", "queries", "docs", "labels"]))
    assert (err.value.line, err.value.field) == (1, "documents")
    path = tmp_path / "b.csv"
    path.write_text("instructions,queries,documents,labels\nI,q,\"['a']\"\n", encoding="utf-8")
    with pytest.raises(DataError, match="expected 4 fields") as err:
        load_mcr(path)
    assert err.value.line == 2
    with pytest.raises(DataError, match="empty query"):
        load_mcr(write_mcr(tmp_path / "c.csv", [("I", "  ", ["a"], 0)]))


def test_unknown_set_names_the_choices():
    with pytest.raises(ValueError, match="ARC-Challenge"):
        load_mcr("hellaswag")


# ------------------------------------------------------------------ queries and scoring


def test_compose_query_follows_rarb():
    item = MCRItem("Retrieve the answer.", "Why?", ("a",), 0, 2)
    assert compose_query(item, instruction=False) == "Why?"
    assert compose_query(item, instruction=True) == "Retrieve the answer. Why?"
    assert compose_query(item._replace(instruction=""), instruction=True) == "Why?"  # RAR-b strips
    assert compose_query(item, True, "Instruct: {instruction}\nQuery: {query}") == "Instruct: Retrieve the answer.\nQuery: Why?"


def test_tie_credit_counts_distinct_texts():
    assert tie_credit(np.array([0.0, 0.0, 0.0]), ["a", "b", "c"], 2) == (pytest.approx(1 / 3), True)
    assert tie_credit(np.array([0.5, 0.5, 0.1]), ["a", "a", "b"], 1) == (1.0, False)
    assert tie_credit(np.array([0.5, 0.5, 0.1]), ["a", "b", "c"], 2) == (0.0, True)


def test_encoder_accuracy_and_tie_rule(colours):
    encoder = WordCountEncoder()
    record = evaluate_mcr(encoder, colours, instruction=False)
    assert record.metrics["accuracy"] == pytest.approx(np.mean([c[3] for c in COLOURS]))  # 0.625
    assert record.metrics["accuracy_argmax"] == pytest.approx(np.mean([c[4] for c in COLOURS]))  # 0.5
    assert record.details["tied_queries"] == 1
    assert record.dataset == "colours" and record.num_queries == 4 and record.details["num_candidates"] == 2
    assert {**{k: getattr(record, k) for k in ("task", "split", "main_metric", "label")}, "instruction": record.details["instruction"]} == {
        "task": "RAR-b MCR", "split": "test", "main_metric": "accuracy", "instruction": False,
        "label": "dense-WordCountEncoder",
    }
    assert record.retriever == {"kind": "dense", "encoder": "WordCountEncoder", "similarity": "cos"}


def test_instruction_reaches_the_query_only_and_candidates_are_encoded_once(colours):
    encoder = WordCountEncoder()
    scorer = mcr_scorer(encoder)
    without = evaluate_mcr(scorer, colours, instruction=False)
    with_inst = evaluate_mcr(scorer, colours, instruction=True)
    assert encoder.documents == ["blue", "red"]  # the pool once, shared by both settings, no instruction
    assert encoder.queries[4:] == [f"Pick blue. {c[0]}" for c in COLOURS]
    # "Pick blue." pulls every query toward "blue": "red" queries now tie red/blue (1/2 each), "green" finds blue
    assert without.metrics["accuracy"] == 0.625
    assert with_inst.metrics == pytest.approx({"accuracy": (0.5 + 1 + 0.5 + 0) / 4, "accuracy_argmax": 0.25})
    assert with_inst.details["tied_queries"] == 2
    assert with_inst.details["instruction"] is True and with_inst.details["query_template"] == "{instruction} {query}"


def test_dot_similarity_and_scorer_resolution():
    encoder = WordCountEncoder()
    assert isinstance(mcr_scorer(encoder), EncoderScorer)
    assert mcr_scorer(encoder, similarity="dot").similarity == "dot"
    assert isinstance(mcr_scorer("bm25"), RetrieverScorer)
    with pytest.raises(TypeError, match="cannot score"):
        mcr_scorer(object())
    with pytest.raises(ValueError, match="similarity"):
        EncoderScorer(encoder, similarity="l2")


# q, candidates, label -> credit, argmax hit (BM25 over the pool; a candidate with no query term scores 0)
KITCHEN = [
    ("vitamin scurvy", ["scurvy from lack of vitamin", "sugar in cake"], 0, 1.0, True),
    ("zebra", ["sugar in cake", "scurvy from lack of vitamin", "bread and butter"], 2, 1 / 3, False),
    ("sugar", ["bread and butter", "sugar in cake"], 0, 0.0, False),
    ("zebra", ["bread and butter", "sugar in cake"], 0, 0.5, True),  # argmax would credit index 0
]


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcr") / "kitchen-test.csv"
    return write_mcr(path, [("Find it.", q, docs, label) for q, docs, label, _, _ in KITCHEN])


@pytest.mark.parametrize("depth", [1, 100])
def test_bm25_scores_the_pool_and_splits_ties(kitchen, depth):
    scorer = RetrieverScorer(build_retriever("bm25"), depth=depth)  # depth 1 forces the full-pool re-search
    record = evaluate_mcr(scorer, kitchen, instruction=False)
    assert record.metrics["accuracy"] == pytest.approx(np.mean([k[3] for k in KITCHEN]))  # 11/24
    assert record.metrics["accuracy_argmax"] == pytest.approx(np.mean([k[4] for k in KITCHEN]))  # 0.5
    assert record.details["tied_queries"] == 2 and record.label == "bm25" and record.details["num_candidates"] == 3
    assert scorer.retriever.doc_count == 3  # indexed on the distinct candidate texts


def test_format_table_has_a_column_per_setting(kitchen):
    records = evaluate_mcr_sets(WordCountEncoder(), [kitchen])
    table = format_mcr_table(records)
    assert "| set | queries | dense-WordCountEncoder w/o inst | dense-WordCountEncoder w/ inst |" in table
    assert "| kitchen | 4 |" in table and "| mean |" in table


# ------------------------------------------------------------------ real data


SIZES = {
    "ARC-Challenge": 1172, "alphanli": 1532, "physicaliqa": 1838, "socialiqa": 1954, "winogrande": 1267,
    "TempReason-l2-pure": 5521,
}


def test_shared_sets_parse_in_full():
    shared("rar-b-mcr")
    assert {name: len(load_mcr(name)) for name in MCR_SETS} == SIZES
    assert load_mcr("TempReason/test-l2-pure", limit=1)[0].label == 0  # the alias of the file name works


def test_bm25_on_real_slices():
    """First 50 rows; TempReason's gold is always candidate 0, so RAR-b's argmax rule flatters BM25's ties."""
    shared("rar-b-mcr")
    scorer = mcr_scorer("bm25")
    arc = evaluate_mcr(scorer, "ARC-Challenge", instruction=False, limit=50)
    temp = evaluate_mcr(scorer, "TempReason-l2-pure", instruction=True, limit=50)
    assert arc.metrics["accuracy"] == pytest.approx(0.115, abs=1e-9)
    assert temp.metrics == pytest.approx({"accuracy": 0.2, "accuracy_argmax": 0.86})


def test_minilm_on_a_real_slice():
    shared("rar-b-mcr")
    record = evaluate_mcr("dense:model=minilm", "ARC-Challenge", instruction=False, limit=50)
    assert record.label == "dense-minilm" and record.retriever["model"] == "minilm"
    assert record.metrics["accuracy"] == pytest.approx(0.22, abs=1e-9)


# full runs: the numbers in docs/rarb.md (python -m eval.rarb --scorer bm25 --scorer dense:model=minilm)
FULL = {
    "bm25": {
        ("ARC-Challenge", False): 0.1895, ("ARC-Challenge", True): 0.1902, ("alphanli", False): 0.5124,
        ("alphanli", True): 0.5131, ("physicaliqa", False): 0.5253, ("physicaliqa", True): 0.5280,
        ("socialiqa", False): 0.3497, ("socialiqa", True): 0.3494, ("winogrande", False): 0.5146,
        ("winogrande", True): 0.5138, ("TempReason-l2-pure", False): 0.1932, ("TempReason-l2-pure", True): 0.1932,
    },
    "dense:model=minilm": {
        ("ARC-Challenge", False): 0.2409, ("ARC-Challenge", True): 0.2400, ("alphanli", False): 0.4961,
        ("alphanli", True): 0.5026, ("physicaliqa", False): 0.5734, ("physicaliqa", True): 0.5686,
        ("socialiqa", False): 0.3941, ("socialiqa", True): 0.3930, ("winogrande", False): 0.5130,
        ("winogrande", True): 0.4957, ("TempReason-l2-pure", False): 0.1855, ("TempReason-l2-pure", True): 0.1871,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["bm25", "dense:model=minilm"])
def test_full_sets_match_the_documented_numbers(spec):
    shared("rar-b-mcr")
    records = evaluate_mcr_sets(spec)
    got = {(r.dataset, r.details["instruction"]): r.metrics["accuracy"] for r in records}
    assert got == pytest.approx(FULL[spec], abs=6e-5)  # the docs round to 4 places
