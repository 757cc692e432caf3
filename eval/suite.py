"""Benchmark suites: every benchmark runnable offline, for one retriever spec, appended to a results folder.

Each task takes a `SuiteRun` (the retriever spec, the data folder, the retrievers indexed so far; a new
retriever is built per dataset, except that mteb reuses the SciFact index) and returns result records; a task that cannot run for this retriever or without missing data is skipped
with the reason printed. Records are written as soon as each task finishes, so an interrupted suite
keeps what it finished.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eval.record import Result
from eval.runner import evaluate, label, safe_name
from retrieval.api import Retriever
from retrieval.data import shared_data
from retrieval.longdoc import encoder_of
from retrieval.spec import parse_spec


class Skip(Exception):
    """This task does not apply to this retriever, or its data is missing."""


@dataclass
class SuiteRun:
    """What every task gets: the retriever spec, the data folder, and the retrievers already indexed in
    this run (by data folder), so a later task on the same data (mteb's SciFact) does not index it again."""

    spec: str | dict
    root: Path
    built: dict[str, Retriever] = field(default_factory=dict)
    sample: int | None = None  # score a seeded sample of this many queries per retrieval data set (all: None)
    last: Retriever | None = None  # the retriever a task asked for last (a leaderboard row's profile reads it)

    def retriever(self, data: str | None = None) -> Retriever:
        """The retriever indexed on `data` earlier in this run, else a new one from the spec."""
        self.last = self.built.get(data) or parse_spec(self.spec)
        return self.last

    def encoder(self, why: str):
        """The retriever's sentence encoder; a retriever without one skips the task (`why` says for what)."""
        retriever = self.retriever("scifact")
        encoder = encoder_of(retriever)
        if encoder is None:
            raise Skip(f"{retriever.kind} has no text encoder to {why}")
        return encoder


def sampled(dataset, n: int | None, seed: int = 13):
    """`dataset` with a seeded sample of `n` of its queries (the whole dataset when n is None)."""
    from training.generative_eval import sample_queries

    queries = sample_queries(dataset.queries, n, seed)
    return dataclasses.replace(dataset, queries=queries, qrels={q: dataset.qrels[q] for q in queries})


def retrieval_task(folder: str | Path, task: str | None = None, ks=(10, 100), main_metric: str = "ndcg@10"):
    """A BEIR-layout folder's test split (under the data root unless absolute), scored by dengen's runner."""
    def run(ctx: SuiteRun) -> list[Result]:
        from retrieval.data import load_dataset

        path = ctx.root / folder
        if not path.is_dir():
            raise Skip(f"no data set at {path}")
        retriever = ctx.retriever()
        dataset = sampled(load_dataset(path, "test"), ctx.sample)
        record, _ = evaluate(retriever, dataset, ks, task=task or dataset.name, main_metric=main_metric)
        ctx.built[str(folder)] = retriever
        return [record]

    return run


def _squad_pages(ctx: SuiteRun) -> list[Result]:
    """SQuAD v1.1 dev questions against its 48 Wikipedia pages, in KILT's format and scoring (R-precision),
    as CorpusBrain's page-retrieval setting: a retriever finds the page a question was written on. Only the
    half of the questions that the SQuAD recipes (CorpusBrain, UGR) hold out is scored, so no trained row has
    seen a question it is scored on."""
    from eval.kilt import corpus_pages, kilt_retrieval_scores, run_to_kilt
    from retrieval.data import Dataset, load_corpus, load_qrels, load_queries
    from training.corpusbrain import DEFAULTS, kilt_gold
    from training.generative_eval import split_queries

    folder = ctx.root / "squad-v1.1-dev"
    if not (folder / "pages.jsonl.gz").is_file():
        raise Skip(f"no SQuAD pages at {folder / 'pages.jsonl.gz'}")
    corpus = load_corpus(folder / "pages.jsonl.gz")
    queries = load_queries(folder, "test-page")
    qrels = load_qrels(folder, "test-page", corpus=corpus, queries=queries)
    _, held_out = split_queries(qrels, DEFAULTS["finetune_fraction"], DEFAULTS["seed"])
    dataset = sampled(Dataset(corpus=corpus, queries={q: queries[q] for q in held_out}, qrels={q: qrels[q] for q in held_out},
                              name="squad-v1.1-dev pages", split="test-page"), ctx.sample)
    retriever = ctx.retriever()
    record, run = evaluate(retriever, dataset, (1, 10, 100), task="KILT squad pages", family="KILT", main_metric="ndcg@10")
    ctx.built["squad-pages"] = retriever
    gold = kilt_gold(dataset, dataset.queries)
    guess = run_to_kilt(run, dataset.queries, corpus_pages(corpus, page_id=lambda doc: doc.id), k=10)
    metrics = {**record.metrics, **kilt_retrieval_scores(gold, guess, ks=(5, 10))}
    return [dataclasses.replace(record, metrics=metrics, main_metric="r-precision")]


def _limit(ctx: SuiteRun) -> list[Result]:
    from eval.limit import KS, load_limit, main_metric

    records = []
    for folder in ("limit-small", "limit"):
        try:
            dataset = load_limit(ctx.root / folder)
        except FileNotFoundError as err:
            print(f"skip LIMIT ({folder}): {err}")
            continue
        retriever = ctx.retriever()
        record, _ = evaluate(retriever, sampled(dataset, ctx.sample), KS, task="LIMIT", family="LIMIT", main_metric=main_metric(dataset))
        ctx.built.setdefault(folder, retriever)
        records.append(record)
    return records


QMSUM_CHUNKS = {"window": 150, "stride": 150, "unit": "words"}  # ~200 MiniLM tokens: under its 256 limit


def _qmsum(ctx: SuiteRun) -> list[Result]:
    """QMSum two ways: documents as the retriever takes them (a dense encoder cuts them at its token
    limit, with a warning saying how much; BM25 reads them whole) and chunked with max-pooled windows.
    A retriever that chunks documents itself (chunked, situated) is scored once, on its own chunks:
    150-word windows around a situated retriever would cut its chunks' context at the window's edge."""
    from eval.loco import evaluate_long, load_qmsum

    dataset = load_qmsum(ctx.root / "qmsum", "test")
    retriever = ctx.retriever()
    if retriever.chunks_documents:
        return [evaluate_long(retriever, dataset)[0]]
    chunked = parse_spec({"kind": "chunked", "inner": retriever.describe(), **QMSUM_CHUNKS})
    if any(encoder_of(m) for m in getattr(retriever, "members", [])):
        print(f"QMSum: only chunked for {retriever.kind}: its dense members would cut whole documents silently")
        return [evaluate_long(chunked, dataset)[0]]
    as_is, _ = evaluate_long(retriever, dataset, long_doc="truncate" if encoder_of(retriever) else "full")
    return [as_is, evaluate_long(chunked, dataset)[0]]


def _rarb(ctx: SuiteRun) -> list[Result]:
    from eval.rarb import MCR_SETS, evaluate_mcr_sets, mcr_path

    folder = ctx.root / "rar-b-mcr"
    sets = []
    for name in MCR_SETS:
        try:
            sets.append(mcr_path(name, folder))
        except FileNotFoundError as err:
            print(f"skip RAR-b {name}: {err}")
    # any other set file in the folder (e.g. TempReason-l3-pure-test.csv) is scored too, under its file name
    sets += sorted(p for p in folder.glob("*.csv*") if p.name.endswith((".csv", ".csv.gz")) and p not in sets)
    if not sets:
        raise Skip(f"no RAR-b MCR files in {folder}")
    return evaluate_mcr_sets(ctx.retriever(), sets, root=folder)


STS_TASKS = (("stsbenchmark", "STSBenchmark"), ("sick", "SICK-R"))  # our data folder, MTEB's task name


def _sts(ctx: SuiteRun) -> list[Result]:
    from eval.mteb_tasks import MTEB_SPLITS
    from eval.sts import evaluate_sts

    encoder = ctx.encoder("score sentence pairs with")
    return [evaluate_sts(encoder, name, MTEB_SPLITS[task], folder=ctx.root / name) for name, task in STS_TASKS]


KILT_SOURCE = ("kilt/kilt_knowledgesource.json", "kilt/kilt_knowledgesource.jsonl.gz")


def _kilt(ctx: SuiteRun) -> list[Result]:
    """Page retrieval over KILT's Wikipedia for every gold file in kilt-dev/, scored as KILT does."""
    from eval.kilt import KNOWLEDGE_SOURCE_URL, evaluate_kilt, load_knowledge_source

    root = ctx.root
    source = next((root / name for name in KILT_SOURCE if (root / name).is_file()), None)
    if source is None:
        raise Skip(f"KILT needs its Wikipedia knowledge source at {root / KILT_SOURCE[0]} "
                   f"(download {KNOWLEDGE_SOURCE_URL}, 35 GiB)")
    golds = sorted((root / "kilt-dev").glob("*.jsonl*"))
    if not golds:
        raise Skip(f"no KILT gold files in {root / 'kilt-dev'}")
    corpus, retriever = load_knowledge_source(source), ctx.retriever()
    return [evaluate_kilt(retriever, gold, corpus)[0] for gold in golds]


def _mteb(ctx: SuiteRun) -> list[Result]:
    """SciFact through mteb.evaluate with the retriever behind mteb's search protocol (the one the
    scifact task indexed, when it ran), and STS-B and SICK-R through mteb for a retriever with an encoder:
    mteb's own numbers beside dengen's."""
    from eval.mteb_adapter import MtebEncoder, MtebRetriever, mteb_record, mteb_scores
    from eval.mteb_tasks import MTEB_SPLITS, local_sts_task, scifact_task

    retriever = ctx.retriever("scifact")
    scores = mteb_scores(MtebRetriever(retriever), scifact_task(ctx.root / "scifact", k_values=(10, 100)))
    records = [mteb_record(retriever, "scifact", "test", scores, {"ndcg@10": "ndcg_at_10", "recall@100": "recall_at_100"})]
    encoder = encoder_of(retriever)
    for name, task in STS_TASKS if encoder is not None else ():
        scores = mteb_scores(MtebEncoder(encoder), local_sts_task(name, MTEB_SPLITS[task], ctx.root / name))
        records.append(mteb_record(retriever, name, MTEB_SPLITS[task], scores, {"cosine_spearman": "cosine_spearman"}))
    return records


TASKS: dict[str, Callable[[SuiteRun], list[Result]]] = {
    "scifact": retrieval_task("scifact", "SciFact"),
    "limit": _limit,
    "sts": _sts,
    "rar-b": _rarb,
    "qmsum": _qmsum,
    "mteb": _mteb,
    "kilt": _kilt,
    "squad-pages": _squad_pages,
}
# the folders under the data root each task reads (a leaderboard cell is keyed by their contents)
# tasks whose queries or scoring changed after boards cached their cells: the revision joins the cell key
TASK_REVISIONS = {"squad-pages": "held-out-half"}
TASK_DATA = {"scifact": ["scifact"], "limit": ["limit-small", "limit"], "sts": ["stsbenchmark", "sick"],
             "rar-b": ["rar-b-mcr"], "qmsum": ["qmsum"], "mteb": ["scifact", "stsbenchmark", "sick"],
             "kilt": ["kilt", "kilt-dev"], "squad-pages": ["squad-v1.1-dev"]}
SUITES = {"default": list(TASKS)}


def run_suite(spec: str, out: str | Path, suite: str = "default", data_root: str | Path | None = None,
              tasks: list[str] | None = None, name: str | None = None) -> list[Result]:
    """Run the suite's tasks (or `tasks`) for `spec`; write each record to `out` and return them all.

    Every record is labelled `name` (default: the spec's configuration label), so one retriever is one
    row of the report whatever each task scored it with; what varies within a task (long documents
    truncated or chunked, instruction or not, scored by mteb) shows in the report's column name.
    """
    names = tasks or SUITES[suite]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    ctx = SuiteRun(spec, Path(data_root) if data_root else shared_data())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    row = name or label(parse_spec(spec).describe())
    records = []
    for task in names:
        start = time.perf_counter()
        try:
            new = TASKS[task](ctx)
        except Skip as why:
            print(f"skip {task}: {why}")
            continue
        new = [dataclasses.replace(r, label=row, details={**r.details, "suite": suite}) for r in new]
        for record in new:
            record.write(out, safe_name(f"{record.column}-{record.split}-{record.label}"))
        records += new
        print(f"{task}: {len(new)} result(s) in {time.perf_counter() - start:.0f} s")
    return records
