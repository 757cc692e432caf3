"""dengen retrievers and encoders as mteb models, so the same object is scored by mteb and by our runner.

- `MtebRetriever(retriever)`: any dengen `Retriever` (bm25, dense, hybrid, generative ...) through mteb's
  `SearchProtocol` (`index(corpus, ...)`, `search(queries, ..., top_k)`, `mteb_model_meta`). mteb then
  scores our run with its own evaluator. A retriever that already holds the task's documents (built
  earlier, or loaded from a saved index) is not indexed again.
- `MtebEncoder(encoder)`: any dengen encoder (`encode_queries` / `encode_documents`) through mteb's
  `EncoderProtocol`, so mteb's own exact search (retrieval tasks) and its STS evaluator can use it.
  Queries go through `encode_queries`, documents through `encode_documents`, and inputs without a
  prompt type (STS sentences) through `encode_queries`.

Example:
    >>> from eval.mteb_tasks import scifact_task, stsbenchmark_task
    >>> scores = mteb_scores(MtebRetriever(load_retriever("runs/scifact-minilm")), scifact_task())
    >>> scores["ndcg_at_10"]
    >>> mteb_scores(MtebEncoder(SentenceEncoder("minilm")), stsbenchmark_task())["cosine_spearman"]
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from eval.mteb_tasks import offline_mteb
from eval.record import Result
from eval.runner import encoder_label
from eval.runner import label as retriever_label
from retrieval.api import Retriever
from retrieval.data import Corpus, Doc

# mteb's model types by dengen kind; generative retrievers have no mteb type and are listed as dense
MODEL_TYPES = {"bm25": "sparse", "dense": "dense", "hybrid": "hybrid"}


def _config_hash(description: dict) -> str:
    """A short, stable hash of a configuration: the mteb "revision", so two configs never share a cache entry."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _model_meta(name: str, revision: str, **fields):
    offline_mteb()
    from mteb.models.model_meta import ModelMeta

    return ModelMeta.create_empty({"name": name, "revision": revision, "modalities": ["text"], **fields})


def _corpus_from_mteb(corpus) -> Corpus:
    """mteb's corpus Dataset (id, text, optional title) as a dengen Corpus."""
    titles = corpus["title"] if "title" in corpus.column_names else [""] * len(corpus)
    return Corpus(Doc(i, t or "", x or "") for i, t, x in zip(corpus["id"], titles, corpus["text"], strict=True))


def _query_texts(queries) -> list[str]:
    """Query texts, with an instruction appended as mteb does for instruction-retrieval tasks."""
    texts = list(queries["text"])
    if texts and not isinstance(texts[0], str):
        raise TypeError("conversational queries are not supported by dengen retrievers")
    if "instruction" in queries.column_names:
        texts = [t if i is None else f"{t} {i}" for t, i in zip(texts, queries["instruction"], strict=True)]
    return texts


class MtebRetriever:
    """A dengen `Retriever` behind mteb's `SearchProtocol`.

    Args:
        retriever: any built, loaded or empty dengen retriever.
        name: the model name mteb records (default: "dengen/<runner label>", e.g. "dengen/dense-minilm-Flat").
        reindex: None (default) reuses an index that already holds the task's documents (`Retriever.holds`:
            the same ids with the same texts) and indexes the task's corpus otherwise; True always indexes;
            False never does (for an index that stores no texts, so ids cannot be checked) and fails only
            when the document count differs.

    Attributes:
        reused_index: after `index()`, whether the existing index was used as it was.

    Example:
        >>> r = load_retriever("runs/scifact-minilm")      # saved index: no re-encoding
        >>> mteb.evaluate(MtebRetriever(r), scifact_task(), cache=None)
    """

    def __init__(self, retriever: Retriever, name: str | None = None, reindex: bool | None = None):
        self.retriever = retriever
        self.name = name
        self.reindex = reindex
        self.reused_index: bool | None = None

    @property
    def mteb_model_meta(self):
        description = self.retriever.describe()
        return _model_meta(
            self.name or f"dengen/{retriever_label(description)}",
            _config_hash(description),
            model_type=[MODEL_TYPES.get(description["kind"], "dense")],
        )

    def index(self, corpus, *, task_metadata=None, hf_split: str = "", hf_subset: str = "", encode_kwargs=None,
              num_proc: int | None = None, **kwargs: Any) -> None:
        """Index mteb's corpus unless the retriever already holds it (see `reindex`)."""
        doc_ids = list(corpus["id"])
        if self.reindex is False:
            if self.retriever.doc_count != len(doc_ids):
                raise ValueError(
                    f"the index holds {self.retriever.doc_count} documents, the task {len(doc_ids)}: "
                    f"pass reindex=None or True to index the task's corpus"
                )
            self.reused_index = True
            return
        docs = _corpus_from_mteb(corpus)
        self.reused_index = not self.reindex and self.retriever.holds(docs)
        if not self.reused_index:
            self.retriever.index(docs)

    def search(self, queries, *, task_metadata=None, hf_split: str = "", hf_subset: str = "", top_k: int = 1000,
               encode_kwargs=None, top_ranked=None, num_proc: int | None = None, **kwargs: Any) -> dict[str, dict[str, float]]:
        """Top `top_k` documents per query, {query_id: {doc_id: score}}; every query gets an entry."""
        if top_ranked is not None:
            raise NotImplementedError("reranking tasks (top_ranked candidates) need a re-ranker, not a first-stage retriever")
        qids = list(queries["id"])
        run = self.retriever.search(dict(zip(qids, _query_texts(queries), strict=True)), k=top_k)
        return {qid: dict(run.get(qid, {})) for qid in qids}


class MtebEncoder:
    """A dengen encoder behind mteb's `EncoderProtocol` (STS, and retrieval with mteb's own exact search).

    Args:
        encoder: anything with `encode_queries(texts)`, `encode_documents(texts)` and `describe()`.
        name: the model name mteb records (default: "dengen/encoder-<model>").

    Similarity is cosine for a normalising encoder and inner product otherwise, as the dense retriever's
    faiss inner-product index scores it.

    Example:
        >>> mteb.evaluate(MtebEncoder(SentenceEncoder("minilm")), stsbenchmark_task(), cache=None)
    """

    def __init__(self, encoder, name: str | None = None):
        self.encoder = encoder
        self.name = name

    @property
    def cosine(self) -> bool:
        return bool(getattr(self.encoder, "normalize", True))

    @property
    def mteb_model_meta(self):
        description = {"kind": "encoder", **self.encoder.describe()}
        fingerprint = getattr(self.encoder, "fingerprint", None)
        return _model_meta(
            self.name or f"dengen/{encoder_label(description)}",
            # weights hash + config, so a changed prefix or model never shares a cache entry
            _config_hash({**description, "weights": fingerprint}),
            embed_dim=getattr(self.encoder, "dim", None),
            similarity_fn_name="cosine" if self.cosine else "dot",
            model_type=["dense"],
        )

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "", prompt_type=None,
               **kwargs: Any) -> np.ndarray:
        """Vectors for every text in mteb's dataloader, documents and queries each through their own method."""
        from mteb.types import PromptType

        texts = [text for batch in inputs for text in batch["text"]]
        if prompt_type == PromptType.document:
            vectors = self.encoder.encode_documents(texts)
        else:
            vectors = self.encoder.encode_queries(texts)
        return np.asarray(vectors, dtype=np.float32)

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim, dot_score

        return cos_sim(embeddings1, embeddings2) if self.cosine else dot_score(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim, pairwise_dot_score

        return pairwise_cos_sim(embeddings1, embeddings2) if self.cosine else pairwise_dot_score(embeddings1, embeddings2)


def mteb_model(obj) -> MtebRetriever | MtebEncoder:
    """The mteb adapter for a dengen object: retrievers search, encoders encode."""
    if isinstance(obj, (MtebRetriever, MtebEncoder)):
        return obj
    if isinstance(obj, Retriever):
        return MtebRetriever(obj)
    if hasattr(obj, "encode_queries") and hasattr(obj, "encode_documents"):
        return MtebEncoder(obj)
    raise TypeError(f"{type(obj).__name__} is neither a dengen Retriever nor an encoder (encode_queries / encode_documents)")


def mteb_scores(model, task, **evaluate_kwargs) -> dict[str, float]:
    """Run `mteb.evaluate(model, task, cache=None)` and return the scores of the task's first eval split.

    Args:
        model: a dengen retriever or encoder, or an adapter (see `mteb_model`).
        task: an mteb task (see eval.mteb_tasks).
        evaluate_kwargs: passed on to `mteb.evaluate` (e.g. encode_kwargs, show_progress_bar).

    Returns:
        mteb's score dict for the split's default subset, e.g. {"ndcg_at_10": ..., "main_score": ...}.
    """
    mteb = offline_mteb()
    evaluate_kwargs = {"cache": None, "show_progress_bar": False, **evaluate_kwargs}
    result = mteb.evaluate(mteb_model(model), task, **evaluate_kwargs)
    (task_result,) = result.task_results
    split = task.metadata.eval_splits[0]
    return dict(task_result.scores[split][0])


def retrieval_metric_names(ks) -> dict[str, str]:
    """dengen metric name -> mteb score key, for the cut-offs `ks` (nDCG, recall, MAP, MRR)."""
    return {f"{ours}@{k}": f"{theirs}_at_{k}" for k in ks for ours, theirs in
            (("ndcg", "ndcg"), ("recall", "recall"), ("map", "map"), ("mrr", "mrr"))}


def mteb_record(retriever: Retriever, dataset: str, split: str, scores: dict, names: dict[str, str]) -> Result:
    """A result (as `dengen eval` writes) from mteb's scores: `names` maps dengen metric names to
    mteb's keys; the first is the main metric. The variant "mteb" keeps it beside dengen's own column."""
    description = retriever.describe()
    return Result(task="MTEB", family="MTEB", dataset=dataset, split=split, variant="mteb", retriever=description,
                  label=retriever_label(description), metrics={ours: float(scores[theirs]) for ours, theirs in names.items()},
                  main_metric=next(iter(names)))
