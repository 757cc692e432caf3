"""dengen: dense, sparse and generative retrieval behind one API.

Heavy libraries (torch, faiss, pyserini) load only when a retriever that needs them is used.
"""
import os

# torch and the faiss wheel each start an OpenMP runtime; with the default wait policy the idle one's threads
# spin against the busy one's and a single dense query took ~480 ms instead of ~14 ms in 4 of 5 passes.
# PASSIVE (idle threads sleep) fixes it; set before either library loads, and a user's own choice is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from retrieval.api import Retriever, build_retriever, load_retriever  # noqa: E402
from retrieval.data import Corpus, Dataset, Doc, load_corpus, load_dataset, load_qrels, load_queries
from retrieval.errors import DataError, IndexLoadError, ModelNotAvailable
from retrieval.run import Hit, Run
from retrieval.spec import parse_spec

__all__ = [
    "Corpus", "DataError", "Dataset", "Doc", "Hit", "IndexLoadError", "ModelNotAvailable", "Retriever", "Run",
    "build_retriever", "load_corpus", "load_dataset", "load_qrels", "load_queries", "load_retriever", "parse_spec",
]
