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
import inspect
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from indexes.docstore import write_docstore
from indexes.manifest import SavedIndex, fill_index_folder, open_index, write_index_dir
from retrieval.data import Corpus, CorpusStream
from retrieval.errors import USER_ERRORS, IndexLoadError, ModelNotAvailable, SpecError
from retrieval.run import Hit, Run

# kind -> "module:Class"; imported only when used so `dengen --help` stays instant
RETRIEVERS = {
    "bm25": "retrieval.sparse.bm25:BM25Retriever",
    "splade": "retrieval.sparse.splade:SpladeRetriever",
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
    chunks_documents: ClassVar[bool] = False  # cuts documents into chunks itself; a document scores as its best chunk
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
        self._saved: SavedIndex | None = None  # holds a loaded index's generation

    # ------------------------------------------------------------ public API
    def index(self, corpus: Corpus, engine: str = "local", **options) -> None:
        """Index a corpus (replacing anything indexed before).

        engine: "local" (this process) or "ray" (retrievers whose `engines` name it: dense, SEAL).
        options: build options the retriever lists in `index_options`, e.g. shards=4 (dense, SEAL),
            workers=8 (dense on Ray) and ray_address="head:6379" (dense, SEAL on Ray).
        """
        if len(corpus) == 0:
            raise ValueError("cannot index an empty corpus")
        self.check_index_options(engine, **options)
        start = time.perf_counter()
        if len(self.engines) > 1:  # retrievers that can index elsewhere are told where
            options["engine"] = engine
        self._index(corpus, **options)
        self.build_seconds = time.perf_counter() - start
        self.doc_count = len(corpus)
        self._corpus = corpus
        self.path = self._saved = None  # no longer reads a saved generation

    def check_index_options(self, engine: str = "local", **options) -> None:
        """Refuse (SpecError) what `index` with these arguments would refuse, without a corpus: the CLI calls
        it before reading one. Retrievers whose configuration can only be checked at build time (dense: the
        faiss factory string) extend it."""
        if engine not in self.engines:
            raise SpecError(f"engine={engine!r}: a {self.kind} retriever indexes with engine {' or '.join(map(repr, self.engines))}")
        unknown = [name for name in options if name not in self.index_options]
        if unknown:
            raise SpecError(f"{', '.join(unknown)}: not an indexing option of a {self.kind} retriever"
                            f" ({', '.join(self.index_options) or 'it has none'})")
        ray_only = [f"{name}=" for name in self.RAY_OPTIONS if options.get(name) is not None]
        if engine != "ray" and ray_only:
            raise SpecError(f"{', '.join(ray_only)} {'is an option' if len(ray_only) == 1 else 'are options'} of engine='ray'")

    def search(self, queries: dict[str, str], k: int = 100) -> Run:
        """Top-k documents for each query, as a Run {query_id: {doc_id: score}}.

        k must be a positive integer. An empty or whitespace-only query gets no hits (its id is in the
        Run with an empty dict) whatever the retriever: the engine never sees it.
        """
        if isinstance(k, bool) or not hasattr(k, "__index__") or k < 1:  # numpy integers pass
            raise SpecError(f"k must be a positive integer, got {k!r}")
        self._require_index()
        blank = {qid for qid, text in queries.items() if isinstance(text, str) and not text.strip()}
        asked = {qid: text for qid, text in queries.items() if qid not in blank}
        found = self._search(asked, int(k)) if asked else {}
        return Run({qid: found.get(qid, {}) for qid in queries})

    def search_one(self, query: str, k: int = 10) -> list[Hit]:
        """Ranked hits for one query string, with document text where it is stored (none for an empty
        query); k as in `search`."""
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

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the index to `path` as a new generation (indexes/manifest.py): readers see the old index or
        the new one, never a mixture. `path` must be new, an empty folder, or (with `overwrite`) a dengen
        index; anything else is refused (IndexSaveError) before any file is written."""
        self._require_index()
        write_index_dir(path, self._fill, overwrite=overwrite)

    def save_inside(self, folder: Path) -> None:
        """Write the index into `folder`, a new folder inside another index's generation being written
        (hybrid members, a chunked index's inner one): flat, since the outer generation is atomic."""
        self._require_index()
        folder.mkdir()
        fill_index_folder(folder, self._fill)

    def _fill(self, folder: Path) -> dict:
        extra = self._save_files(folder) or {}
        return {
            "kind": self.kind,
            "config": self.config,
            "doc_count": self.doc_count,
            "build_seconds": self.build_seconds,
            **extra,
        }

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, trust_paths: bool = False) -> Retriever:
        """Open a saved index; refuses a truncated, altered or newer-format one, and one naming a model
        folder outside itself unless `trust_paths` (docs/reliability.md)."""
        return cls._from_saved(open_index(path, verify=verify), trust_paths)

    @classmethod
    def _from_saved(cls, saved: SavedIndex, trust_paths: bool = False) -> Retriever:
        from retrieval.models import reading_index

        with reading_index(saved.folder, trust_paths):
            return cls._build_from(saved)

    @classmethod
    def _build_from(cls, saved: SavedIndex) -> Retriever:
        manifest, folder = saved.manifest, saved.folder
        if manifest["kind"] != cls.kind:
            raise IndexLoadError(f"{saved.path}: holds a {manifest['kind']!r} index, not {cls.kind!r}")
        if not isinstance(manifest.get("config"), dict):
            raise IndexLoadError(f"{folder / 'manifest.json'}: field 'config' must be an object")
        count = manifest.get("doc_count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise IndexLoadError(f"{folder / 'manifest.json'}: field 'doc_count' must be a positive integer, got {count!r}")
        try:  # the manifest is untrusted: a field that breaks loading is a damaged index, not a crash
            retriever = cls(**cls._init_args(folder, manifest))
            retriever.doc_count = count
            retriever.build_seconds = manifest.get("build_seconds")
            retriever._load_files(folder, manifest)
        except IndexLoadError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, ModelNotAvailable) as err:
            raise IndexLoadError(f"{folder / 'manifest.json'}: does not describe a loadable {cls.kind} index "
                                 f"({type(err).__name__}: {err})") from err
        retriever.path = folder  # the generation it reads, kept while it is loaded:
        retriever._saved = saved  # a later save does not remove it
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
    if not isinstance(kind, str) or kind not in RETRIEVERS:
        raise SpecError(f"unknown retriever kind {kind!r}: choose one of {', '.join(RETRIEVERS)}")
    module, name = RETRIEVERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_retriever(kind: str, **config) -> Retriever:
    """A new, empty retriever of `kind` ("bm25", "dense", "hybrid") with its options.

    An option the class does not take is a SpecError naming it and the valid ones, as is any ValueError
    its constructor raises (constructors only check their options).
    """
    cls = retriever_class(kind)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):  # **search options are checked by the class
        valid = [name for name, p in params.items() if name != "self" and p.kind is not p.VAR_POSITIONAL]
        unknown = [name for name in config if name not in valid]
        if unknown:
            raise SpecError(f"{kind}: unknown option {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}")
    try:
        return cls(**config)
    except USER_ERRORS:
        raise
    except ValueError as err:
        raise SpecError(f"{kind}: {err}") from err


def load_retriever(path: str | Path, *, verify: bool = True, trust_paths: bool = False) -> Retriever:
    """Open any saved index: its manifest names the class. A model folder the manifest names outside the
    index (not a registry name) is refused unless `trust_paths` (or the CLI's --trust-paths)."""
    saved = open_index(path, verify=verify)
    kind = saved.manifest["kind"]
    if kind not in RETRIEVERS:
        raise IndexLoadError(f"{saved.folder / 'manifest.json'}: kind {kind!r} is not a retriever ({', '.join(RETRIEVERS)})")
    return retriever_class(kind)._from_saved(saved, trust_paths)
