"""Semantic textual similarity (STS) for any encoder: cosine similarity of the two sentences' vectors
against human scores, as Spearman (and Pearson) correlation, the way MTEB scores STS tasks.

Data sets (the files in ../shared/data, see each folder's PROVENANCE.md):
- "stsbenchmark": STS-B 2017 (Cer et al., SemEval-2017 Task 1), splits train / dev / test, scores 0-5.
  MTEB's STSBenchmark is the test split (1,379 pairs).
- "sick": SICK 2014 (Marelli et al., LREC 2014), splits train / trial / test, relatedness 1-5.
  MTEB's SICK-R scores all 9,927 pairs together: split "all" (train + trial + test, in that order).

Example:
    >>> from retrieval.dense.encoder import SentenceEncoder
    >>> record = evaluate_sts(SentenceEncoder("minilm"), "stsbenchmark", "test")
    >>> record.metrics["cosine_spearman"]    # MTEB's all-MiniLM-L6-v2 figure: 0.8203
"""
from __future__ import annotations

import csv
import gzip
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from eval.record import Result
from eval.runner import encoder_label
from retrieval.data import shared_data
from retrieval.errors import DataError


# data set -> (folder in SHARED_DATA, {split: file}, the MTEB task it is, score range)
STS_SETS = {
    "stsbenchmark": (
        "stsbenchmark",
        {"train": "sts-train.csv.gz", "dev": "sts-dev.csv.gz", "test": "sts-test.csv.gz"},
        "STSBenchmark",
        (0.0, 5.0),
    ),
    "sick": (
        "sick",
        {"train": "SICK_train.txt.gz", "trial": "SICK_trial.txt.gz", "test": "SICK_test_annotated.txt.gz"},
        "SICK-R",
        (1.0, 5.0),
    ),
}
ALIASES = {"sts-b": "stsbenchmark", "stsb": "stsbenchmark", "sick-r": "sick", "sickr": "sick"}


class STSPair(NamedTuple):
    sentence1: str
    sentence2: str
    score: float


def sts_set(name: str) -> str:
    """The canonical data set name for `name` ("STSBenchmark", "sts-b", "SICK-R", ... are accepted)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in STS_SETS:
        raise ValueError(f"unknown STS data set {name!r}: choose one of {', '.join(STS_SETS)}")
    return key


def task_name(name: str) -> str:
    """The MTEB task a data set is ("STSBenchmark", "SICK-R")."""
    return STS_SETS[sts_set(name)][2]


def _score(text: str, path: Path, lineno: int, field: str, bounds: tuple[float, float]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, lineno, field, f"not a number: {text!r}") from None
    if not bounds[0] <= value <= bounds[1]:
        raise DataError(path, lineno, field, f"{value} is outside {bounds[0]:g}-{bounds[1]:g}")
    return value


def _read_stsbenchmark(path: Path) -> list[STSPair]:
    """genre, file, year, id, score, sentence1, sentence2[, source notes...]: no header, no quoting
    (sentences hold bare quote characters; 503 lines carry extra trailing columns, ignored)."""
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as lines:
        for lineno, cols in enumerate(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(cols) < 7:
                raise DataError(path, lineno, "sentence2", f"expected at least 7 tab-separated columns, got {len(cols)}")
            pairs.append(STSPair(cols[5], cols[6], _score(cols[4], path, lineno, "score", (0.0, 5.0))))
    return pairs


def _read_sick(path: Path) -> list[STSPair]:
    """pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment, with that header."""
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as lines:
        rows = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if not header or header[:4] != ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"]:
            raise DataError(path, 1, None, f"expected the SICK header 'pair_ID sentence_A sentence_B relatedness_score ...', got {header!r}")
        for lineno, cols in enumerate(rows, start=2):
            if len(cols) < 4:
                raise DataError(path, lineno, "relatedness_score", f"expected at least 4 tab-separated columns, got {len(cols)}")
            pairs.append(STSPair(cols[1], cols[2], _score(cols[3], path, lineno, "relatedness_score", (1.0, 5.0))))
    return pairs


def load_sts_pairs(name: str, split: str = "test", folder: str | Path | None = None) -> list[STSPair]:
    """Sentence pairs with their gold scores, in file order.

    Args:
        name: "stsbenchmark" (alias "STSBenchmark", "sts-b") or "sick" (alias "SICK-R").
        split: stsbenchmark: "train", "dev", "test"; sick: "train", "trial", "test" or "all" (the three
            concatenated in that order, which is what MTEB's SICK-R scores).
        folder: the data set's folder (default: ../shared/data/<name>).
    """
    key = sts_set(name)
    default_folder, files, _, _ = STS_SETS[key]
    folder = Path(folder) if folder else shared_data(default_folder)
    splits = list(files) if key == "sick" and split == "all" else [split]
    if any(s not in files for s in splits):
        choices = list(files) + (["all"] if key == "sick" else [])
        raise ValueError(f"{key} has no split {split!r}: choose one of {', '.join(choices)}")
    reader = _read_stsbenchmark if key == "stsbenchmark" else _read_sick
    pairs = [pair for s in splits for pair in reader(folder / files[s])]
    if not pairs:
        raise DataError(folder, None, None, f"no pairs in the {split} split")
    return pairs


def load_pair_file(path: str | Path) -> list[STSPair]:
    """Pairs from any file of `score, sentence1, sentence2` rows: tab-separated (.tsv) or comma-separated
    (.csv, quoted as CSV), gzipped or not, with or without a header line naming the columns."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if not name.endswith((".tsv", ".csv")):
        raise DataError(path, None, None, "an STS pair file must end in .tsv or .csv (optionally .gz)")
    opener = gzip.open if path.name.endswith(".gz") else open
    tab = name.endswith(".tsv")
    pairs = []
    with opener(path, "rt", encoding="utf-8", newline="") as lines:
        rows = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if tab else csv.reader(lines)
        for lineno, cols in enumerate(rows, start=1):
            if lineno == 1 and cols and cols[0].strip().lower() == "score":
                continue  # the header
            if len(cols) != 3:
                raise DataError(path, lineno, None, f"expected 3 {'tab' if tab else 'comma'}-separated columns "
                                                    f"(score, sentence1, sentence2), got {len(cols)}")
            for field, text in (("sentence1", cols[1]), ("sentence2", cols[2])):
                if not text.strip():
                    raise DataError(path, lineno, field, "empty sentence")
            pairs.append(STSPair(cols[1], cols[2], _score(cols[0], path, lineno, "score", (float("-inf"), float("inf")))))
    if len(pairs) < 2:
        raise DataError(path, None, None, f"need at least 2 pairs to correlate, got {len(pairs)}")
    return pairs


def cosine_scores(vectors1: np.ndarray, vectors2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; normalised here, so it does not matter whether the encoder normalises."""
    a = np.asarray(vectors1, dtype=np.float64)
    b = np.asarray(vectors2, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-12)


def correlations(gold: list[float], predicted: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation of predicted similarities with gold scores (scipy, as MTEB)."""
    from scipy.stats import pearsonr, spearmanr

    return {
        "cosine_spearman": float(spearmanr(gold, predicted)[0]),
        "cosine_pearson": float(pearsonr(gold, predicted)[0]),
    }


def evaluate_sts(
    encoder,
    name: str = "stsbenchmark",
    split: str = "test",
    *,
    folder: str | Path | None = None,
    limit: int | None = None,
) -> Result:
    """Score an encoder on an STS split (or a pair file): cosine similarity of each pair against the gold scores.

    Both sentences go through `encode_queries`, as a symmetric task should (MTEB, too, encodes STS
    sentences without a query/passage prompt type); a query prefix is therefore applied to both sides.

    Args:
        encoder: anything with `encode_queries(texts) -> array` and `describe()` (SentenceEncoder,
            method-module encoders).
        name, split, folder: which pairs (see `load_sts_pairs`); `name` may instead be the path of a pair
            file (`load_pair_file`), recorded under its file name with task "STS".
        limit: score only the first `limit` pairs (quick checks).

    Returns:
        A Result, metrics on the 0-1 scale: cosine_spearman (main) and cosine_pearson; num_queries is
        the number of pairs scored.
    """
    is_file = Path(name).suffix in (".tsv", ".csv", ".gz") or Path(name).is_file()
    pairs = (load_pair_file(name) if is_file else load_sts_pairs(name, split, folder))[:limit]
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to correlate, got {len(pairs)}")
    start = time.perf_counter()
    # each distinct sentence once: STS sets repeat sentences across pairs
    unique = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
    vectors = np.asarray(encoder.encode_queries(unique))
    row = {sentence: i for i, sentence in enumerate(unique)}
    similarity = cosine_scores(vectors[[row[p.sentence1] for p in pairs]], vectors[[row[p.sentence2] for p in pairs]])
    description = {"kind": "encoder", **encoder.describe()}
    return Result(
        task="STS" if is_file else task_name(name), family="STS", split="" if is_file else split, retriever=description,
        dataset=Path(name).name.removesuffix(".gz").rsplit(".", 1)[0] if is_file else sts_set(name),
        label=encoder_label(description), metrics=correlations([p.score for p in pairs], similarity),
        main_metric="cosine_spearman", num_queries=len(pairs), search_seconds=time.perf_counter() - start,
    )
