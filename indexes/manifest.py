"""Saved-index folders: immutable generations switched atomically, described by manifest.json, verified on load.

Layout of a saved index at PATH (docs/reliability.md has the guarantees and how they are tested):

    PATH/manifest.json      the current generation's manifest plus "generation": "gen-000007"
    PATH/gen-000007/        manifest.json + the engine's files, never changed after it is written
    PATH/.lock              held (flock) by a writer while it switches generations

A save fills `PATH/.partial-XXXX/` (its own `.partial-XXXX.lock` held meanwhile), renames it to the next
`gen-N` and then replaces PATH/manifest.json with one `os.replace`, the single atomic step: a reader, a
crash or a kill -9 at any moment sees the old generation or the new one, never a mixture and never no
index, as LevelDB's CURRENT and Lucene's segments_N promise. A reader resolves the pointer once and holds a
shared flock on its generation's own manifest.json for as long as it is loaded; a save removes every older
generation that no reader holds, and the leftovers of crashed saves (partials whose lock is free).

A folder holding a manifest without "generation" beside its files ("flat") is read too: indexes saved
inside another index's generation (hybrid members, a chunked index's inner one) are flat, since the outer
generation is already atomic, and so are indexes written by dengen before generations.

The manifest is untrusted input: its file table must list exactly the regular files present (relative
paths, no `..`, no symlinks), and each file's size and sha256 are checked.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable


MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT = 1  # bump when a saved layout changes incompatibly
_GENERATION = re.compile(r"gen-(\d{6,})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OURS = re.compile(r"(\.lock|gen-\d{6,}|\.partial-[0-9a-f]+(\.lock)?|\.manifest\.[0-9a-f]+)")  # names a save writes


class IndexLoadError(ValueError):
    """A saved index that must not be used: missing, truncated, altered, or from a newer dengen."""


class IndexSaveError(ValueError):
    """A save that must not happen: the target is not a dengen index, or another save holds it."""


def _dengen_version() -> str:
    try:
        return importlib.metadata.version("dengen")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_table(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} for every file under `folder` except the manifest itself, each file
    fsynced as it is read: a generation is on disk before the pointer names it."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            with open(path, "rb") as f:
                table[rel] = {"bytes": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
                os.fsync(f.fileno())
    return table


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a whole file so a reader sees the old content or the new, never a part: a temporary file
    with a unique name beside it, then `os.replace`. Concurrent writers each land whole; the last wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


class atomic_path:
    """`with atomic_path(path) as tmp:` write `tmp` (any way you like); on success it replaces `path`
    atomically, on an exception it is removed. The name is unique per writer (pid and random)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def fill_index_folder(folder: Path, fill: Callable[[Path], dict]) -> dict:
    """Run `fill(folder)` (it writes the engine's files and returns manifest fields), then write the
    manifest listing every file. The flat layout: used inside a generation being written."""
    fields = fill(folder)
    manifest = {"format": FORMAT, "dengen_version": _dengen_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest.update(fields)
    manifest["files"] = file_table(folder)
    with open(folder / MANIFEST, "w", encoding="utf-8") as out:
        json.dump(manifest, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    return manifest


# ---------------------------------------------------------------- writing

def _flock(path: Path, mode: int) -> int | None:
    """An fd holding flock `mode` on `path` (created if missing), or None when LOCK_NB and it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _pointer(folder: Path) -> dict | None:
    """The manifest at `folder/manifest.json` if it is a valid one (a pointer or a flat index's), else None."""
    try:
        return _parse_manifest(folder / MANIFEST, (folder / MANIFEST).read_bytes())
    except (IndexLoadError, OSError):
        return None


def _classify(target: Path) -> str:
    """'absent', 'empty', 'index' (generations or a flat dengen index), 'leftovers' (only names a save
    writes: a first save that crashed) or 'foreign' (anything else: never written over)."""
    if target.is_symlink():
        return "foreign"
    if not target.exists():
        return "absent"
    if not target.is_dir():
        return "foreign"
    names = [n for n in os.listdir(target) if not _OURS.fullmatch(n)]
    if not names:
        return "leftovers" if os.listdir(target) else "empty"
    if MANIFEST not in names or (manifest := _pointer(target)) is None:
        return "foreign"
    if "generation" in manifest:
        return "index" if names == [MANIFEST] else "foreign"
    listed = {rel for p in target.rglob("*") if (p.is_file() or p.is_symlink())
              and not _OURS.fullmatch((rel := p.relative_to(target).as_posix()).split("/")[0])}
    return "index" if listed == set(manifest["files"]) | {MANIFEST} else "foreign"


def _refuse(target: Path, state: str, overwrite: bool) -> None:
    if state == "foreign":
        what = "a symbolic link" if target.is_symlink() else ("a file" if not target.is_dir() else "a folder that is not a dengen index")
        raise IndexSaveError(f"{target}: is {what}; dengen saves an index only to a new path, an empty folder or "
                             f"one of its own indexes, and never replaces anything else")
    if state == "index" and not overwrite:
        raise IndexSaveError(f"{target}: already holds a dengen index; pass --overwrite (overwrite=True) to replace it")


def write_index_dir(target: str | Path, fill: Callable[[Path], dict], *, overwrite: bool = False) -> dict:
    """Save a new generation of the index at `target`: `fill(tmp)` writes files and returns manifest fields.

    `target` may be absent, an empty folder, or (with `overwrite`) a dengen index; anything else is
    refused with IndexSaveError before `fill` runs. Returns the manifest.
    """
    target = Path(os.path.abspath(target))  # abspath, not resolve: a symlink at the target is not followed
    _refuse(target, _classify(target), overwrite)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)  # mode from the umask, like any folder the user makes
    token = secrets.token_hex(6)
    partial, partial_lock = target / f".partial-{token}", target / f".partial-{token}.lock"
    lock_fd = _flock(partial_lock, fcntl.LOCK_EX)  # tells later saves this partial is alive
    committed = False
    try:
        partial.mkdir()
        manifest = fill_index_folder(partial, fill)
        _fsync_dir(partial)
        writer_fd = _flock(target / LOCK, fcntl.LOCK_EX)  # one switch at a time; fills run in parallel
        try:
            state = _classify(target)  # another save may have made an index meanwhile
            _refuse(target, state, overwrite)
            flat = _pointer(target) if state == "index" else None
            flat = flat if flat is not None and "generation" not in flat else None
            generation = f"gen-{_next_generation(target):06d}"
            partial.rename(target / generation)
            pointer = target / f".manifest.{token}"
            with open(pointer, "w", encoding="utf-8") as out:
                json.dump({**manifest, "generation": generation}, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(pointer, target / MANIFEST)  # the commit: readers now open the new generation
            committed = True
            _fsync_dir(target)
            if flat is not None:  # a flat index replaced by this save: its files go
                _remove_flat(target, flat)
            _collect(target, keep=generation)
        finally:
            os.close(writer_fd)
    except BaseException:
        if not committed:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        partial_lock.unlink(missing_ok=True)
        os.close(lock_fd)
        if created and not committed:  # a first save that failed leaves nothing behind
            if os.listdir(target) == [LOCK]:
                (target / LOCK).unlink()
            try:
                target.rmdir()
            except OSError:
                pass  # another save's partial is in it
    return manifest


def _next_generation(target: Path) -> int:
    numbers = [int(m.group(1)) for n in os.listdir(target) if (m := _GENERATION.fullmatch(n))]
    return max(numbers, default=0) + 1


def _collect(target: Path, keep: str) -> None:
    """Remove what no reader can need: older generations whose manifest no reader holds, partials of
    crashed saves, and temporary pointer files. Called by a writer holding `.lock`."""
    for name in os.listdir(target):
        path = target / name
        if _GENERATION.fullmatch(name) and name != keep:
            fd = _try_lock_manifest(path)
            if fd is not None:  # no reader holds it
                try:
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    os.close(fd)
        elif name.startswith(".partial-"):
            folder = target / name.removesuffix(".lock")
            fd = _flock(target / f"{folder.name}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is not None:  # its writer is gone (a live writer holds this lock)
                shutil.rmtree(folder, ignore_errors=True)
                (target / f"{folder.name}.lock").unlink(missing_ok=True)
                os.close(fd)
        elif name.startswith(".manifest."):
            path.unlink(missing_ok=True)  # only a writer holding .lock writes these, and we hold it


def _try_lock_manifest(generation: Path) -> int | None:
    try:
        fd = os.open(generation / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return os.open(generation, os.O_RDONLY)  # no manifest: a half-removed generation, nobody reads it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _remove_flat(target: Path, manifest: dict) -> None:
    for rel in manifest["files"]:
        (target / rel).unlink(missing_ok=True)
    for folder in sorted({(target / rel).parent for rel in manifest["files"]}, key=lambda p: len(p.parts), reverse=True):
        while folder != target:  # the flat index's own subfolders, now empty
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


# ---------------------------------------------------------------- reading

class SavedIndex:
    """An opened index: `folder` (the generation it reads), `manifest`, and the shared lock on that
    generation, held until `close()` or until the object is garbage-collected."""

    def __init__(self, path: Path, folder: Path, manifest: dict, fd: int | None):
        self.path, self.folder, self.manifest, self._fd = path, folder, manifest, fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def is_saved_index(path: str | Path) -> bool:
    """Whether `path` looks like a saved index; it may still fail to load."""
    return (Path(path) / MANIFEST).is_file()


def open_index(path: str | Path, *, verify: bool = True) -> SavedIndex:
    """Open the current generation of the index at `path` (or a flat index) and hold it while loaded;
    with `verify`, every file's size and sha256 are checked."""
    path = Path(path)
    if not path.is_dir():
        raise IndexLoadError(f"{path}: no such index folder")
    for _ in range(100):  # a save may switch generations between our reads; then we open the new one
        top = path / MANIFEST
        if not top.is_file() or top.is_symlink():
            if any(n.startswith(".partial-") for n in os.listdir(path)):
                raise IndexLoadError(f"{path}: holds no index yet: its first save has not finished")
            raise IndexLoadError(f"{path}: no {MANIFEST}; not a dengen index, or one whose save did not finish")
        pointer = _parse_manifest(top, top.read_bytes())
        if "generation" not in pointer:  # flat
            if verify:
                verify_files(path, pointer)
            return SavedIndex(path, path, pointer, None)
        generation = pointer["generation"]
        if not isinstance(generation, str) or not _GENERATION.fullmatch(generation):
            raise IndexLoadError(f"{top}: field 'generation' names {generation!r}, not gen-NNNNNN")
        folder = path / generation
        try:
            fd = os.open(folder / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:  # removed by a save after we read the pointer
            continue
        except OSError as err:
            raise IndexLoadError(f"{folder / MANIFEST}: cannot be opened ({os.strerror(err.errno)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a save is removing this old generation right now
            os.close(fd)
            time.sleep(0.005)
            continue
        try:
            if os.fstat(fd).st_nlink == 0:  # removed before we locked it
                os.close(fd)
                continue
            with open(fd, "rb", closefd=False) as raw:
                manifest = _parse_manifest(folder / MANIFEST, raw.read())
            if verify:
                verify_files(folder, manifest)
        except BaseException:
            os.close(fd)
            raise
        return SavedIndex(path, folder, manifest, fd)
    raise IndexLoadError(f"{path}: the index kept changing while it was opened (100 tries); is a save looping?")


def read_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """The manifest of the index at `folder` (its current generation, or a flat folder), checked; with
    `verify`, also every file's size and sha256. Use `open_index` to read the files too."""
    saved = open_index(folder, verify=verify)
    saved.close()
    return saved.manifest


def _parse_manifest(path: Path, raw: bytes) -> dict:
    """The manifest's JSON, its fields' types and its file table checked: it is untrusted input."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise IndexLoadError(f"{path}: damaged manifest (not UTF-8)") from None
    except json.JSONDecodeError as err:
        raise IndexLoadError(f"{path}: damaged manifest ({err.msg}, line {err.lineno})") from None
    if not isinstance(manifest, dict):
        raise IndexLoadError(f"{path}: damaged manifest (a JSON {type(manifest).__name__}, not an object)")
    for key in ("format", "kind", "files"):
        if key not in manifest:
            raise IndexLoadError(f"{path}: manifest lacks the field {key!r}")
    fmt = manifest["format"]
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise IndexLoadError(f"{path}: field 'format' must be a positive integer, got {fmt!r}")
    if fmt > FORMAT:
        raise IndexLoadError(
            f"{path.parent}: written by dengen {manifest.get('dengen_version', '?')} in index format {fmt}; "
            f"this dengen reads format {FORMAT} and older: upgrade dengen"
        )
    if not isinstance(manifest["kind"], str) or not manifest["kind"]:
        raise IndexLoadError(f"{path}: field 'kind' must be a non-empty string, got {manifest['kind']!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise IndexLoadError(f"{path}: field 'files' must list the index's files (an object with at least one entry)")
    for rel, entry in files.items():
        if not safe_relative(rel) or rel == MANIFEST:
            raise IndexLoadError(f"{path}: field 'files' names {rel!r}, not a relative path inside the index")
        if (not isinstance(entry, dict) or isinstance(entry.get("bytes"), bool) or not isinstance(entry.get("bytes"), int)
                or entry["bytes"] < 0 or not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"])):
            raise IndexLoadError(f"{path}: field 'files', entry {rel!r}: needs 'bytes' (an integer) and 'sha256' (64 hex digits)")
    return manifest


def safe_relative(rel) -> bool:
    """A path inside a folder: relative, POSIX, no empty, '.' or '..' parts."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    return not rel.startswith("/") and all(p not in ("", ".", "..") for p in rel.split("/"))


def inside(folder: Path, manifest: dict, rel) -> Path:
    """`folder/rel` for a path a manifest field names (a file it lists, or a folder holding listed files);
    anything else, e.g. `../x` or an absolute path, is refused."""
    if not safe_relative(rel) or not any(f == rel or f.startswith(rel + "/") for f in manifest["files"]):
        raise IndexLoadError(f"{folder / MANIFEST}: names {rel!r}, which is not a file of the index")
    if any((folder / "/".join(rel.split("/")[:i])).is_symlink() for i in range(1, rel.count("/") + 2)):
        raise IndexLoadError(f"{folder / rel}: a symbolic link inside the index; an index holds only its own files")
    return folder / rel


def _check_listing(folder: Path, manifest: dict) -> None:
    """Every entry under `folder` is a regular file or a folder, and the files are exactly those listed
    (at the top of a flat index, the names a save writes aside)."""
    present = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if _OURS.fullmatch(rel.split("/")[0]):
            continue
        if path.is_symlink():
            raise IndexLoadError(f"{path}: a symbolic link inside the index; an index holds only its own files")
        if path.is_file():
            if rel != MANIFEST:
                present.add(rel)
        elif not path.is_dir():
            raise IndexLoadError(f"{path}: not a regular file")
    missing = sorted(set(manifest["files"]) - present)
    if missing:
        raise IndexLoadError(f"{folder / missing[0]}: missing from the index (listed in {MANIFEST})")
    extra = sorted(present - set(manifest["files"]))
    if extra:
        raise IndexLoadError(f"{folder / extra[0]}: not listed in {MANIFEST}: the index was altered after saving")


def verify_files(folder: Path, manifest: dict) -> None:
    _check_listing(folder, manifest)
    for rel, expected in manifest["files"].items():
        path = folder / rel
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise IndexLoadError(f"{path}: {size} bytes, the manifest says {expected['bytes']}: truncated or replaced")
        if _sha256(path) != expected["sha256"]:
            raise IndexLoadError(f"{path}: checksum differs from the manifest: the file was altered after saving")


def current_folder(path: str | Path) -> Path:
    """The folder holding the files of the index at `path` now (its current generation, or `path` when
    flat), for measuring; readers use `open_index`, which also keeps the generation from removal."""
    return open_index(path, verify=False).folder


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files of a folder; of an index's current generation when given a saved index."""
    folder = Path(folder)
    if is_saved_index(folder):
        folder = current_folder(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
