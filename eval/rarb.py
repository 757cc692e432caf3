"""RAR-b multiple-choice retrieval (MCR): rank each query's own candidates, score top-1 accuracy.

RAR-b (Xiao et al., "RAR-b: Reasoning as Retrieval Benchmark", arXiv:2404.06347) recasts reasoning
problems as retrieval. In its MCR setting every query comes with a handful of candidate answers and a
retriever must put the right one first. This module follows the authors' evaluation code
(github.com/gowitheflow-1998/RAR-b, `rarb/mcr_utils/model_utils.py`, `AutoRetriever.evaluate_mcr*`):

- without instruction the query is the raw query text; with instruction it is
  `(instruction + " " + query).strip()` (their rule for sentence-transformers, OpenAI and Cohere models,
  which have no instruction template); candidates are always encoded without instruction;
- a bi-encoder scores candidates by cosine similarity (`similarity="dot"` for the models RAR-b scores
  by inner product, Contriever and DRAGON);
- accuracy is the share of queries whose top-scored candidate is the gold one.

Ties: RAR-b takes `np.argmax`, the first maximal candidate, which silently credits candidate 0 (and in
TempReason l2-pure the gold answer is always candidate 0). We score ties as the expected accuracy under
random tie-breaking instead: a query whose gold answer shares the top score with n-1 other distinct
candidate texts counts 1/n. Identical candidate texts are one answer (TempReason repeats some), so a
duplicate of the gold text counts as gold. `metrics["accuracy_argmax"]` keeps RAR-b's own rule for
comparison with the paper.

Scorers (see `mcr_scorer`):
- an encoder (anything with `encode_queries` / `encode_documents`, e.g. `SentenceEncoder("minilm")`),
  or a dense retriever or spec ("dense:model=minilm"), whose encoder is used: candidates are scored
  directly, each distinct candidate text of the set encoded once;
- any other retriever or spec ("bm25", "bm25+dense"): it is indexed on the pool of all distinct candidate
  texts of the set (BM25 needs collection statistics), each query is searched deep enough to see all its
  own candidates, and a candidate it does not return scores 0.

Example:
    >>> from eval.rarb import evaluate_mcr, mcr_scorer
    >>> scorer = mcr_scorer("bm25")        # build once, reuse across sets and instruction settings
    >>> evaluate_mcr(scorer, "ARC-Challenge", instruction=False).metrics["accuracy"]

Command line (runs every set with and without instruction, writes JSON and prints a Markdown table):
    python -m eval.rarb --scorer dense:model=minilm --scorer bm25 --out results/rarb
"""
from __future__ import annotations

import argparse
import ast
import csv
import gzip
import io
import json
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from eval.record import Result
from indexes.manifest import atomic_write
from retrieval.data import shared_data
from retrieval.errors import DataError

TASK = "RAR-b MCR"
COLUMNS = ("instructions", "queries", "documents", "labels")

# set name -> file under the data folder (ours gzipped; RAR-b's own `mcr/` folder holds the same .csv files)
MCR_FILES = {
    "ARC-Challenge": "ARC-Challenge-test.csv",
    "alphanli": "alphanli-test.csv",
    "physicaliqa": "physicaliqa-test.csv",
    "socialiqa": "socialiqa-test.csv",
    "winogrande": "winogrande-test.csv",
    "TempReason-l2-pure": "TempReason/test-l2-pure.csv",
}
MCR_SETS = tuple(MCR_FILES)
ALIASES = {"TempReason/test-l2-pure": "TempReason-l2-pure"}


class MCRItem(NamedTuple):
    """One multiple-choice query: its task instruction, query text, candidate answers and gold index."""

    instruction: str
    query: str
    candidates: tuple[str, ...]
    label: int
    line: int  # 1-based line of the CSV record, for messages


# ------------------------------------------------------------------ data


def mcr_path(set_name: str | Path, root: str | Path | None = None) -> Path:
    """The CSV file of a set name (gzipped or not), or `set_name` itself when it is a CSV file path."""
    name = ALIASES.get(str(set_name), str(set_name))
    if name in MCR_FILES:
        base = Path(root) if root is not None else shared_data("rar-b-mcr")
        for path in (base / (MCR_FILES[name] + ".gz"), base / MCR_FILES[name]):
            if path.is_file():
                return path
        raise FileNotFoundError(f"RAR-b MCR set {name!r}: neither {path}.gz nor {path} exists")
    if str(set_name).endswith((".csv", ".csv.gz")) and Path(set_name).is_file():
        return Path(set_name)
    raise ValueError(f"unknown RAR-b MCR set {set_name!r}: choose one of {', '.join(MCR_SETS)} or give a .csv(.gz) path")


def _set_label(set_name: str | Path) -> str:
    """The dataset name records carry: the set name (also for a path to one of its files), else a CSV
    file's name without its suffixes and RAR-b's "-test" (TempReason-l3-pure-test.csv: TempReason-l3-pure)."""
    name = ALIASES.get(str(set_name), str(set_name))
    if name in MCR_FILES:
        return name
    file = Path(set_name).name.removesuffix(".gz")
    return next((n for n, f in MCR_FILES.items() if f == file), file.removesuffix(".csv").removesuffix("-test"))


def _parse_row(row: dict, path: Path, line: int) -> MCRItem:
    """Validate one CSV record; every problem names the file, line and field."""
    if None in row or any(value is None for value in row.values()):
        raise DataError(path, line, None, f"expected {len(COLUMNS)} fields ({','.join(COLUMNS)})")
    query = row["queries"]
    if not query.strip():
        raise DataError(path, line, "queries", "empty query")
    try:
        # the documents column is a Python list literal (RAR-b reads it with eval; literal_eval runs no code)
        candidates = ast.literal_eval(row["documents"])
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise DataError(path, line, "documents", f"not a Python list literal: {err}") from None
    if not isinstance(candidates, (list, tuple)) or not candidates:
        raise DataError(path, line, "documents", "expected a non-empty list of candidate strings")
    if not all(isinstance(c, str) for c in candidates):
        raise DataError(path, line, "documents", "every candidate must be a string")
    try:
        label = int(row["labels"].strip())
    except ValueError:
        raise DataError(path, line, "labels", f"expected an integer index, got {row['labels']!r}") from None
    if not 0 <= label < len(candidates):
        raise DataError(path, line, "labels", f"index {label} is outside the {len(candidates)} candidates")
    return MCRItem(row["instructions"], query, tuple(candidates), label, line)


def load_mcr(set_name: str | Path, limit: int | None = None, root: str | Path | None = None) -> list[MCRItem]:
    """Read a RAR-b MCR set (a name from MCR_SETS, or a .csv/.csv.gz path) into `MCRItem`s, file order.

    Args:
        set_name: e.g. "ARC-Challenge", "TempReason-l2-pure", or a CSV path with header
            `instructions,queries,documents,labels`.
        limit: keep only the first `limit` records (all are still parsed up to there).
        root: folder holding the sets (default: ../shared/data/rar-b-mcr, see `retrieval.data.shared_data`).

    Raises:
        DataError: a missing column, a wrong field count, an empty query, a `documents` cell that is not a
            list of strings, or a label that is not an index into it.
    """
    path = mcr_path(set_name, root)
    opener = gzip.open if path.name.endswith(".gz") else open
    items: list[MCRItem] = []
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, 1, missing[0], f"missing column (header must hold {','.join(COLUMNS)})")
        start = reader.line_num + 1  # a quoted cell may span lines: report where the record starts
        for row in reader:
            if limit is not None and len(items) >= limit:
                break
            items.append(_parse_row(row, path, start))
            start = reader.line_num + 1
    return items


def compose_query(item: MCRItem, instruction: bool, template: str | None = None) -> str:
    """The query text a model sees: RAR-b's `(instruction + " " + query).strip()` with instruction, the
    raw query without. `template` (e.g. "Instruct: {instruction}\\nQuery: {query}", E5-Mistral's form)
    replaces the plain join for models with their own instruction format."""
    if not instruction:
        return item.query
    if template is not None:
        return template.format(instruction=item.instruction, query=item.query)
    return (item.instruction + " " + item.query).strip()


def candidate_pool(items: Sequence[MCRItem]) -> list[str]:
    """Every distinct candidate text of a set, in order of first appearance."""
    return list(dict.fromkeys(c for item in items for c in item.candidates))


# ------------------------------------------------------------------ scorers


class EncoderScorer:
    """Scores candidates with a bi-encoder: cosine (or inner product) of query and candidate vectors.

    Args:
        encoder: anything with `encode_queries(texts)` and `encode_documents(texts)` returning arrays.
        similarity: "cos" (RAR-b's default) or "dot".

    Candidate vectors of the last pool are kept, so scoring a set with and without instruction encodes
    its candidates once.
    """

    def __init__(self, encoder, similarity: str = "cos"):
        if similarity not in ("cos", "dot"):
            raise ValueError(f"similarity must be 'cos' or 'dot', got {similarity!r}")
        self.encoder, self.similarity = encoder, similarity
        self._pool: tuple[str, ...] = ()
        self._vectors: np.ndarray | None = None

    def _unit(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.similarity == "dot":
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)  # a zero vector scores 0, as sklearn's cosine does

    def _pool_vectors(self, pool: list[str]) -> np.ndarray:
        if tuple(pool) != self._pool:
            self._vectors = self._unit(self.encoder.encode_documents(pool))
            self._pool = tuple(pool)
        return self._vectors

    def score(self, queries: list[str], pool: list[str], candidates: list[list[int]]) -> list[np.ndarray]:
        """Per query, the scores of its candidates (positions into `pool`)."""
        doc_vectors = self._pool_vectors(pool)
        query_vectors = self._unit(self.encoder.encode_queries(queries))
        scores = []
        for q, rows in zip(query_vectors, candidates):
            # score each distinct text once, so repeated candidates tie exactly
            distinct, back = np.unique(rows, return_inverse=True)
            scores.append((doc_vectors[distinct] @ q)[back])
        return scores

    def describe(self) -> dict:
        inner = self.encoder.describe() if hasattr(self.encoder, "describe") else {}
        return {"kind": "dense", "encoder": type(self.encoder).__name__, **inner, "similarity": self.similarity}


class RetrieverScorer:
    """Scores candidates with any dengen retriever indexed on the set's pool of candidate texts.

    Args:
        retriever: a `Retriever`; it is re-indexed (in memory) on each new pool.
        depth: first search depth; a query whose results fill it while missing one of its own candidates
            is searched again over the whole pool, so a candidate left out truly scores nothing.
    """

    def __init__(self, retriever, depth: int = 100):
        self.retriever, self.depth = retriever, depth
        self._pool: tuple[str, ...] = ()

    def _index(self, pool: list[str]) -> None:
        from retrieval.data import Corpus, Doc

        if tuple(pool) != self._pool:
            self.retriever.index(Corpus(Doc(f"c{i}", "", text) for i, text in enumerate(pool)))
            self._pool = tuple(pool)

    def _search(self, queries: list[str], candidates: list[list[int]], pool_size: int) -> list[dict[str, float]]:
        texts = {str(i): q for i, q in enumerate(queries)}
        depth = min(self.depth, pool_size)
        run = self.retriever.search(texts, depth)
        short = {
            qid: texts[qid] for qid, rows in zip(texts, candidates)
            if len(run.get(qid, {})) >= depth and any(f"c{r}" not in run[qid] for r in rows)
        }
        if short and depth < pool_size:
            run.update(self.retriever.search(short, pool_size))
        return [run.get(qid, {}) for qid in texts]

    def score(self, queries: list[str], pool: list[str], candidates: list[list[int]]) -> list[np.ndarray]:
        """Per query, the retriever's scores of its candidates (0 for one it does not return)."""
        self._index(pool)
        hits = self._search(queries, candidates, len(pool))
        return [np.array([found.get(f"c{r}", 0.0) for r in rows], dtype=np.float64) for found, rows in zip(hits, candidates)]

    def describe(self) -> dict:
        return self.retriever.describe()


def mcr_scorer(scorer, similarity: str = "cos", depth: int = 100) -> EncoderScorer | RetrieverScorer:
    """What `evaluate_mcr` scores with, from whatever is natural to hand it.

    - an `EncoderScorer` / `RetrieverScorer`: returned as is;
    - an encoder (has `encode_queries` and `encode_documents`): scored directly;
    - a dense `Retriever` or a spec naming one ("dense:model=minilm"): its encoder, scored directly;
    - any other `Retriever` or spec ("bm25", "bm25:k1=1.2,b=0.75", "bm25+dense", a saved index folder):
      indexed on each set's candidate pool.
    """
    from retrieval.api import Retriever

    if isinstance(scorer, (EncoderScorer, RetrieverScorer)):
        return scorer
    if isinstance(scorer, (str, dict)):
        from retrieval.spec import parse_spec

        scorer = parse_spec(scorer)
    if isinstance(scorer, Retriever):
        if scorer.kind == "dense":  # the faiss index plays no part in scoring given candidates
            return EncoderScorer(scorer.encoder, similarity)
        return RetrieverScorer(scorer, depth)
    if hasattr(scorer, "encode_queries") and hasattr(scorer, "encode_documents"):
        return EncoderScorer(scorer, similarity)
    raise TypeError(f"cannot score RAR-b candidates with {type(scorer).__name__}: give an encoder, a retriever or a spec")


# ------------------------------------------------------------------ scoring


def tie_credit(scores: np.ndarray, candidates: Sequence[str], label: int) -> tuple[float, bool]:
    """(credit, tied): 1/n when the gold text is among n distinct candidate texts sharing the top score
    (expected accuracy under random tie-breaking), else 0; `tied` says whether n > 1."""
    best = float(np.max(scores))
    top = {text for text, s in zip(candidates, scores) if float(s) == best}
    return (1.0 / len(top) if candidates[label] in top else 0.0), len(top) > 1


def _label(description: dict) -> str:
    """A short, file-name-safe name for the scorer (eval.runner's label; an encoder has no faiss index)."""
    from eval.runner import encoder_label, label

    if description.get("kind") == "dense" and "index" not in description:
        return encoder_label(description)
    return label(description)


def evaluate_mcr(
    scorer,
    set_name: str | Path,
    instruction: bool,
    limit: int | None = None,
    *,
    template: str | None = None,
    items: Sequence[MCRItem] | None = None,
) -> Result:
    """Accuracy of `scorer` on one RAR-b MCR set, with or without the task instruction.

    Args:
        scorer: an encoder, a retriever, a retriever spec, or a scorer from `mcr_scorer` (build that once
            to reuse encoded candidates / the pool index across calls).
        set_name: a name from MCR_SETS or a CSV path.
        instruction: prepend each row's instruction to its query, as RAR-b does.
        limit: score only the first `limit` queries (the pool is then theirs alone).
        template: a format string with {instruction} and {query} for models with their own instruction form.
        items: already loaded items of this set (skips reading the file).

    Returns:
        A Result: metrics {"accuracy" (ties at random, the main metric), "accuracy_argmax" (RAR-b's
        first-max rule)}; details: instruction, query_template, tie_rule, tied_queries, num_candidates.
    """
    scorer = mcr_scorer(scorer)
    items = list(items) if items is not None else load_mcr(set_name, limit)
    items = items[:limit] if limit is not None else items
    if not items:
        raise ValueError(f"{set_name}: no queries to score")
    pool = candidate_pool(items)
    position = {text: i for i, text in enumerate(pool)}
    rows = [[position[c] for c in item.candidates] for item in items]
    start = time.perf_counter()
    scores = scorer.score([compose_query(item, instruction, template) for item in items], pool, rows)
    seconds = time.perf_counter() - start
    credits, tied = zip(*(tie_credit(s, item.candidates, item.label) for s, item in zip(scores, items)))
    argmax_hits = [int(np.argmax(s)) == item.label for s, item in zip(scores, items)]
    description = scorer.describe()
    return Result(
        task=TASK, family="RAR-b", dataset=_set_label(set_name), split="test", variant="instr" if instruction else "no instr",
        retriever=description, label=_label(description),
        metrics={"accuracy": float(np.mean(credits)), "accuracy_argmax": float(np.mean(argmax_hits))},
        main_metric="accuracy", num_queries=len(items), search_seconds=seconds,
        details={"instruction": bool(instruction),
                 "query_template": (template or "{instruction} {query}") if instruction else "{query}",
                 "tie_rule": "expected accuracy under random tie-breaking over distinct candidate texts",
                 "tied_queries": int(sum(tied)), "num_candidates": len(pool)},
    )


def evaluate_mcr_sets(
    scorer, sets: Sequence[str] = MCR_SETS, instructions=(False, True), limit: int | None = None, on_record=None,
    root: str | Path | None = None,
) -> list[Result]:
    """Records for every set x instruction setting, sharing one scorer (each set read once from `root`,
    default the shared data); `on_record(record)` is called as each one is done (long runs report as they go)."""
    scorer = mcr_scorer(scorer)
    records = []
    for set_name in sets:
        items = load_mcr(set_name, limit, root)
        for instruction in instructions:
            records.append(evaluate_mcr(scorer, set_name, instruction, items=items))
            if on_record is not None:
                on_record(records[-1])
    return records


def _print_record(r: Result) -> None:
    print(f"{r.label:>14} {r.dataset:>20} inst={r.details['instruction']!s:5} acc={r.metrics['accuracy']:.4f} "
          f"argmax={r.metrics['accuracy_argmax']:.4f} tied={r.details['tied_queries']} ({r.search_seconds:.1f} s)", flush=True)


def format_mcr_table(records: list[Result], metric: str = "accuracy") -> str:
    """Markdown: one row per set (plus the unweighted mean), one column per scorer x instruction setting."""
    columns = list(dict.fromkeys((r.label, r.details["instruction"]) for r in records))
    sets = list(dict.fromkeys(r.dataset for r in records))
    value = {(r.dataset, r.label, r.details["instruction"]): r.metrics[metric] for r in records}
    size = {r.dataset: r.num_queries for r in records}
    head = ["set", "queries", *(f"{name} {'w/ inst' if inst else 'w/o inst'}" for name, inst in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in sets:
        cells = [f"{value[(s, *c)]:.4f}" if (s, *c) in value else "" for c in columns]
        lines.append("| " + " | ".join([s, str(size[s]), *cells]) + " |")
    means = []
    for c in columns:
        vals = [value[(s, *c)] for s in sets if (s, *c) in value]
        means.append(f"{np.mean(vals):.4f}" if len(vals) == len(sets) else "")
    lines.append("| " + " | ".join(["mean", "", *means]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.rarb", description="RAR-b multiple-choice retrieval accuracy")
    parser.add_argument(
        "--scorer", action="append", required=True, help="retriever spec: dense:model=minilm | bm25 | ... (repeatable)"
    )
    parser.add_argument("--sets", nargs="+", default=list(MCR_SETS), help="set names or CSV paths (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="first N queries of each set")
    parser.add_argument("--out", type=Path, default=Path("results/rarb"), help="folder for <label>.json (default: %(default)s)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    everything = []
    for spec in args.scorer:
        records = evaluate_mcr_sets(spec, args.sets, limit=args.limit, on_record=_print_record)
        target = args.out / f"{records[0].label}.json"
        atomic_write(target, json.dumps([r.to_json() for r in records], indent=2))
        everything += records
    buffer = io.StringIO()
    print(format_mcr_table(everything), file=buffer)
    print("\nRAR-b first-max (np.argmax) rule:", file=buffer)
    print(format_mcr_table(everything, "accuracy_argmax"), file=buffer)
    print(buffer.getvalue())


if __name__ == "__main__":
    main()
