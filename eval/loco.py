"""LoCo long-document retrieval: the LoCoV1 tasks, their file layout, and evaluation that says how long
documents were handled (truncated, chunked, or read whole).

LoCoV1 (Saad-Falcon, Fu, Arora, Guha & Re, "Benchmarking and Building Long-Context Retrieval Models with
LoCo and M2-BERT", ICML 2024, arXiv:2402.07440) has 12 tasks, all in one `test` split, scored by nDCG@10.
Its data are two Hugging Face datasets, `hazyresearch/LoCoV1-Queries` (rows `qid`, `query`,
`answer_pids`, `dataset`) and `hazyresearch/LoCoV1-Documents` (rows `pid`, `passage`, `dataset`); the
`dataset` field names the task. HazyResearch/m2's `bert/src/embeddings/create_LoCo.py` turns a task into
BEIR dicts: each answer pid is relevant with grade 1, titles are empty, and documents whose passage is null
are left out together with the queries that need them (QASPER). `load_loco` does the same offline.

    python -m eval.loco --list
    python -m eval.loco --loco ~/data/loco --task qmsum --retriever bm25 --long-doc full
    python -m eval.loco --beir ../shared/data/qmsum --task QMSum --retriever "chunked:inner=dense,window=200,stride=100"
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple

from retrieval.data import Corpus, Dataset, Doc, load_dataset, load_queries
from retrieval.errors import DataError

MAIN_METRIC = "ndcg@10"  # the paper's metric; HazyResearch/m2 bert/loco_eval.py prints NDCG@1..1000 through BEIR
LOCO_SPLIT = "test"  # both Hugging Face datasets hold only this split
HF_QUERIES, HF_DOCUMENTS = "hazyresearch/LoCoV1-Queries", "hazyresearch/LoCoV1-Documents"


class LocoTask(NamedTuple):
    """One LoCoV1 task: `name` is its value of the `dataset` field."""

    name: str
    source: str
    query: str  # what a query is
    document: str  # what a document is


LOCO_TASKS = {
    t.name: t
    for t in [
        LocoTask("summ_screen_fd", "SCROLLS SummScreenFD", "episode summary", "TV episode transcript"),
        LocoTask("gov_report", "SCROLLS GovReport", "report summary", "government report"),
        LocoTask("qmsum", "SCROLLS QMSum", "query-focused meeting summary", "meeting transcript"),
        LocoTask("qasper_title", "QASPER", "paper title", "paper full text"),
        LocoTask("qasper_abstract", "QASPER", "paper abstract", "paper full text"),
        LocoTask("multifieldqa", "LongBench MultiFieldQA-en", "question", "long context"),
        LocoTask("2wikimqa", "LongBench 2WikiMultihopQA", "question", "long context"),
        LocoTask("passage_retrieval", "LongBench PassageRetrieval-en", "passage summary", "long context"),
        LocoTask("courtlistener_HTML", "CourtListener", "query", "court opinion (HTML)"),
        LocoTask("courtlistener_Plain_Text", "CourtListener", "query", "court opinion (plain text)"),
        LocoTask("legal_case_reports", "Legal Case Reports", "query", "case report"),
        LocoTask("stackoverflow", "StackOverflow", "query", "post"),
    ]
}

QMSUM_TASK = "QMSum"  # our BEIR conversion in ../shared/data/qmsum (not LoCo's file; see its PROVENANCE.md)

DOWNLOAD_HINT = (
    "download the two Hugging Face datasets beside each other, e.g.\n"
    f"  huggingface-cli download {HF_QUERIES} --repo-type dataset --local-dir ROOT/LoCoV1-Queries\n"
    f"  huggingface-cli download {HF_DOCUMENTS} --repo-type dataset --local-dir ROOT/LoCoV1-Documents\n"
    "or put per-task files at ROOT/queries/<task>_test.jsonl and ROOT/documents/<task>_test.jsonl "
    "(.jsonl, .jsonl.gz or .parquet), or all tasks in ROOT/queries.jsonl and ROOT/documents.jsonl (or .parquet)"
)


# ---------------------------------------------------------------- files


def _candidates(root: Path, what: str, task: str, split: str) -> list[tuple[Path, bool]]:
    """(path, holds several tasks) in the order they are tried. `what` is "queries" or "documents"."""
    repo = root / ("LoCoV1-Queries" if what == "queries" else "LoCoV1-Documents")
    per_task = [repo / "documents" / f"{task}_{split}.jsonl", repo / f"{task}_{split}.jsonl"]  # the HF repos' layout
    per_task += [root / what / f"{task}_{split}{ext}" for ext in (".jsonl", ".jsonl.gz", ".parquet")]
    combined = [root / f"{what}{ext}" for ext in (".jsonl", ".jsonl.gz", ".parquet")]
    return [(p, False) for p in per_task] + [(p, True) for p in combined]


def loco_file(root: str | Path, what: str, task: str, split: str = LOCO_SPLIT) -> tuple[Path, bool]:
    """The file holding a task's queries or documents, and whether it holds other tasks too.

    Raises FileNotFoundError naming the expected file, the other places looked, and how to download.
    """
    root = Path(root)
    candidates = _candidates(root, what, task, split)
    for path, combined in candidates:
        if path.is_file():
            return path, combined
    looked = "\n".join(f"  {p}" for p, _ in candidates[1:])
    raise FileNotFoundError(
        f"LoCoV1 {what} for task {task!r} not found: expected {candidates[0][0]}\nalso looked for:\n{looked}\n{DOWNLOAD_HINT}"
    )


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line or row number from 1, record) from jsonl(.gz) or parquet."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(path, None, None, "reading parquet needs pyarrow: pip install pyarrow (or convert to jsonl)") from None
        for i, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, record
    else:
        from retrieval.data import jsonl_records  # the project's jsonl reader: file/line errors included

        yield from jsonl_records(path)


def _task_rows(path: Path, task: str, combined: bool) -> Iterator[tuple[int, dict]]:
    """Rows of `task`: a combined file is filtered by `dataset`; a per-task file must hold only `task`."""
    for lineno, record in _rows(path):
        dataset = record.get("dataset", task)
        if dataset == task:
            yield lineno, record
        elif not combined:
            raise DataError(path, lineno, "dataset", f"{dataset!r} in the file of task {task!r}")


def _id(record: dict, field: str, path: Path, lineno: int) -> str:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise DataError(path, lineno, field, f"expected a non-empty string id, got {value!r}")
    return str(value)


def _read_documents(path: Path, task: str, combined: bool) -> tuple[list[Doc], set[str]]:
    """(documents, pids whose passage is null)."""
    docs, null, seen = [], set(), {}
    for lineno, record in _task_rows(path, task, combined):
        pid = _id(record, "pid", path, lineno)
        if pid in seen:
            raise DataError(path, lineno, "pid", f"duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        passage = record.get("passage")
        if passage is None:  # LoCo drops these (QASPER); we count them in a warning
            null.add(pid)
        elif not isinstance(passage, str):
            raise DataError(path, lineno, "passage", f"expected a string, got {type(passage).__name__}")
        else:
            docs.append(Doc(pid, "", passage))
    return docs, null


def _read_queries(path: Path, task: str, combined: bool) -> Iterator[tuple[int, str, str, list[str]]]:
    seen: dict[str, int] = {}
    for lineno, record in _task_rows(path, task, combined):
        qid = _id(record, "qid", path, lineno)
        if qid in seen:
            raise DataError(path, lineno, "qid", f"duplicate id {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        query = record.get("query")
        if not isinstance(query, str):
            raise DataError(path, lineno, "query", f"expected a string, got {type(query).__name__}")
        pids = record.get("answer_pids")
        if isinstance(pids, (str, int)):
            pids = [pids]
        if not isinstance(pids, list) or not pids:
            raise DataError(path, lineno, "answer_pids", f"expected a non-empty list of document ids, got {pids!r}")
        yield lineno, qid, query, [str(p) for p in pids]


def load_loco(root: str | Path, task: str, split: str = LOCO_SPLIT, *, drop_missing: bool = False) -> Dataset:
    """One LoCoV1 task as a dengen Dataset (corpus, queries, qrels with grade 1 per answer pid).

    Args:
        root: folder with the downloaded files (see `DOWNLOAD_HINT` and docs/loco.md).
        task: a name in `LOCO_TASKS` ("qmsum", "gov_report", ...).
        split: "test", the only split LoCoV1 has.
        drop_missing: drop (and count in a warning) answer pids absent from the documents instead of failing.

    Documents with a null passage are left out with the judgements that name them, and queries left
    without any judgement are dropped, as LoCo's own loader does; one warning counts both.
    """
    if task not in LOCO_TASKS:
        raise ValueError(f"unknown LoCoV1 task {task!r}: choose one of {', '.join(LOCO_TASKS)}")
    doc_path, doc_combined = loco_file(root, "documents", task, split)
    query_path, query_combined = loco_file(root, "queries", task, split)
    docs, null = _read_documents(doc_path, task, doc_combined)
    if not docs:
        raise DataError(doc_path, None, "dataset", f"no documents of task {task!r}")
    corpus = Corpus(docs, source=str(doc_path))
    queries, qrels, dropped = {}, {}, {"null passage": 0, "missing": 0, "queries": 0}
    for lineno, qid, query, pids in _read_queries(query_path, task, query_combined):
        judged = {}
        for pid in pids:
            if pid in corpus:
                judged[pid] = 1
            elif pid in null:
                dropped["null passage"] += 1
            elif drop_missing:
                dropped["missing"] += 1
            else:
                raise DataError(query_path, lineno, "answer_pids", f"{pid!r} is not in {doc_path} (drop_missing=True drops such ids)")
        if judged:
            queries[qid], qrels[qid] = query, judged
        else:
            dropped["queries"] += 1
    if not queries:
        raise DataError(query_path, None, "dataset", f"no judged queries of task {task!r}")
    if dropped["null passage"] or dropped["missing"] or null:
        warnings.warn(
            f"LoCoV1 {task}: {len(null)} documents with a null passage left out; dropped {dropped['null passage']} "
            f"judgements naming them, {dropped['missing']} naming absent documents, and {dropped['queries']} queries left without any",
            stacklevel=2,
        )
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name=task, split=split)


def load_qmsum(folder: str | Path, split: str = "test", *, answer_as_query: bool = False) -> Dataset:
    """Our QMSum long-document task (BEIR layout): 232 meetings, one relevant meeting per query.

    Args:
        folder: ../shared/data/qmsum (corpus.jsonl.gz, queries.jsonl, qrels/{train,dev,test}.tsv).
        split: "train", "dev" or "test".
        answer_as_query: use the gold query-focused summaries as queries (LongEmbed's convention).
    """
    dataset = load_dataset(folder, split)
    dataset.name = QMSUM_TASK
    if answer_as_query:
        summaries = load_queries(Path(folder) / "queries-answer-as-query.jsonl")
        dataset.queries = {qid: summaries[qid] for qid in dataset.queries}
        dataset.name = f"{QMSUM_TASK}-answer-as-query"
    return dataset


# ---------------------------------------------------------------- evaluation


def _truncate(retriever, dataset: Dataset, max_words: int | None) -> tuple[Dataset, dict]:
    """Cut documents to `max_words` words and/or report the encoder's token cut; one warning each."""
    from retrieval.longdoc import encoder_of, encoder_truncation, truncate_corpus

    encoder = encoder_of(retriever)
    if encoder is None and max_words is None:
        raise ValueError(f"a {retriever.kind} retriever reads whole documents: give max_words=N to truncate, or use long_doc='full'")
    if max_words is not None and retriever.doc_count:
        raise ValueError("truncating to max_words needs a new (not yet indexed) retriever")
    info: dict = {"mode": "truncate", "max_words": max_words, "max_tokens": None}
    if max_words is not None:
        corpus, stats = truncate_corpus(dataset.corpus, max_words)
        dataset = Dataset(corpus, dataset.queries, dataset.qrels, dataset.name, dataset.split)
        info["words"] = stats.as_dict()
    if encoder is not None:
        texts = [d.full_text for d in dataset.corpus]
        stats = encoder_truncation(encoder, texts, prefix=retriever.config.get("doc_prefix", ""))
        info.update(max_tokens=stats.limit, tokens=stats.as_dict())
    return dataset, info


def long_doc_label(base: str, info: dict) -> str:
    """A file-name-safe label that says how long documents were handled."""
    if info["mode"] == "chunk":  # eval.runner.label names a chunked retriever's windows, not a situated one's
        return base + (f"-{info['window']}x{info['stride']}{info['unit'][0]}-ctx{info['context_tokens']}t"
                       if info.get("context_tokens") else "")
    if info["mode"] == "truncate":
        return base + (f"-trunc{info['max_words']}w" if info["max_words"] else "") + (f"-trunc{info['max_tokens']}t" if info["max_tokens"] else "")
    return f"{base}-full"


def evaluate_long(
    retriever,
    dataset: Dataset,
    *,
    long_doc: str | None = None,
    max_words: int | None = None,
    task: str | None = None,
    ks=(10, 100),
    latency_sample: int = 100,
):
    """`eval.runner.evaluate` plus how long documents were handled. Returns (record, run).

    Args:
        retriever: any retriever; one that chunks documents itself (`chunks_documents`: chunked, situated) for long_doc="chunk".
        dataset: the task (from `load_loco` or `load_qmsum`).
        long_doc: "truncate" (cut to max_words and/or the encoder's token limit, one warning saying how
            much), "chunk" (a ChunkedRetriever's windows or a SituatedRetriever's chunks, max-pooled) or
            "full" (whole documents, for retrievers without a length limit such as BM25). Default: "chunk"
            for a retriever that chunks documents itself, else "truncate".
        max_words: for "truncate", keep each document's first max_words words.
        task: the task name recorded (default: the dataset's name).
        ks, latency_sample: as in `eval.runner.evaluate`.

    The result's main metric is nDCG@10, its variant says how documents were read and details["long_doc"]
    has the mode and limits and how much was cut, or window/stride/unit and the chunk count.
    """
    from eval.runner import evaluate

    mode = long_doc or ("chunk" if retriever.chunks_documents else "truncate")
    if (mode == "chunk") != retriever.chunks_documents:
        raise ValueError(f"long_doc={mode!r} with a {retriever.kind} retriever: chunk needs a retriever that chunks "
                         "documents itself (chunked:inner=dense,window=200,stride=100, or situated), and such a one "
                         "is always 'chunk'")
    if retriever.config.get("returns", "documents") != "documents":  # situated can return its chunks instead
        raise ValueError(f"a {retriever.kind} retriever on document-level qrels needs returns=documents")
    if mode == "truncate":
        dataset, info = _truncate(retriever, dataset, max_words)
    elif mode == "full":
        from retrieval.longdoc import encoder_of

        if encoder_of(retriever) is not None:
            raise ValueError("a dense encoder cannot read whole documents: use long_doc='truncate' or 'chunk'")
        info = {"mode": "full"}
    elif mode == "chunk":
        info = {"mode": "chunk", **{k: retriever.config[k] for k in ("unit", "window", "stride", "context_tokens")
                                    if k in retriever.config}}
    else:
        raise ValueError(f"long_doc must be 'truncate', 'chunk' or 'full', got {mode!r}")
    record, run = evaluate(retriever, dataset, ks=ks, latency_sample=latency_sample)
    if mode == "chunk":
        info["chunks"] = retriever.chunk_count
    record = dataclasses.replace(
        record, task=task or dataset.name, family="long documents",
        main_metric=MAIN_METRIC if MAIN_METRIC in record.metrics else record.main_metric,
        variant=long_doc_variant(info), label=long_doc_label(record.label, info), details={"long_doc": info},
    )
    return record, run


def long_doc_variant(info: dict) -> str:
    """The report's name for how long documents were read: "full", "truncate 256t", "chunk 150x150w"."""
    if info["mode"] == "chunk":
        situated = f"+{info['context_tokens']}t context" if info.get("context_tokens") else ""
        return f"chunk {info['window']}x{info['stride']}{info['unit'][0]}{situated}"
    if info["mode"] == "truncate":
        limits = [f"{info[k]}{unit}" for k, unit in (("max_words", "w"), ("max_tokens", "t")) if info.get(k)]
        return "truncate " + ",".join(limits)
    return info["mode"]


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.loco", description="Long-document retrieval: LoCoV1 tasks and QMSum.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--loco", type=Path, help="folder with the LoCoV1 files (see docs/loco.md)")
    source.add_argument("--beir", type=Path, help="a BEIR folder, e.g. ../shared/data/qmsum")
    parser.add_argument("--list", action="store_true", help="print the LoCoV1 tasks and exit")
    parser.add_argument("--task", help="LoCoV1 task name with --loco; the recorded name with --beir (default: QMSum)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--retriever", default="bm25", help="a retriever spec (see retrieval/spec.py)")
    parser.add_argument("--long-doc", choices=("truncate", "chunk", "full"), help="default: chunk for chunked, else truncate")
    parser.add_argument("--max-words", type=int, help="truncate: words kept per document")
    parser.add_argument("--answer-as-query", action="store_true", help="QMSum: the gold summaries as queries")
    parser.add_argument("--k", default="10,100", help="metric cut-offs")
    parser.add_argument("--out", type=Path, default=Path("results/loco"), help="folder for the JSON record and TREC run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for t in LOCO_TASKS.values():
            print(f"{t.name:26} {t.source:32} query: {t.query}; document: {t.document}")
        return 0
    if args.loco:
        dataset = load_loco(args.loco, args.task or "qmsum", args.split)
    elif args.beir:
        dataset = load_qmsum(args.beir, args.split, answer_as_query=args.answer_as_query)
        if args.task:
            dataset.name = args.task
    else:
        build_parser().error("give --loco ROOT or --beir FOLDER (or --list)")
    from retrieval.spec import parse_spec

    ks = tuple(int(k) for k in args.k.split(","))
    record, run = evaluate_long(parse_spec(args.retriever), dataset, long_doc=args.long_doc, max_words=args.max_words, ks=ks)
    stem = f"{record.task}-{record.split}-{record.label}"
    record.write(args.out, stem)
    run.to_trec(args.out / f"{stem}.trec", tag=record.label)
    print(f"{record.task} {record.split} {record.label}: {MAIN_METRIC} {record.score:.4f} "
          f"-> {args.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
