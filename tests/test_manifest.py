import json

import pytest

from indexes.manifest import FORMAT, current_folder, read_manifest, write_index_dir
from retrieval import IndexLoadError


def _fill(folder):
    (folder / "a.bin").write_bytes(b"0123456789")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("hello")
    return {"kind": "test", "doc_count": 2}


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["format"] == FORMAT and manifest["kind"] == "test"
    assert set(manifest["files"]) == {"a.bin", "sub/b.txt"}
    assert manifest["files"]["a.bin"]["bytes"] == 10


def test_interrupted_save_leaves_nothing_that_loads(tmp_path):
    def crash(folder):
        _fill(folder)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_index_dir(tmp_path / "idx", crash)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a partial folder remains
    with pytest.raises(IndexLoadError, match="no such index folder"):
        read_manifest(tmp_path / "idx")


def test_failed_resave_keeps_the_old_index(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)

    def crash(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_index_dir(tmp_path / "idx", crash, overwrite=True)
    assert read_manifest(tmp_path / "idx")["kind"] == "test"
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [".lock", "gen-000001", "manifest.json"]


def test_truncated_file_is_refused(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)
    (current_folder(tmp_path / "idx") / "a.bin").write_bytes(b"01234")
    with pytest.raises(IndexLoadError, match="a.bin: 5 bytes, the manifest says 10: truncated"):
        read_manifest(tmp_path / "idx")


def test_altered_file_is_refused(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)
    (current_folder(tmp_path / "idx") / "a.bin").write_bytes(b"0123456780")
    with pytest.raises(IndexLoadError, match="altered"):
        read_manifest(tmp_path / "idx")


def test_missing_file_and_missing_manifest(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)
    (current_folder(tmp_path / "idx") / "sub" / "b.txt").unlink()
    with pytest.raises(IndexLoadError, match="missing"):
        read_manifest(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").unlink()
    with pytest.raises(IndexLoadError, match="no manifest.json"):
        read_manifest(tmp_path / "idx")


def test_newer_format_is_refused(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)
    path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format"] = FORMAT + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="upgrade dengen"):
        read_manifest(tmp_path / "idx")
