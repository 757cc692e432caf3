"""LIMIT (Weller et al., "On the Theoretical Limitations of Embedding-Based Retrieval", arXiv:2508.21038).

Queries "Who likes X?" over documents "<name> likes A, B, ..."; each query has two relevant people.
The paper reports recall@2, @10 and @100. Two layouts from google-deepmind/limit `data/`:
- limit-small: 46 documents (all relevant to some query), 1000 queries; runnable here.
- limit: the 50,000-document corpus with the same kind of queries; its corpus.jsonl must be supplied.
"""
from __future__ import annotations

from pathlib import Path

from retrieval.data import Dataset, load_dataset

KS = (2, 10, 100)
CORPUS_SOURCE = "data/limit/corpus.jsonl from https://github.com/google-deepmind/limit (or the HF dataset orionweller/LIMIT)"


def load_limit(folder: str | Path) -> Dataset:
    """Either LIMIT layout (corpus.jsonl, queries.jsonl, MTEB-style qrels.jsonl); a folder without its
    corpus fails with the file it needs and where it comes from."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("corpus.jsonl", "corpus.jsonl.gz")):
        raise FileNotFoundError(
            f"{folder / 'corpus.jsonl'} is missing: LIMIT needs its corpus there. Download {CORPUS_SOURCE} "
            f"and put it at {folder / 'corpus.jsonl'}"
        )
    return load_dataset(folder, "test")


def main_metric(dataset: Dataset) -> str:
    # with 46 documents recall@100 is trivially 1; the small set is read at recall@2 as in the paper's figures
    return "recall@2" if len(dataset.corpus) < 100 else "recall@100"
