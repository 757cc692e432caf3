"""The common retriever API: every retriever is built, indexed, saved, loaded and searched the same way.

    r = build_retriever("dense", model="minilm", index="Flat")
    r.index(corpus)
    r.save("runs/scifact-minilm")            # atomic; writes manifest.json
    r = load_retriever("runs/scifact-minilm")   # the manifest picks the class
    run = r.search(queries, k=100)           # Run {qid: {docid: score}}
    hits = r.search_one("what causes X?", k=10)
"""
from __future__ import annotations

import importlib
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from indexes.docstore import write_docstore
from indexes.manifest import read_manifest, write_index_dir
from retrieval.data import Corpus, CorpusStream
from retrieval.errors import IndexLoadError
from retrieval.run import Hit, Run

# kind -> "module:Class"; imported only when used so `dengen --help` stays instant
RETRIEVERS = {
    "bm25": "retrieval.sparse.bm25:BM25Retriever",
    "dense": "retrieval.dense.retriever:DenseRetriever",
    "hybrid": "retrieval.hybrid:HybridRetriever",
    "chunked": "retrieval.longdoc:ChunkedRetriever",
    "situated": "retrieval.dense.sitemb:SituatedRetriever",
    "seal": "retrieval.generative.seal:SEALRetriever",
    "corpusbrain": "retrieval.generative.corpusbrain:CorpusBrainRetriever",
    "ugr": "retrieval.generative.ugr:UGRRetriever",
}


class Retriever(ABC):
    """Base of every retriever.

    Subclasses set `kind`, keep their build options in `self.config` (a plain dict that round-trips
    through the manifest) and implement `_index`, `_search`, `_save_files` and `_load_files`.
    """

    kind: ClassVar[str]
    engines: ClassVar[tuple[str, ...]] = ("local",)  # where `index` can run; retrievers with more take engine=
    index_options: ClassVar[tuple[str, ...]] = ()  # keyword options their `_index` takes (shards, workers, ...)
    RAY_OPTIONS = ("workers", "ray_address")  # index options that only mean something with engine="ray"

    def __init__(self, **config):
        self.config = config
        self.doc_count = 0
        self.build_seconds: float | None = None
        self.path: Path | None = None  # the saved index it was loaded from; None when built in memory
        self._texts: CorpusStream | None = None  # a loaded index's docs.jsonl, opened on first use
        self._corpus: Corpus | None = None  # the corpus of a freshly built index

    # ------------------------------------------------------------ public API
    def index(self, corpus: Corpus, engine: str = "local", **options) -> None:
        """Index a corpus (replacing anything indexed before).

        engine: "local" (this process) or "ray" (retrievers whose `engines` name it: dense, SEAL).
        options: build options the retriever lists in `index_options`, e.g. shards=4 (dense, SEAL),
            workers=8 (dense on Ray) and ray_address="head:6379" (dense, SEAL on Ray).
        """
        if len(corpus) == 0:
            raise ValueError("cannot index an empty corpus")
        if engine not in self.engines:
            raise ValueError(f"engine={engine!r}: a {self.kind} retriever indexes with engine {' or '.join(map(repr, self.engines))}")
        unknown = [name for name in options if name not in self.index_options]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not an indexing option of a {self.kind} retriever"
                             f" ({', '.join(self.index_options) or 'it has none'})")
        ray_only = [f"{name}=" for name in self.RAY_OPTIONS if options.get(name) is not None]
        if engine != "ray" and ray_only:
            raise ValueError(f"{', '.join(ray_only)} {'is an option' if len(ray_only) == 1 else 'are options'} of engine='ray'")
        start = time.perf_counter()
        if len(self.engines) > 1:  # retrievers that can index elsewhere are told where
            options["engine"] = engine
        self._index(corpus, **options)
        self.build_seconds = time.perf_counter() - start
        self.doc_count = len(corpus)
        self._corpus = corpus
        self.path = None

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        """Top-k documents for each query, as a Run {query_id: {doc_id: score}}."""
        self._require_index()
        if not queries:
            return Run()
        return Run(self._search(queries, k))

    def search_one(self, query: str, k: int = 10) -> list[Hit]:
        """Ranked hits for one query string, with document text where it is stored."""
        run = self.search({"q": query}, k)
        return [Hit(doc_id, score, self.doc_text(doc_id)) for doc_id, score in run.top("q")]

    def doc_text(self, doc_id: str) -> str | None:
        if self._corpus is not None:
            return self._corpus[doc_id].full_text if doc_id in self._corpus else None
        if self._texts is None and self.path is not None and (self.path / "docs.jsonl").is_file():
            self._texts = CorpusStream(self.path / "docs.jsonl")  # ids and offsets only: bounded for big corpora
        return self._texts[doc_id].full_text if self._texts is not None and doc_id in self._texts else None

    def holds(self, corpus: Corpus) -> bool:
        """Whether the index already holds exactly `corpus`: the same ids with the same texts."""
        return self.doc_count == len(corpus) and all(self.doc_text(d.id) == d.full_text for d in corpus)

    def describe(self) -> dict:
        """Configuration for reports and manifests."""
        return {"kind": self.kind, **self.config}

    def save(self, path: str | Path) -> None:
        """Write the index to `path` atomically, with manifest.json (kind, version, config, checksums)."""
        self._require_index()

        def fill(folder: Path) -> dict:
            extra = self._save_files(folder) or {}
            return {
                "kind": self.kind,
                "config": self.config,
                "doc_count": self.doc_count,
                "build_seconds": self.build_seconds,
                **extra,
            }

        write_index_dir(path, fill)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Retriever:
        """Open a saved index; refuses a truncated, altered or newer-format one."""
        path = Path(path)
        manifest = read_manifest(path, verify=verify)
        if manifest["kind"] != cls.kind:
            raise IndexLoadError(f"{path}: holds a {manifest['kind']!r} index, not {cls.kind!r}")
        retriever = cls(**cls._init_args(path, manifest))
        retriever.doc_count = manifest["doc_count"]
        retriever.build_seconds = manifest.get("build_seconds")
        retriever._load_files(path, manifest)
        retriever.path = path
        return retriever

    # ------------------------------------------------------------ for subclasses
    @classmethod
    def _init_args(cls, folder: Path, manifest: dict) -> dict:
        """Constructor arguments for a saved index (its config, unless a subclass needs more)."""
        return manifest["config"]

    @abstractmethod
    def _index(self, corpus: Corpus) -> None: ...

    @abstractmethod
    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]: ...

    @abstractmethod
    def _save_files(self, folder: Path) -> dict | None:
        """Write engine files into `folder`; return extra manifest fields."""

    @abstractmethod
    def _load_files(self, folder: Path, manifest: dict) -> None: ...

    def _write_docstore(self, folder: Path) -> None:
        """Store doc ids in corpus order (engines' integer positions follow it) and their texts."""
        if self._corpus is not None:
            write_docstore(folder, self._corpus.ids, ((d.title, d.text) for d in self._corpus))
        else:  # re-saving a loaded index: copy its docstore files
            for name in ("docids.txt", "docs.jsonl"):
                shutil.copyfile(self.path / name, folder / name)

    def _require_index(self) -> None:
        if self.doc_count == 0:
            raise RuntimeError(f"this {self.kind} retriever has no index yet: call index(corpus) or load_retriever(path)")


def retriever_class(kind: str) -> type[Retriever]:
    if kind not in RETRIEVERS:
        raise ValueError(f"unknown retriever kind {kind!r}: choose one of {', '.join(RETRIEVERS)}")
    module, name = RETRIEVERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_retriever(kind: str, **config) -> Retriever:
    """A new, empty retriever of `kind` ("bm25", "dense", "hybrid") with its options."""
    return retriever_class(kind)(**config)


def load_retriever(path: str | Path, *, verify: bool = True) -> Retriever:
    """Open any saved index: its manifest names the class."""
    manifest = read_manifest(path, verify=verify)
    return retriever_class(manifest["kind"]).load(path, verify=False)
