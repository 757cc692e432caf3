"""Document ids (and optionally texts) stored beside an index, in index order.

`docids.txt` maps an engine's integer positions back to document ids; `docs.jsonl` keeps titles and
texts so search results can show a snippet (a loaded retriever opens it as a `CorpusStream`: ids and
line offsets in memory, each text read from disk when asked for).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


def write_docstore(folder: Path, ids: list[str], docs: Iterable[tuple[str, str]] | None = None) -> None:
    """`ids` in index order; `docs` (title, text) pairs in the same order, or None to store ids only."""
    with open(folder / "docids.txt", "w", encoding="utf-8") as out:
        for doc_id in ids:
            if "\n" in doc_id:
                raise ValueError(f"document id {doc_id!r} contains a newline")
            out.write(doc_id + "\n")
    if docs is not None:
        with open(folder / "docs.jsonl", "w", encoding="utf-8") as out:
            for doc_id, (title, text) in zip(ids, docs, strict=True):
                out.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")


def read_docids(folder: Path) -> list[str]:
    with open(folder / "docids.txt", encoding="utf-8") as lines:
        return [line.rstrip("\n") for line in lines]
