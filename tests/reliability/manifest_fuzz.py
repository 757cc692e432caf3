"""Random edits of a saved index's manifest (both the pointer and its generation's copy, as an attacker
would make them): every load must succeed or raise IndexLoadError. Used by test_index_storage.py and, at
full size, by scripts/check_reliability.py."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

from indexes.manifest import IndexLoadError, current_folder
from retrieval import load_retriever

VALUES = [None, True, -1, 0, 2**40, 1.5, "", "x", "../x", "/etc/passwd", "/usr/lib", [], ["a"], {}, {"a": 1}, "gen-000001"]


def fuzz_manifests(index: Path, cases: int, rng: random.Random) -> dict:
    """{"cases", "loaded", "IndexLoadError", "other_exceptions": [...]} after `cases` edits of 1-3 fields
    each (a value replaced or a key removed; one manifest in ten also truncated). Restores the index."""
    files = [index / "manifest.json", current_folder(index) / "manifest.json"]
    original = {f: f.read_text() for f in files}
    outcomes, other = {"loaded": 0, "IndexLoadError": 0}, []
    try:
        for _ in range(cases):
            manifest = json.loads(original[files[0]])
            for _ in range(rng.randint(1, 3)):
                where = rng.choice(_paths(manifest))  # again after each edit: an edit may replace a container
                parent = manifest
                for key in where[:-1]:
                    parent = parent[key]
                if rng.random() < 0.2 and isinstance(parent, dict):
                    parent.pop(where[-1], None)
                else:
                    parent[where[-1]] = copy.deepcopy(rng.choice(VALUES))  # never one shared list nested in itself
            for f in files:
                f.write_text(json.dumps(manifest) if rng.random() < 0.9 else json.dumps(manifest)[: rng.randint(0, 50)])
            try:
                load_retriever(index)
                outcomes["loaded"] += 1
            except IndexLoadError:
                outcomes["IndexLoadError"] += 1
            except Exception as err:  # what must never happen
                other.append(f"{type(err).__name__}: {err}"[:300])
    finally:
        for f, text in original.items():
            f.write_text(text)
    return {"cases": cases, **outcomes, "other_exceptions": other}


def _paths(node, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out
