"""MTEB tasks over local files, so `mteb.evaluate` runs offline on ../shared/data.

mteb 2.x reads a task's data in `load_data`; these tasks override it to fill `self.dataset` from local
files in the layout mteb's own loaders produce, and otherwise behave as mteb's tasks (same evaluators,
same scores). The named tasks reuse the metadata of mteb's registered task of that name (main score,
prompt, license, citation) with the dataset path pointing at the local folder.

- `local_retrieval_task(folder)`: any BEIR-format folder (read with `retrieval.data.load_dataset`).
- `scifact_task()`: MTEB SciFact (test, nDCG@10).
- `stsbenchmark_task()`: MTEB STSBenchmark (test, cosine Spearman).
- `sickr_task()`: MTEB SICK-R (all 9,927 pairs, which MTEB calls its "test" split).

Example:
    >>> import mteb
    >>> from eval.mteb_adapter import MtebRetriever
    >>> from retrieval import build_retriever
    >>> result = mteb.evaluate(MtebRetriever(build_retriever("bm25")), scifact_task(), cache=None)
    >>> result.task_results[0].get_score()      # nDCG@10
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from eval.sts import STS_SETS, load_sts_pairs, sts_set
from retrieval.data import shared_data

# MTEB's own splits for its tasks: naming another split (or a slice) renames the task, so a partial
# run can never be mistaken for the benchmark figure
MTEB_SPLITS = {"SciFact": "test", "STSBenchmark": "test", "SICK-R": "all"}


def offline_mteb():
    """Import mteb with the Hugging Face hub switched off (no hub here; local data needs none)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import mteb

    return mteb


@functools.cache
def _base_classes() -> tuple[type, type]:
    """The two local task classes, defined on first use so importing this module does not import mteb."""
    offline_mteb()
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    from retrieval.data import load_dataset

    class LocalRetrievalTask(AbsTaskRetrieval):
        """A retrieval task whose corpus, queries and qrels come from a BEIR folder.

        Subclasses (made by `local_retrieval_task`) set `metadata`, `source` (the folder), `source_split`
        and `drop_missing` as class attributes: mteb's `unload_data` drops instance metadata.
        """

        source: Path
        source_split: str = "test"
        drop_missing: bool = False
        # k_values (mteb's cut-offs; the search depth is the largest) may also be set per subclass

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            if self.data_loaded:
                return
            data = load_dataset(self.source, self.source_split, drop_missing=self.drop_missing)
            # {subset: {split: RetrievalSplitData}}, what mteb's RetrievalDatasetLoader returns
            corpus = Dataset.from_dict({
                "id": [d.id for d in data.corpus],
                "title": [d.title for d in data.corpus],
                "text": [d.text for d in data.corpus],
            })
            queries = Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())})
            split = {"corpus": corpus, "queries": queries, "relevant_docs": data.qrels, "top_ranked": None}
            self.dataset = {"default": {self.metadata.eval_splits[0]: split}}
            self.data_loaded = True

    class LocalSTSTask(AbsTaskSTS):
        """An STS task whose pairs come from `eval.sts.load_sts_pairs`.

        Subclasses (made by `local_sts_task`) set `metadata`, `sts_name`, `source_split`, `folder`,
        `limit`, `min_score` and `max_score` as class attributes.
        """

        sts_name: str
        source_split: str = "test"
        folder: Path | None = None
        limit: int | None = None

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            if self.data_loaded:
                return
            pairs = load_sts_pairs(self.sts_name, self.source_split, self.folder)[: self.limit]
            split = Dataset.from_dict({
                "sentence1": [p.sentence1 for p in pairs],
                "sentence2": [p.sentence2 for p in pairs],
                "score": [p.score for p in pairs],
            })
            # {split: Dataset}, what datasets.load_dataset gives mteb for a monolingual STS task
            self.dataset = DatasetDict({self.metadata.eval_splits[0]: split})
            self.data_loaded = True

    return LocalRetrievalTask, LocalSTSTask


def _task_class(base: type, metadata, **attributes) -> type:
    """A subclass of `base` with its metadata and data source as class attributes."""
    safe = "".join(c if c.isalnum() else "_" for c in metadata.name)
    return type(f"Local_{safe}", (base,), {"metadata": metadata, "__module__": __name__, **attributes})


def _variant_name(name: str, split: str, limit: int | None) -> str:
    """MTEB's task name for MTEB's own data, otherwise one that says which split / slice it is."""
    if split != MTEB_SPLITS.get(name, split):
        name = f"{name}-{split}"
    return f"{name}-first{limit}" if limit else name


def _mteb_metadata(name: str, path: Path, eval_split: str, task_name: str, note: str = ""):
    """mteb's registered metadata for task `name`, re-pointed at local data."""
    mteb = offline_mteb()
    metadata = mteb.get_task(name).metadata
    return metadata.model_copy(update={
        "name": task_name,
        "dataset": {"path": str(path), "revision": "local"},
        "eval_splits": [eval_split],
        "description": metadata.description + (f" Local copy: {path}." if not note else f" {note}"),
        "superseded_by": None,  # we run this exact version on purpose; no warning each run
    })


def local_retrieval_task(
    folder: str | Path,
    split: str = "test",
    name: str | None = None,
    *,
    main_score: str = "ndcg_at_10",
    languages: tuple[str, ...] = ("eng-Latn",),
    k_values: tuple[int, ...] | None = None,
    drop_missing: bool = False,
    metadata=None,
):
    """An mteb retrieval task over any BEIR-format folder (corpus.jsonl[.gz], queries, qrels/<split>.tsv).

    Args:
        folder: the data set folder; read with `retrieval.data.load_dataset`, so every layout it reads works.
        split: the qrels split to score (and the task's eval split).
        name: the task name (default: the folder's name).
        main_score: mteb's main score key ("ndcg_at_10", "recall_at_100", ...).
        languages: ISO 639-3 + script codes for the metadata.
        k_values: mteb's metric cut-offs (default mteb's 1, 3, 5, 10, 20, 100, 1000); the largest is the
            depth each query is searched to, so (1, 3, 5, 10, 100) makes a Lucene run several times faster
            with nDCG@10 unchanged. 1 is always added (mteb reports recall@1 as "accuracy").
        drop_missing: drop qrels lines naming unknown queries/documents instead of failing.
        metadata: a ready `TaskMetadata` to use instead of the generic one (the named tasks pass mteb's).

    Returns:
        An `AbsTaskRetrieval` instance for `mteb.evaluate(model, task, cache=None)`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a dataset folder")
    if metadata is None:
        offline_mteb()
        from mteb.abstasks.task_metadata import TaskMetadata

        metadata = TaskMetadata(
            name=name or folder.name,
            description=f"BEIR-format retrieval data read from {folder} (split {split}).",
            dataset={"path": str(folder), "revision": "local"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=list(languages),
            main_score=main_score,
        )
    base, _ = _base_classes()
    attributes = {"source": folder, "source_split": split, "drop_missing": drop_missing}
    if k_values:
        attributes["k_values"] = tuple(sorted({1, *map(int, k_values)}))
    return _task_class(base, metadata, **attributes)()


def scifact_task(folder: str | Path | None = None, split: str = "test", k_values: tuple[int, ...] | None = None):
    """MTEB SciFact (BEIR SciFact; nDCG@10) over the local copy in ../shared/data/scifact.

    Args:
        folder: the BEIR folder (default: ../shared/data/scifact).
        split: "test" (MTEB's); "train" (809 queries) reads the train add-on files.
        k_values: mteb's cut-offs, see `local_retrieval_task`.
    """
    folder = Path(folder) if folder else shared_data("scifact")
    metadata = _mteb_metadata("SciFact", folder, split, _variant_name("SciFact", split, None))
    return local_retrieval_task(folder, split, k_values=k_values, metadata=metadata)


def local_sts_task(name: str, split: str = "test", folder: str | Path | None = None, limit: int | None = None):
    """An mteb STS task over pairs from `eval.sts.load_sts_pairs`, with mteb's metadata for that set.

    Args:
        name: "stsbenchmark" or "sick" (or their MTEB names "STSBenchmark", "SICK-R").
        split: see `load_sts_pairs`; sick "all" is what MTEB's SICK-R scores (and names "test").
        folder: the data set folder (default: ../shared/data/<name>).
        limit: only the first `limit` pairs (the task is then renamed "<name>-first<limit>").
    """
    key = sts_set(name)
    mteb_name = STS_SETS[key][2]
    low, high = STS_SETS[key][3]
    path = Path(folder) if folder else shared_data(STS_SETS[key][0])
    eval_split = "test" if split == "all" else split
    task_name = _variant_name(mteb_name, split, limit)
    note = f"Local copy: {path}, split {split}" + (f", first {limit} pairs." if limit else ".")
    metadata = _mteb_metadata(mteb_name, path, eval_split, task_name, note)
    _, base = _base_classes()
    return _task_class(
        base, metadata, sts_name=key, source_split=split, folder=folder, limit=limit, min_score=low, max_score=high,
    )()


def stsbenchmark_task(split: str = "test", folder: str | Path | None = None, limit: int | None = None):
    """MTEB STSBenchmark (STS-B 2017 test, 1,379 pairs, cosine Spearman) over ../shared/data/stsbenchmark."""
    return local_sts_task("stsbenchmark", split, folder, limit)


def sickr_task(split: str = "all", folder: str | Path | None = None, limit: int | None = None):
    """MTEB SICK-R (all 9,927 SICK pairs, relatedness, cosine Spearman) over ../shared/data/sick."""
    return local_sts_task("sick", split, folder, limit)
