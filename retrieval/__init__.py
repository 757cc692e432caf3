"""dengen: dense, sparse and generative retrieval behind one API.

Heavy libraries (torch, faiss, pyserini) load only when a retriever that needs them is used.
"""
from retrieval.api import Retriever, build_retriever, load_retriever
from retrieval.data import Corpus, Dataset, Doc, load_corpus, load_dataset, load_qrels, load_queries
from retrieval.errors import DataError, IndexLoadError, ModelNotAvailable
from retrieval.run import Hit, Run
from retrieval.spec import parse_spec

__all__ = [
    "Corpus", "DataError", "Dataset", "Doc", "Hit", "IndexLoadError", "ModelNotAvailable", "Retriever", "Run",
    "build_retriever", "load_corpus", "load_dataset", "load_qrels", "load_queries", "load_retriever", "parse_spec",
]
