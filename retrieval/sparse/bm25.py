"""BM25 on Lucene through pyserini, configured as Anserini's BEIR regressions are.

Defaults follow Anserini: k1=0.9, b=0.4, the default English analyzer (Porter stemmer, stopwords).
`fields="flat"` indexes title and text as one `contents` field (Anserini's BEIR "flat" indexes, SciFact
nDCG@10 0.679); `fields="multifield"` indexes the title as its own field and searches both with weight 1
(Anserini's "multifield", SciFact 0.665).

A build writes Lucene's files under the temporary folder `dengen-bm25-<pid>-<random>`; it is removed when
the build fails or is interrupted, when the retriever goes away, and, for a process killed outright
(kill -9), by the next BM25 build, which removes the folders of processes that no longer exist.
"""
from __future__ import annotations

import math
import numbers
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from tqdm.auto import tqdm

from indexes.lucene_index import LuceneBM25, build_lucene_index
from retrieval.api import Retriever
from retrieval.data import Corpus
from retrieval.errors import SpecError

LAYOUTS = ("flat", "multifield")
TEMP_PREFIX = "dengen-bm25-"


def _bm25_parameter(name: str, value, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(f"bm25: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and 0 <= value <= upper):
        bounds = "a finite number >= 0" if upper == math.inf else f"between 0 and {upper:g}"
        raise SpecError(f"bm25: {name} must be {bounds}, got {value!r}")
    return float(value)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process not yet reaped by its parent (a zombie) is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux)
        return True


def remove_orphaned_workdirs(root: str | Path | None = None) -> None:
    """Remove the temporary folders of BM25 builds whose process no longer exists (under `root`, by
    default the temp folder); a folder of a live process, or not named by this module, is left alone."""
    for folder in Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        owner = re.fullmatch(rf"{TEMP_PREFIX}(\d+)-.+", folder.name)
        if owner and not _process_exists(int(owner.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


class BM25Retriever(Retriever):
    """Lucene BM25.

    Args:
        k1, b: BM25 parameters (Anserini defaults 0.9 / 0.4).
        fields: "flat" (title + text in one field) or "multifield" (title and text as separate fields).
        threads: query threads for batch search (default: all cores).
    """

    kind = "bm25"

    def __init__(self, k1: float = 0.9, b: float = 0.4, fields: str = "flat", threads: int | None = None):
        k1 = _bm25_parameter("k1", k1, math.inf)  # checked here, not by Lucene after the whole build
        b = _bm25_parameter("b", b, 1.0)
        if fields not in LAYOUTS:
            raise SpecError(f"bm25: fields must be one of {LAYOUTS}, got {fields!r}")
        super().__init__(k1=k1, b=b, fields=fields)
        self.threads = threads or os.cpu_count() or 1
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._lucene_dir: Path | None = None
        self._searcher: LuceneBM25 | None = None
        self._opening = threading.Lock()  # concurrent first searches open one searcher

    def _lucene_docs(self, corpus: Corpus):
        for doc in tqdm(corpus, desc="BM25 indexing", unit="doc", mininterval=1.0):
            if self.config["fields"] == "flat":
                yield {"id": doc.id, "contents": doc.full_text}
            else:
                yield {"id": doc.id, "contents": doc.text, "title": doc.title}

    def _index(self, corpus: Corpus) -> None:
        remove_orphaned_workdirs()
        workdir = tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-", ignore_cleanup_errors=True)
        folder = Path(workdir.name) / "lucene"
        extra = ("title",) if self.config["fields"] == "multifield" else ()
        try:
            build_lucene_index(folder, self._lucene_docs(corpus), extra_fields=extra)
            self._open(folder)
        except BaseException:  # Ctrl-C included: remove the half-built index now, not at exit
            workdir.cleanup()
            raise
        self._workdir = workdir  # removed when the retriever goes away (or at exit)

    def _open(self, folder: Path) -> None:
        self._lucene_dir, self._searcher = folder, None  # opened by the first search: a build needs no searcher

    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        with self._opening:
            if self._searcher is None:
                fields = {"contents": 1.0, "title": 1.0} if self.config["fields"] == "multifield" else None
                self._searcher = LuceneBM25(self._lucene_dir, k1=self.config["k1"], b=self.config["b"], fields=fields)
        return self._searcher.search(queries, k, threads=self.threads)

    def _save_files(self, folder: Path) -> dict:
        shutil.copytree(self._lucene_dir, folder / "lucene", ignore=shutil.ignore_patterns("write.lock"))
        self._write_docstore(folder)
        return {"engine": "lucene (pyserini)"}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        self._open(folder / "lucene")
