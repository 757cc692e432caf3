"""KILT jsonl in and out, dengen Runs as KILT guess files, and KILT's page-level retrieval metrics.

The metrics follow facebookresearch/KILT exactly (kilt/eval_retrieval.py at commit c730838c:
`_get_ids_list`, `get_rank`, `_computeRprec`, `rprecision`, `get_ranking_metrics`, `compute`,
`filter_answers`; kilt/eval_downstream.py `validate_input`), quirks included; docs/kilt.md lists them.

    gold = read_kilt("hotpotqa-dev-kilt.jsonl.gz")
    run = retriever.search(kilt_queries(gold), k=100)
    guess = run_to_kilt(run, kilt_queries(gold), corpus_pages(corpus), k=20)
    write_kilt(guess, "runs/hotpotqa-guess.jsonl")
    kilt_retrieval_scores(gold, guess, ks=(1, 5))   # {"r-precision": .., "precision@1": .., "recall@5": .., ...}

Command line, with KILT's argument order (guess first): `python -m eval.kilt GUESS GOLD --ks 1,5,10,20`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

from eval.record import Result
from indexes.manifest import atomic_path
from retrieval.data import Corpus, Doc, jsonl_records
from retrieval.errors import DataError
from retrieval.run import ranked

# KILT scores pages by wikipedia_id unless told otherwise (eval_retrieval.py --rank_keys default)
RANK_KEYS = ("wikipedia_id",)


# ---------------------------------------------------------------- reading and writing


def read_kilt(path: str | Path, *, rank_keys: Iterable[str] = RANK_KEYS, require_input: bool = True) -> list[dict]:
    """Read a KILT jsonl(.gz) file (gold or guess) as a list of records, in file order.

    Args:
        path: the file; gzipped when the name ends in .gz.
        rank_keys: provenance fields every provenance entry must carry (what the metrics rank by).
        require_input: whether each line needs an `input` string (gold files do; guess files may omit it).

    Raises `DataError` (file, line, field) on the first bad line: bad JSON, a missing or ill-typed
    `id` / `input` / `output`, provenance lacking a rank key, or an id seen before (KILT asserts unique ids).
    """
    path = Path(path)
    rank_keys = tuple(rank_keys)
    records: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, record in jsonl_records(path):
        check_record(record, path, lineno, rank_keys=rank_keys, require_input=require_input)
        key = example_id(record)
        if key in first_line:
            raise DataError(path, lineno, "id", f"duplicate id {key!r} (first on line {first_line[key]})")
        first_line[key] = lineno
        records.append(record)
    if not records:
        raise DataError(path, None, None, "no KILT records")
    return records


def write_kilt(records: Iterable[dict], path: str | Path) -> None:
    """Write records as KILT jsonl (gzipped when the name ends in .gz), atomically via a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def check_record(record: dict, path: str | Path, lineno: int | None, *, rank_keys=RANK_KEYS, require_input: bool = True) -> None:
    """Raise `DataError` unless `record` is a well-formed KILT record (kilt_utils.validate_datapoint's rules,
    plus the rank keys the metrics need)."""
    if "id" not in record:
        raise DataError(path, lineno, "id", "missing")
    if not _is_id_value(record["id"]):
        raise DataError(path, lineno, "id", f"expected a non-empty string or integer, got {record['id']!r}")
    if "input" in record or require_input:
        if "input" not in record:
            raise DataError(path, lineno, "input", "missing")
        if not isinstance(record["input"], str):
            raise DataError(path, lineno, "input", f"expected a string, got {type(record['input']).__name__}")
    if "output" not in record:
        raise DataError(path, lineno, "output", "missing")
    outputs = record["output"]
    if not isinstance(outputs, list) or not outputs:
        raise DataError(path, lineno, "output", f"expected a non-empty list, got {outputs!r:.60}")
    for i, output in enumerate(outputs):
        _check_output(output, f"output[{i}]", path, lineno, tuple(rank_keys))


def _check_output(output, where: str, path, lineno, rank_keys: tuple[str, ...]) -> None:
    if not isinstance(output, dict):
        raise DataError(path, lineno, where, f"expected an object, got {type(output).__name__}")
    if "answer" in output and not isinstance(output["answer"], str):
        raise DataError(path, lineno, f"{where}.answer", f"expected a string, got {type(output['answer']).__name__}")
    if "provenance" not in output:
        return  # answer-only outputs are normal in KILT files
    provenance = output["provenance"]
    if not isinstance(provenance, list):
        raise DataError(path, lineno, f"{where}.provenance", f"expected a list, got {type(provenance).__name__}")
    for j, entry in enumerate(provenance):
        at = f"{where}.provenance[{j}]"
        if not isinstance(entry, dict):
            raise DataError(path, lineno, at, f"expected an object, got {type(entry).__name__}")
        for key in rank_keys:
            if key not in entry:
                raise DataError(path, lineno, f"{at}.{key}", "missing (needed to score retrieval)")
            if not _is_id_value(entry[key]):
                raise DataError(path, lineno, f"{at}.{key}", f"expected a non-empty string or integer, got {entry[key]!r}")
        if "title" in entry and not isinstance(entry["title"], str):
            raise DataError(path, lineno, f"{at}.title", f"expected a string, got {type(entry['title']).__name__}")


def _is_id_value(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and bool(str(value).strip())


def example_id(record: dict) -> str:
    """The id KILT matches gold and guess on: `str(id).strip()`, so 7 and " 7" name the same example."""
    return str(record["id"]).strip()


def kilt_queries(records: Iterable[dict]) -> dict[str, str]:
    """{example id: input} in file order: the queries to search with, and the `inputs` of `run_to_kilt`."""
    return {example_id(r): r["input"] for r in records}


# ---------------------------------------------------------------- the knowledge source and end-to-end runs

KNOWLEDGE_SOURCE_URL = "http://dl.fbaipublicfiles.com/KILT/kilt_knowledgesource.json"


def load_knowledge_source(path: str | Path) -> Corpus:
    """KILT's Wikipedia (kilt_knowledgesource.json, one page per line) as a corpus of whole pages.

    A page becomes one document: id = `wikipedia_id`, title = `wikipedia_title`, text = its paragraphs
    (`text`, a list; KILT's first paragraph repeats the title) joined by newlines. A bad line raises
    `DataError` naming the file, line and field. Use a `chunked` retriever to score pages by passages.
    """
    path = Path(path)
    docs, seen = [], set()
    for lineno, record in jsonl_records(path):
        for field, kind in (("wikipedia_id", (str, int)), ("wikipedia_title", str), ("text", list)):
            if not isinstance(record.get(field), kind):
                raise DataError(path, lineno, field, "missing" if field not in record else f"must be {kind}")
        page = str(record["wikipedia_id"]).strip()
        if page in seen:
            raise DataError(path, lineno, "wikipedia_id", f"duplicate page {page!r}")
        seen.add(page)
        paragraphs = [str(t).strip() for t in record["text"]]
        if paragraphs and paragraphs[0] == record["wikipedia_title"].strip():
            paragraphs = paragraphs[1:]
        docs.append(Doc(page, record["wikipedia_title"], "\n".join(paragraphs)))
    if not docs:
        raise DataError(path, None, None, "no pages")
    return Corpus(docs, source=str(path))


def evaluate_kilt(retriever, gold_path: str | Path, corpus: Corpus, ks: Iterable[int] = (1, 5, 10, 20)) -> tuple[Result, list[dict]]:
    """Search every input of a KILT gold file and score the pages found. Returns (record, guess records).

    Args:
        retriever: any dengen retriever; indexed on `corpus` unless it already holds documents. Its
            document ids must be the pages' wikipedia_ids (`load_knowledge_source`), or the ids of a
            `chunked` retriever over them.
        gold_path: a KILT gold jsonl(.gz), e.g. hotpotqa-dev-kilt.jsonl.gz.
        corpus: the pages, for their ids and titles.
        ks: KILT's cut-offs (its default 1, 5, 10, 20); main metric R-precision.
    """
    from eval.runner import label

    ks = _check_ks(ks)
    gold = read_kilt(gold_path)
    if not retriever.doc_count:
        retriever.index(corpus)
    inputs = kilt_queries(gold)
    start = time.perf_counter()
    run = retriever.search(inputs, k=max(100, max(ks)))
    seconds = time.perf_counter() - start
    guess = run_to_kilt(run, inputs, corpus_pages(corpus, page_id=lambda doc: doc.id), k=max(ks))
    dataset, _, split = Path(gold_path).name.split(".")[0].removesuffix("-kilt").rpartition("-")  # hotpotqa-dev-kilt
    description = retriever.describe()
    record = Result(
        task="KILT", family="KILT", dataset=dataset or split, split=split if dataset else "",
        retriever=description, label=label(description), metrics=kilt_retrieval_scores(gold, guess, ks),
        main_metric="r-precision", num_queries=len(gold), num_docs=len(corpus),
        build_seconds=retriever.build_seconds, search_seconds=seconds,
    )
    return record, guess


# ---------------------------------------------------------------- runs to KILT guesses


def corpus_pages(corpus: Corpus | Iterable[Doc], page_id: Callable[[Doc], str] | None = None) -> dict[str, tuple[str, str | None]]:
    """doc_id -> (page id, title) for a corpus of pages or of paragraphs of pages.

    Args:
        corpus: documents with titles.
        page_id: the page a document belongs to; by default its title (a Wikipedia title names one page).
            For KILT's knowledge source pass the paragraph's wikipedia_id instead.
    """
    pages = {}
    for doc in corpus:
        if page_id is None and not doc.title.strip():
            raise ValueError(f"document {doc.id!r} has no title, so its page is unknown: pass page_id=")
        pages[doc.id] = (page_id(doc) if page_id else doc.title, doc.title or None)
    return pages


def run_to_kilt(
    run: Mapping[str, Mapping[str, float]],
    inputs: Mapping[str, str],
    doc_pages: Mapping[str, tuple],
    k: int | None = None,
) -> list[dict]:
    """KILT guess records from a Run: one per entry of `inputs`, in that order.

    Each record is `{"id", "input", "output": [{"provenance": [{"wikipedia_id", "title"?}, ...]}]}`, the
    pages in rank order. Documents of one page collapse to the page's first (best-ranked) occurrence,
    the same de-duplication KILT applies when scoring, so `k` counts pages, not documents.

    Args:
        run: {query_id: {doc_id: score}}; ties rank as everywhere in dengen (`retrieval.run.ranked`).
        inputs: {query_id: input text}, e.g. `kilt_queries(gold)`. A query the run lacks gets no provenance
            (it scores 0, as a missed query does in `eval.metrics`).
        doc_pages: doc_id -> (wikipedia_id, title or None), e.g. `corpus_pages(corpus)`.
        k: keep this many pages (None: all). Give at least max(ks) so recall@k is not cut short.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be a positive number of pages, got {k}")
    unknown = [qid for qid in run if qid not in inputs]
    if unknown:
        warnings.warn(f"{len(unknown)} run queries are not in inputs and are left out (first: {unknown[0]!r})", stacklevel=2)
    return [
        {"id": qid, "input": text, "output": [{"provenance": _ranked_pages(qid, run.get(qid, {}), doc_pages, k)}]}
        for qid, text in inputs.items()
    ]


def _ranked_pages(qid: str, scores: Mapping[str, float], doc_pages: Mapping[str, tuple], k: int | None) -> list[dict]:
    pages: list[dict] = []
    seen: set[str] = set()
    for doc_id, _ in ranked(dict(scores)):
        if doc_id not in doc_pages:
            raise ValueError(f"query {qid!r}: document {doc_id!r} is not in doc_pages, so its page is unknown")
        wikipedia_id, title = doc_pages[doc_id]
        page = str(wikipedia_id).strip()
        if page in seen:  # a lower-ranked paragraph of a page already listed
            continue
        seen.add(page)
        pages.append({"wikipedia_id": page} if title is None else {"wikipedia_id": page, "title": title})
        if len(pages) == k:
            break
    return pages


# ---------------------------------------------------------------- KILT's metrics, one example


def provenance_ids(output: dict, rank_keys: Iterable[str] = RANK_KEYS) -> list[str]:
    """An output's provenance as KILT ranks it (`_get_ids_list`): each entry's rank-key values, stripped and
    joined by "+", duplicates removed keeping the first. An output without provenance gives []."""
    ids: list[str] = []
    for entry in output.get("provenance", []):
        missing = [key for key in rank_keys if key not in entry]
        if missing:
            # KILT silently drops such entries here but keeps them in get_rank; we refuse instead
            raise ValueError(f"provenance entry {entry!r:.80} lacks {', '.join(missing)}")
        page = "+".join(str(entry[key]).strip() for key in rank_keys)
        if page not in ids:
            ids.append(page)
    return ids


def r_precision(guess_ids: list[str], gold_id_lists: list[list[str]]) -> float:
    """KILT `rprecision`: per gold output, (gold pages among the first R guesses) / R with R that output's
    distinct pages (0 when R is 0); the maximum over outputs. `guess_ids` must be de-duplicated."""
    def one(gold_ids: list[str]) -> float:
        r = len(gold_ids)
        return sum(page in gold_ids for page in guess_ids[:r]) / r if r else 0
    return max(one(gold_ids) for gold_ids in gold_id_lists)


def evidence_rank(guess_ids: list[str], gold_sets: list[set[str]]) -> tuple[list, int]:
    """KILT `get_rank`: the ranking where each distinct gold evidence set is one point.

    Walking the guesses, a page outside every set adds False; a page in a set removes it from that set and
    moves the set's point to the end: "evidence_set:<i>" while pages are missing, True once complete. A page
    in several sets updates each. Returns (rank, number of distinct sets, empty sets included).
    """
    sets: list[set[str]] = []
    for gold_set in gold_sets:
        if gold_set not in sets:  # KILT counts identical sets once
            sets.append(set(gold_set))
    if not guess_ids:  # KILT skips everything, so every metric is 0
        return [], 0
    rank: list = []
    for page in guess_ids:
        found = False
        for index, remaining in enumerate(sets):
            if page in remaining:
                found = True
                point = f"evidence_set:{index}"  # a string: True/False/1/0 would collide in count(True)
                if point in rank:
                    rank.remove(point)
                remaining.remove(page)
                rank.append(True if not remaining else point)
        if not found:
            rank.append(False)
    return rank, len(sets)


def metric_names(ks: Iterable[int]) -> list[str]:
    """The metrics KILT reports for `ks`: precision@k for every k, recall@k and success_rate@k only for k > 1."""
    ks = _check_ks(ks)
    names = ["r-precision"] + [f"precision@{k}" for k in ks]
    return names + [f"{m}@{k}" for m in ("recall", "success_rate") for k in ks if k > 1]


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def example_scores(gold: dict, guess: dict, ks: Iterable[int] = (1, 5), rank_keys: Iterable[str] = RANK_KEYS) -> dict[str, float]:
    """KILT `get_ranking_metrics` for one example: r-precision, precision@k, recall@k, success_rate@k.

    The guess must hold exactly one output with provenance (KILT `filter_answers`); answer-only outputs are
    ignored. A gold example with no provenance scores 0 everywhere.
    """
    ks = _check_ks(ks)
    rank_keys = tuple(rank_keys)
    guess_ids = provenance_ids(_guess_output(guess), rank_keys)
    gold_outputs = gold["output"]
    if not gold_outputs:
        raise ValueError(f"gold example {example_id(gold)!r} has no outputs")
    gold_lists = [provenance_ids(o, rank_keys) for o in gold_outputs]
    # every gold output takes part in R-precision, answer-only ones as an empty (R = 0) list ...
    scores = {"r-precision": r_precision(guess_ids, gold_lists)}
    # ... but only outputs with a provenance field form evidence sets (an empty list still does)
    gold_sets = [set(ids) for ids, o in zip(gold_lists, gold_outputs) if "provenance" in o]
    rank, n_sets = evidence_rank(guess_ids, gold_sets)
    for k in ks:
        hits = rank[:k].count(True)
        scores[f"precision@{k}"] = hits / k if n_sets else 0
        if k > 1:
            scores[f"recall@{k}"] = hits / n_sets if n_sets else 0
            scores[f"success_rate@{k}"] = int(True in rank[:k]) if n_sets else 0
    return scores


def _guess_output(guess: dict) -> dict:
    with_provenance = [o for o in guess.get("output", []) if "provenance" in o]
    if len(with_provenance) != 1:
        raise ValueError(f"guess {example_id(guess)!r} should hold exactly one output with provenance, has {len(with_provenance)}")
    return with_provenance[0]


# ---------------------------------------------------------------- KILT's metrics, a whole file


def align(gold: list[dict], guess: list[dict]) -> list[tuple[dict, dict]]:
    """(gold, guess) pairs in gold order, matched on `example_id` (KILT `validate_input`).

    Duplicate ids or a gold example without a guess raise ValueError; guesses for ids outside the gold are
    left out with a warning (KILT prints one about the sizes).
    """
    gold_ids = [example_id(r) for r in gold]
    if len(set(gold_ids)) != len(gold_ids):
        raise ValueError("gold ids should be unique")
    by_id: dict[str, dict] = {}
    for record in guess:
        key = example_id(record)
        if key in by_id:
            raise ValueError(f"guess id {key!r} appears twice")
        by_id[key] = record
    missing = [key for key in gold_ids if key not in by_id]
    if missing:
        raise ValueError(f"no guess for {len(missing)} gold ids (first: {missing[0]!r})")
    extra = len(by_id) - len(gold_ids)
    if extra:
        warnings.warn(f"{extra} guesses have ids outside the gold and are left out", stacklevel=3)
    return [(g, by_id[key]) for g, key in zip(gold, gold_ids)]


def kilt_retrieval_per_example(
    gold: list[dict], guess: list[dict], ks: Iterable[int] = (1, 5), rank_keys: Iterable[str] = RANK_KEYS
) -> dict[str, dict[str, float]]:
    """{metric: {example id: value}} for every gold example, the shape `eval.metrics.per_query` returns."""
    names = metric_names(ks)
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for gold_record, guess_record in align(gold, guess):
        scores = example_scores(gold_record, guess_record, ks, rank_keys)
        for name in names:
            out[name][example_id(gold_record)] = scores[name]
    return out


def kilt_retrieval_scores(
    gold: list[dict], guess: list[dict], ks: Iterable[int] = (1, 5), rank_keys: Iterable[str] = RANK_KEYS
) -> dict[str, float]:
    """Means over all gold examples (KILT `compute`), on a 0-1 scale.

    Keys: "r-precision" (KILT's "Rprec"), "precision@k", and for k > 1 "recall@k" and "success_rate@k".
    Gold examples without provenance stay in the denominator with 0, as in KILT.
    """
    if not gold:
        raise ValueError("no gold examples")
    per_example = kilt_retrieval_per_example(gold, guess, ks, rank_keys)
    # summed in gold order, like KILT's running totals, so the floats match its output exactly
    return {name: sum(values.values()) / len(gold) for name, values in per_example.items()}


def main(argv: list[str] | None = None) -> None:
    """`python -m eval.kilt GUESS GOLD [--ks 1,5,10,20] [--rank-keys wikipedia_id]`: print the means as JSON."""
    parser = argparse.ArgumentParser(prog="python -m eval.kilt", description="KILT page-level retrieval metrics")
    parser.add_argument("guess", help="guess KILT jsonl(.gz)")
    parser.add_argument("gold", help="gold KILT jsonl(.gz)")
    parser.add_argument("--ks", default="1,5,10,20", help="comma-separated cut-offs (KILT's default)")
    parser.add_argument("--rank-keys", default="wikipedia_id", help="comma-separated provenance fields to rank by")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    rank_keys = args.rank_keys.split(",")
    gold = read_kilt(args.gold, rank_keys=rank_keys)
    guess = read_kilt(args.guess, rank_keys=rank_keys, require_input=False)
    json.dump(kilt_retrieval_scores(gold, guess, ks, rank_keys), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
