"""Saved-index folders: written atomically, described by manifest.json, verified on load.

A folder is filled under a temporary sibling name and renamed into place only after every file and the
manifest (with each file's size and sha256) are written, so a crash or Ctrl-C never leaves a folder at
the target path that loads. Loading checks the format version, then every file's size and checksum.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable


MANIFEST = "manifest.json"
FORMAT = 1  # bump when a saved layout changes incompatibly


class IndexLoadError(ValueError):
    """A saved index that must not be used: missing, truncated, altered, or from a newer dengen."""


def _dengen_version() -> str:
    try:
        return importlib.metadata.version("dengen")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_table(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} for every file under `folder` except the manifest itself."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            table[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    return table


def write_index_dir(target: str | Path, fill: Callable[[Path], dict]) -> dict:
    """Create the index folder `target`: `fill(tmp)` writes files and returns manifest fields.

    Returns the manifest. An existing folder at `target` is replaced only once the new one is complete.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        fields = fill(tmp)
        manifest = {"format": FORMAT, "dengen_version": _dengen_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        manifest.update(fields)
        manifest["files"] = file_table(tmp)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read and check `folder/manifest.json`; with `verify`, also every file's size and sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IndexLoadError(f"{folder}: no such index folder")
    if not path.is_file():
        raise IndexLoadError(f"{folder}: no {MANIFEST}; not a dengen index, or one whose save did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise IndexLoadError(f"{path}: damaged manifest ({err.msg}, line {err.lineno})") from None
    for key in ("format", "kind", "files"):
        if key not in manifest:
            raise IndexLoadError(f"{path}: manifest lacks the field {key!r}")
    if manifest["format"] > FORMAT:
        raise IndexLoadError(
            f"{folder}: written by dengen {manifest.get('dengen_version', '?')} in index format {manifest['format']}; "
            f"this dengen reads format {FORMAT} and older: upgrade dengen"
        )
    if verify:
        verify_files(folder, manifest)
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    for rel, expected in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise IndexLoadError(f"{path}: missing from the index (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise IndexLoadError(f"{path}: {size} bytes, the manifest says {expected['bytes']}: truncated or replaced")
        if _sha256(path) != expected["sha256"]:
            raise IndexLoadError(f"{path}: checksum differs from the manifest: the file was altered after saving")


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
