"""Corpus, queries and qrels readers and writers.

Layouts read:
- BEIR folders: `corpus.jsonl[.gz]`, `queries.jsonl` (or `queries-<split>.jsonl`), `qrels/<split>.tsv`
  with a `query-id corpus-id score` header.
- MTEB-style jsonl qrels: lines of `{"query-id", "corpus-id", "score"}` (`qrels.jsonl` or `qrels/<split>.jsonl`).
- Plain files: jsonl (`_id`/`id`/`docid`, optional `title`, `text`/`contents`), tsv (`id<TAB>text` or
  `id<TAB>title<TAB>text`), TREC qrels (`qid 0 docid rel`).

Every reader fails on the first bad line with a `DataError` naming the file, the line and the field.
Only regular files are read, line by line with a length limit, so a device or a FIFO given by mistake
fails at once instead of filling memory or hanging.
"""
from __future__ import annotations

import gzip
import json
import os
import stat
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from retrieval.errors import DataError

DOC_ID_FIELDS = ("_id", "id", "docid", "doc_id")
DOC_TEXT_FIELDS = ("text", "contents")
QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id")
QUERY_TEXT_FIELDS = ("text", "query")
MAX_LINE_BYTES = 256 * 2**20  # longer is not a text line (e.g. a binary file); refused before it fills memory
ID_BREAKERS = "\n\r\t"  # would split a line of docids.txt, BEIR qrels or a TREC run


class Doc(NamedTuple):
    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and body joined by a space, as BEIR, mteb and Anserini's flat indexes do."""
        return f"{self.title} {self.text}".strip()


class Corpus:
    """Documents in file order, addressable by id."""

    def __init__(self, docs: Iterable[Doc], source: str | None = None):
        self.docs = list(docs)
        self.source = source
        self._position = {doc.id: i for i, doc in enumerate(self.docs)}
        if len(self._position) != len(self.docs):
            raise ValueError("duplicate document ids in corpus")

    def __len__(self) -> int:
        return len(self.docs)

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.docs)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._position

    def __getitem__(self, doc_id: str) -> Doc:
        return self.docs[self._position[doc_id]]

    @property
    def ids(self) -> list[str]:
        return [doc.id for doc in self.docs]

    def subset(self, doc_ids: Iterable[str]) -> Corpus:
        return Corpus((self[d] for d in doc_ids), source=self.source)


@dataclass
class Dataset:
    """One split of a retrieval benchmark: the corpus, the queries that have judgements, the qrels."""

    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    split: str = "test"


# ---------------------------------------------------------------- low-level line readers


def shared_data(name: str = "") -> Path:
    """A folder of the shared benchmark data: $DENGEN_SHARED_DATA, else ../shared/data beside the repository."""
    root = os.environ.get("DENGEN_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(root) / name


def _check_source(path: Path) -> None:
    """Refuse anything but a regular file before opening it: /dev/zero never ends, a FIFO blocks until a
    writer comes, a socket cannot be opened. A missing file raises FileNotFoundError."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise DataError(path, None, None, f"{kind}; data must be a regular file (or a folder of them)")


def _raw_lines(path: Path, offset: int = 0, lineno: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line as bytes) from `offset` on, gunzipped when the name ends in .gz.
    A damaged gzip stream or a line over MAX_LINE_BYTES is a DataError naming the file and the line."""
    _check_source(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        lines.seek(offset)
        while True:
            try:
                raw = lines.readline(MAX_LINE_BYTES + 1)
            except EOFError:
                raise DataError(path, lineno, None, "the gzip stream ends early (a truncated file?)") from None
            except (gzip.BadGzipFile, zlib.error) as err:
                raise DataError(path, lineno, None, f"not a valid gzip file ({err})") from None
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(path, lineno, None, f"line longer than {MAX_LINE_BYTES} bytes (not a text file?)")
            yield lineno, offset, raw
            offset, lineno = offset + len(raw), lineno + 1


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(path, lineno, None, f"not UTF-8: byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line") from None


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    for lineno, _, raw in _raw_lines(path):
        yield lineno, _decode(raw, path, lineno)


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in _text_lines(path):
        if line.strip():
            yield lineno, json_record(line, path, lineno)


def json_record(line: str, path: Path, lineno: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(path, lineno, None, f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(path, lineno, None, f"expected a JSON object, got {type(record).__name__}")
    return record


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    for lineno, line in _text_lines(path):
        line = line.rstrip("\n").rstrip("\r")
        if line.strip():
            yield lineno, line.split("\t")


def _field(record: dict, names: tuple[str, ...], path: Path, lineno: int, *, required: bool = True) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name in DOC_ID_FIELDS + QUERY_ID_FIELDS:
                value = str(value)  # numeric ids are common (MS MARCO); treat them as strings
            if value is None or not isinstance(value, str):
                raise DataError(path, lineno, name, f"expected a string, got {type(value).__name__}")
            return value
    if required:
        raise DataError(path, lineno, names[0], f"missing (looked for {' / '.join(names)})")
    return ""


def _id(value: str, path: Path, lineno: int, field: str) -> str:
    if not value.strip():
        raise DataError(path, lineno, field, "empty id")
    if any(c in value for c in ID_BREAKERS):
        raise DataError(path, lineno, field, f"id {value!r} holds a newline or tab, which index and run files cannot hold")
    return value


def _find(folder: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (folder / name).exists():  # not is_file(): a FIFO or device there is refused by name when read
            return folder / name
    raise FileNotFoundError(f"{folder}: no {what} file (looked for {', '.join(names)})")


def _is_header(first_col: str) -> bool:
    return first_col.strip().lower() in {"id", "_id", "docid", "doc_id", "qid", "query-id", "query_id"}


# ---------------------------------------------------------------- corpus


def corpus_file(path: str | Path) -> Path:
    """The corpus file of a BEIR folder, or `path` itself."""
    path = Path(path)
    if path.is_dir():
        return _find(path, ["corpus.jsonl", "corpus.jsonl.gz", "corpus.tsv", "corpus.tsv.gz"], "corpus")
    return path


def _parse_doc(line: str, path: Path, lineno: int) -> tuple[Doc, str] | None:
    """(doc, name of its id field) of one corpus line; None for a blank line or a tsv header."""
    if not line.strip():
        return None
    if _is_jsonl(path):
        record = json_record(line, path, lineno)
        id_field = next((f for f in DOC_ID_FIELDS if f in record), DOC_ID_FIELDS[0])
        doc_id = _id(_field(record, DOC_ID_FIELDS, path, lineno), path, lineno, id_field)
        title = _field(record, ("title",), path, lineno, required=False)
        return Doc(doc_id, title, _field(record, DOC_TEXT_FIELDS, path, lineno)), id_field
    cols = line.rstrip("\n").rstrip("\r").split("\t")
    if lineno == 1 and _is_header(cols[0]):
        return None
    if len(cols) not in (2, 3):
        raise DataError(path, lineno, "text", f"expected id<TAB>text or id<TAB>title<TAB>text, got {len(cols)} columns")
    title, text = (cols[1], cols[2]) if len(cols) == 3 else ("", cols[1])
    return Doc(_id(cols[0], path, lineno, "id"), title, text), "id"


def _corpus_lines(path: Path) -> Iterator[tuple[int, int, Doc, str]]:
    """(byte offset, line number, doc, id field) of every document line, read once from disk; a duplicate
    id fails naming both lines. Offsets are positions in the (decompressed) file."""
    first_line: dict[str, int] = {}
    for lineno, offset, raw in _raw_lines(path):
        parsed = _parse_doc(_decode(raw, path, lineno), path, lineno)
        if parsed is not None:
            doc, id_field = parsed
            if doc.id in first_line:
                raise DataError(path, lineno, id_field, f"duplicate id {doc.id!r} (first on line {first_line[doc.id]})")
            first_line[doc.id] = lineno
            yield offset, lineno, doc, id_field
    if not first_line:
        raise DataError(path, None, None, "the corpus is empty")


def load_corpus(path: str | Path, stream: bool = False) -> Corpus | CorpusStream:
    """Read a corpus from a BEIR folder or a jsonl(.gz) / tsv file; `stream=True` keeps it on disk
    (`CorpusStream`) for corpora larger than memory."""
    path = corpus_file(path)
    if stream:
        return CorpusStream(path)
    return Corpus((doc for _, _, doc, _ in _corpus_lines(path)), source=str(path))


class CorpusStream:
    """A corpus left on disk: each pass reads the file again, so only ids and line offsets stay in memory
    (for 1M passages some 100 MB, against GBs of text). Indexing a `CorpusStream` encodes and adds it in
    chunks (retrieval.dense.retriever); `stream[doc_id]` seeks to the document's line.

    The file is checked line by line like `load_corpus` (file, line and field in every error) when the
    stream is opened.
    """

    def __init__(self, path: str | Path):
        self.path = corpus_file(path)
        self.source = str(self.path)
        self._offsets: dict[str, tuple[int, int]] = {}  # id -> (byte offset, line number)
        for offset, lineno, doc, _ in _corpus_lines(self.path):
            self._offsets[doc.id] = (offset, lineno)

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[Doc]:
        return (doc for _, _, doc, _ in _corpus_lines(self.path))

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._offsets

    def __getitem__(self, doc_id: str) -> Doc:
        offset, lineno = self._offsets[doc_id]
        lines = _raw_lines(self.path, offset, lineno)
        try:
            _, _, raw = next(lines)
        finally:
            lines.close()  # closes the file now, not when the generator is collected
        return _parse_doc(_decode(raw, self.path, lineno), self.path, lineno)[0]

    @property
    def ids(self) -> list[str]:
        return list(self._offsets)

    def batches(self, size: int) -> Iterator[list[Doc]]:
        """The documents in file order, `size` at a time."""
        batch: list[Doc] = []
        for doc in self:
            batch.append(doc)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def write_corpus(corpus: Iterable[Doc], path: str | Path) -> None:
    """Write BEIR-style corpus jsonl (gzipped when the name ends in .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as out:
        for doc in corpus:
            out.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")


def _is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith((".jsonl", ".json"))


# ---------------------------------------------------------------- queries


def load_queries(path: str | Path, split: str | None = None) -> dict[str, str]:
    """Read queries: a folder (`queries-<split>.jsonl` first, then `queries.jsonl`/`.tsv`) or a file."""
    path = Path(path)
    if path.is_dir():
        names = [f"queries-{split}.jsonl", f"queries-{split}.tsv"] if split else []
        path = _find(path, names + ["queries.jsonl", "queries.jsonl.gz", "queries.tsv"], "queries")
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}

    def add(qid: str, text: str, lineno: int, id_field: str) -> None:
        if qid in first_line:
            raise DataError(path, lineno, id_field, f"duplicate id {qid!r} (first on line {first_line[qid]})")
        first_line[qid] = lineno
        queries[qid] = text

    if _is_jsonl(path):
        for lineno, record in jsonl_records(path):
            id_field = next((f for f in QUERY_ID_FIELDS if f in record), QUERY_ID_FIELDS[0])
            qid = _id(_field(record, QUERY_ID_FIELDS, path, lineno), path, lineno, id_field)
            add(qid, _field(record, QUERY_TEXT_FIELDS, path, lineno), lineno, id_field)
    else:
        for lineno, cols in _tsv_rows(path):
            if lineno == 1 and _is_header(cols[0]):
                continue
            if len(cols) != 2:
                raise DataError(path, lineno, "text", f"expected qid<TAB>text, got {len(cols)} columns")
            add(_id(cols[0], path, lineno, "qid"), cols[1], lineno, "qid")
    if not queries:
        raise DataError(path, None, None, "no queries")
    return queries


def write_queries(queries: dict[str, str], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- qrels


def _qrels_file(folder: Path, split: str) -> Path:
    return _find(
        folder,
        [f"qrels/{split}.tsv", f"qrels/{split}.jsonl", f"qrels-{split}.jsonl", f"qrels/{split}.txt", "qrels.jsonl", "qrels.tsv"],
        f"qrels for split {split!r}",
    )


def _qrels_lines(path: Path) -> Iterator[tuple[int, str, str, int]]:
    """(line, query id, doc id, relevance) from BEIR tsv, TREC qrels or MTEB jsonl."""
    if _is_jsonl(path):
        for lineno, record in jsonl_records(path):
            qid = _id(_field(record, ("query-id", "query_id", "qid"), path, lineno), path, lineno, "query-id")
            doc_id = _id(_field(record, ("corpus-id", "corpus_id", "docid"), path, lineno), path, lineno, "corpus-id")
            score = record.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score):
                raise DataError(path, lineno, "score", f"expected an integer relevance, got {score!r}")
            yield lineno, qid, doc_id, int(score)
        return
    for lineno, line in _text_lines(path):
        cols = line.split("\t") if "\t" in line else line.split()
        cols = [c.strip() for c in cols]
        if not line.strip() or (lineno == 1 and _is_header(cols[0])):
            continue
        if len(cols) == 4:  # TREC: qid iteration docid rel
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise DataError(path, lineno, None, f"expected 'query-id corpus-id score' or TREC 'qid 0 docid rel', got {len(cols)} columns")
        try:
            score = int(cols[2])
        except ValueError:
            raise DataError(path, lineno, "score", f"expected an integer relevance, got {cols[2]!r}") from None
        yield lineno, _id(cols[0], path, lineno, "query-id"), _id(cols[1], path, lineno, "corpus-id"), score


def load_qrels(
    path: str | Path,
    split: str = "test",
    *,
    corpus: Corpus | None = None,
    queries: dict[str, str] | None = None,
    drop_missing: bool = False,
    keep_missing: bool = False,
) -> dict[str, dict[str, int]]:
    """Read qrels as {query_id: {doc_id: relevance}}.

    Given `corpus` and/or `queries`, a judgement naming an id they lack raises a `DataError` (file, line,
    field). With `drop_missing=True` such lines are dropped and a warning counts them (figures then differ
    from official ones, which keep them). With `keep_missing=True` a document missing from the corpus is
    kept as trec_eval keeps it: relevant, never retrieved, so recall and nDCG count it against every
    retriever as official figures (e.g. Anserini's) do; a line whose query is missing is dropped, as
    trec_eval skips queries that are not in the run.
    """
    if drop_missing and keep_missing:
        raise ValueError("drop_missing and keep_missing exclude each other")
    path = Path(path)
    if path.is_dir():
        path = _qrels_file(path, split)
    qrels: dict[str, dict[str, int]] = {}
    dropped = {"query-id": 0, "corpus-id": 0}
    for lineno, qid, doc_id, score in _qrels_lines(path):
        missing = None
        if queries is not None and qid not in queries:
            missing = ("query-id", qid, "queries")
        elif corpus is not None and doc_id not in corpus and not keep_missing:
            missing = ("corpus-id", doc_id, "corpus")
        if missing:
            field, value, where = missing
            if not (drop_missing or keep_missing):
                raise DataError(path, lineno, field, f"{value!r} is not in the {where} (--keep-missing scores it as "
                                "trec_eval does; --drop-missing drops such lines)")
            dropped[field] += 1
            continue
        docs = qrels.setdefault(qid, {})
        if doc_id in docs and docs[doc_id] != score:
            raise DataError(path, lineno, "corpus-id", f"{doc_id!r} judged twice for query {qid!r} with different scores")
        docs[doc_id] = score
    if sum(dropped.values()):
        warnings.warn(
            f"{path}: dropped {dropped['query-id']} qrels lines whose query is not in the queries "
            f"and {dropped['corpus-id']} whose document is not in the corpus"
            + ("; figures are not comparable to official ones (--keep-missing scores missing documents as trec_eval does)"
               if dropped["corpus-id"] else ""),
            stacklevel=2,
        )
    if not qrels:
        raise DataError(path, None, None, "no judgements")
    return qrels


def write_qrels(qrels: dict[str, dict[str, int]], path: str | Path) -> None:
    """Write BEIR tsv qrels (with header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for doc_id, score in docs.items():
                out.write(f"{qid}\t{doc_id}\t{score}\n")


# ---------------------------------------------------------------- whole datasets


def load_dataset(path: str | Path, split: str = "test", *, drop_missing: bool = False, keep_missing: bool = False) -> Dataset:
    """Corpus, the split's queries and qrels from one folder, checked against each other.

    Only queries with at least one judgement are kept: those are the ones a benchmark scores.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a dataset folder")
    corpus = load_corpus(path)
    queries = load_queries(path, split)
    qrels = load_qrels(path, split, corpus=corpus, queries=queries, drop_missing=drop_missing, keep_missing=keep_missing)
    judged = {qid: queries[qid] for qid in queries if qid in qrels}
    return Dataset(corpus=corpus, queries=judged, qrels=qrels, name=path.name, split=split)
