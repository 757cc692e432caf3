"""UGR's training data: unit corpora at four granularities and prompt-tagged SEAL examples mixed across them.

UGR (Chen et al., SIGIR 2023, arXiv 2304.14856) trains one key model on several retrieval tasks at
once, each query carrying its task's prompt. Our granularities, from the shared data:

| name        | units                                  | prompt task | ids                    | splits        |
|-------------|----------------------------------------|-------------|------------------------|---------------|
| "page"      | 48 SQuAD v1.1 dev Wikipedia pages      | document    | page id                | test          |
| "paragraph" | 2,067 paragraphs of those pages        | passage     | `Page#pN`              | test          |
| "document"  | 5,183 SciFact abstracts (BEIR)         | document    | doc id                 | train, test   |
| "sentence"  | 45,952 SciFact abstract sentences      | sentence    | `docid#sN` (0-based N) | train, test   |

Sentence qrels come from the claims' rationale sentences (scifact-claims: claims_train -> "train",
claims_dev -> "test", as BEIR SciFact's test split is the dev claims); claims without evidence have no
relevant sentence and are left out (BEIR keeps them, judged by their cited abstract). A sentence unit
keeps its abstract's title, as KILT passages keep their page's title in SEAL.

Examples are SEAL's supervised ones (`training.seal.supervised_examples`: "q || body" -> spans of the
relevant unit drawn by overlap with the query, "q || title" -> the title), with every source a
`TaskSource` tagged with its granularity so that `KeyModel` applies that task's prompt.
Mixing (`multitask_examples`): UGR trains on the union of its tasks' data ("a heterogeneous set of
retrieval corpora ... in a supervised and multi-task fashion"); the paper's exact sampling could not be
read, so "proportional" (the union, shuffled: each task in proportion to its data) is the default and
"uniform" (every task resampled to the size of the largest, with replacement) is the alternative.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field

from retrieval.data import Corpus, Dataset, Doc, load_corpus, load_dataset, load_qrels, load_queries, shared_data
from retrieval.generative.prompts import TaskSource, task_of

UNITS = ("page", "paragraph", "document", "sentence")
SCIFACT_CLAIMS = {"train": "claims_train.jsonl.gz", "test": "claims_dev.jsonl.gz"}


@dataclass
class GranularityCorpus:
    """One granularity's units and, per split, the queries with relevant units and their qrels."""

    name: str
    corpus: Corpus
    splits: dict[str, tuple[dict[str, str], dict[str, dict[str, int]]]] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The prompt task of these units ("paragraph" -> "passage")."""
        return task_of(self.name)

    def split(self, split: str = "test") -> Dataset:
        if split not in self.splits:
            raise ValueError(f"granularity {self.name!r} has no {split!r} split; it has {', '.join(self.splits)}")
        queries, qrels = self.splits[split]
        return Dataset(corpus=self.corpus, queries=queries, qrels=qrels, name=f"ugr-{self.name}", split=split)


def granularity_corpus(name: str, data=None) -> GranularityCorpus:
    """The units of one granularity ("page", "paragraph", "document", "sentence") with their splits.

    `data`: the shared data folder (default `retrieval.data.shared_data()`)."""
    from pathlib import Path

    root = Path(data) if data is not None else shared_data()
    if name == "page":
        folder = root / "squad-v1.1-dev"
        corpus = load_corpus(folder / "pages.jsonl.gz")
        queries = load_queries(folder / "queries.jsonl")
        qrels = load_qrels(folder / "qrels" / "test-page.tsv", corpus=corpus, queries=queries)
        return GranularityCorpus(name, corpus, {"test": ({q: queries[q] for q in qrels}, qrels)})
    if name == "paragraph":
        test = load_dataset(root / "squad-v1.1-dev", "test")
        return GranularityCorpus(name, test.corpus, {"test": (test.queries, test.qrels)})
    if name == "document":
        splits = {}
        for split in ("train", "test"):
            dataset = load_dataset(root / "scifact", split)
            splits[split] = (dataset.queries, dataset.qrels)
        return GranularityCorpus(name, dataset.corpus, splits)
    if name == "sentence":
        folder = root / "scifact-claims"
        corpus = sentence_corpus(folder / "corpus-sentences.jsonl.gz")
        return GranularityCorpus(name, corpus, {s: claim_sentence_qrels(folder / f, corpus)
                                                for s, f in SCIFACT_CLAIMS.items()})
    raise ValueError(f"unknown granularity {name!r}: choose one of {', '.join(UNITS)}")


def sentence_corpus(path) -> Corpus:
    """One unit per abstract sentence, id `docid#sN`, text stripped, the abstract's title kept."""
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, 1):
            record = json.loads(line)
            try:
                doc_id, title, sentences = str(record["doc_id"]), record["title"].strip(), record["abstract"]
            except KeyError as missing:
                raise ValueError(f"{path}:{lineno}: no field {missing}") from None
            docs += [Doc(f"{doc_id}#s{i}", title, s.strip()) for i, s in enumerate(sentences)]
    return Corpus(docs, source=str(path))


def claim_sentence_qrels(path, corpus: Corpus) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """(queries, qrels) of the claims with rationale sentences: claim id -> {`docid#sN`: 1}."""
    queries, qrels = {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, 1):
            claim = json.loads(line)
            relevant = {}
            for doc_id, sets in claim["evidence"].items():
                for evidence in sets:
                    for i in evidence["sentences"]:
                        unit = f"{doc_id}#s{i}"
                        if unit not in corpus:
                            raise ValueError(f"{path}:{lineno}: evidence sentence {unit} is not in the sentence corpus")
                        relevant[unit] = 1
            if relevant:
                queries[str(claim["id"])] = claim["claim"]
                qrels[str(claim["id"])] = relevant
    return queries, qrels


# ---------------------------------------------------------------------------------------- examples

EXAMPLE_DEFAULTS = {"span_words": 10, "supervised_spans": 3, "temperature": 1.0}  # training/seal.py's


def granularity_examples(units: GranularityCorpus, split: str, config: dict | None = None,
                         rng: random.Random | None = None) -> list[tuple[TaskSource, str]]:
    """SEAL's supervised (source, target) pairs for one granularity, sources tagged with its task."""
    from training.seal import supervised_examples

    config = {**EXAMPLE_DEFAULTS, **(config or {})}
    pairs = supervised_examples(units.split(split), config, rng or random.Random(0))
    return [(TaskSource(source, units.task), target) for source, target in pairs]


def multitask_examples(per_granularity: dict[str, list], mix: str = "proportional",
                       rng: random.Random | None = None) -> list:
    """One shuffled training list from several granularities' examples.

    mix: "proportional" (the union) or "uniform" (each granularity resampled, with replacement, to the
    largest one's size, so every task is seen equally often)."""
    rng = rng or random.Random(0)
    groups = {name: list(examples) for name, examples in per_granularity.items() if examples}
    if mix == "proportional":
        mixed = [e for examples in groups.values() for e in examples]
    elif mix == "uniform":
        size = max(map(len, groups.values()), default=0)
        mixed = []
        for examples in groups.values():
            mixed += examples + rng.choices(examples, k=size - len(examples))
    else:
        raise ValueError(f"unknown mix {mix!r}: choose 'proportional' or 'uniform'")
    rng.shuffle(mixed)
    return mixed
