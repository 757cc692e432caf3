"""Saved indexes: never written over what dengen did not write, generations switched atomically (kill -9,
concurrent readers and writers), the manifest treated as untrusted input. docs/reliability.md has the table."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO
from manifest_fuzz import fuzz_manifests

from indexes.manifest import IndexLoadError, IndexSaveError, current_folder, open_index, write_index_dir
from retrieval import Corpus, Doc, build_retriever, load_retriever

FILES, LINES = 12, 200

# a save whose every file holds its version: a reader can tell a mixture of two saves from either
WRITER = textwrap.dedent(f"""
    import sys, time
    from indexes.manifest import write_index_dir
    path, first, last, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    def fill(version):
        def write(folder):
            (folder / "sub").mkdir()
            for i in range({FILES}):
                (folder / ("sub" if i % 2 else ".") / f"part-{{i:02d}}.txt").write_text(f"{{version}}\\n" * {LINES})
                time.sleep(pause)
            return {{"kind": "test", "version": version}}
        return write
    for version in range(first, last + 1):
        write_index_dir(path, fill(version), overwrite=True)
        print(version, flush=True)
""")

# open the index over and over, check it is one whole version; print reads and failures
READER = textwrap.dedent(f"""
    import sys, time
    from indexes.manifest import open_index
    path, seconds = sys.argv[1], float(sys.argv[2])
    reads, failures, versions = 0, [], set()
    end = time.time() + seconds
    while time.time() < end:
        try:
            saved = open_index(path)
            version = saved.manifest["version"]
            texts = {{p.read_text() for p in saved.folder.rglob("part-*.txt")}}
            if texts != {{f"{{version}}\\n" * {LINES}}} or len(list(saved.folder.rglob("part-*.txt"))) != {FILES}:
                failures.append(f"mixed files in version {{version}}")
            versions.add(version)
            reads += 1
            saved.close()
        except Exception as err:
            failures.append(f"{{type(err).__name__}}: {{err}}")
    print(reads, len(versions), len(failures), failures[:3])
""")


def _python(code: str, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, text=True, **popen)


def _save(path: Path, first: int, last: int, pause: float) -> None:
    done = subprocess.run([sys.executable, "-c", WRITER, str(path), str(first), str(last), str(pause)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _version(path: Path) -> int:
    saved = open_index(path)  # verifies every file's size and sha256
    version = saved.manifest["version"]
    assert {p.read_text() for p in saved.folder.rglob("part-*.txt")} == {f"{version}\n" * LINES}
    return version


def _fill(folder: Path) -> dict:
    (folder / "a.bin").write_bytes(b"0123456789")
    return {"kind": "test"}


# ---------------------------------------------------------------- never delete what dengen did not write

def test_a_folder_with_user_files_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(IndexSaveError, match="not a dengen index"):
            write_index_dir(target, _fill, overwrite=overwrite)
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]
    assert (target / "thesis.tex").read_text() == "years of work"


def test_the_current_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IndexSaveError):
        write_index_dir(".", _fill, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_symlink_is_not_followed_even_to_an_index(tmp_path):
    write_index_dir(tmp_path / "real", _fill)
    before = sorted(p.name for p in (tmp_path / "real").iterdir())
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link-to-empty").symlink_to(tmp_path / "elsewhere")
    for link in ("link", "link-to-empty"):
        with pytest.raises(IndexSaveError, match="symbolic link"):
            write_index_dir(tmp_path / link, _fill, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == before
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_plain_file_is_refused_and_not_renamed(tmp_path):
    (tmp_path / "idx").write_text("a user's file")
    with pytest.raises(IndexSaveError, match="is a file"):
        write_index_dir(tmp_path / "idx", _fill, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"] and (tmp_path / "idx").read_text() == "a user's file"


def test_an_index_is_replaced_only_with_overwrite(tmp_path):
    write_index_dir(tmp_path / "idx", _fill)
    with pytest.raises(IndexSaveError, match="--overwrite"):
        write_index_dir(tmp_path / "idx", _fill)
    write_index_dir(tmp_path / "idx", lambda f: {**_fill(f), "doc_count": 2}, overwrite=True)
    assert open_index(tmp_path / "idx").manifest["doc_count"] == 2
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [".lock", "gen-000002", "manifest.json"]


def test_an_empty_folder_is_a_valid_target_and_folders_follow_the_umask(tmp_path):
    (tmp_path / "empty").mkdir()
    old = os.umask(0o022)
    try:
        write_index_dir(tmp_path / "empty", _fill)
        write_index_dir(tmp_path / "new" / "idx", _fill)
    finally:
        os.umask(old)
    assert open_index(tmp_path / "empty").manifest["kind"] == "test"
    for folder in (tmp_path / "new" / "idx", current_folder(tmp_path / "new" / "idx")):
        assert folder.stat().st_mode & 0o777 == 0o755


def test_a_flat_index_of_an_older_dengen_is_read_and_replaced_whole(tmp_path):
    from indexes.manifest import fill_index_folder

    (tmp_path / "old").mkdir()
    fill_index_folder(tmp_path / "old", _fill)
    assert open_index(tmp_path / "old").folder == tmp_path / "old"
    write_index_dir(tmp_path / "old", lambda f: {**_fill(f), "doc_count": 3}, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [".lock", "gen-000001", "manifest.json"]
    assert open_index(tmp_path / "old").manifest["doc_count"] == 3


# ---------------------------------------------------------------- generations and readers

def test_a_loaded_reader_keeps_its_generation_until_released(tmp_path):
    write_index_dir(tmp_path / "idx", lambda f: {**_fill(f), "doc_count": 1})
    reader = open_index(tmp_path / "idx")
    write_index_dir(tmp_path / "idx", lambda f: {**_fill(f), "doc_count": 2}, overwrite=True)
    write_index_dir(tmp_path / "idx", lambda f: {**_fill(f), "doc_count": 3}, overwrite=True)
    assert reader.folder.name == "gen-000001" and reader.folder.is_dir()  # held: not removed
    assert not (tmp_path / "idx" / "gen-000002").exists()  # nobody held it
    assert open_index(tmp_path / "idx").manifest["doc_count"] == 3
    reader.close()
    write_index_dir(tmp_path / "idx", lambda f: {**_fill(f), "doc_count": 4}, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [".lock", "gen-000004", "manifest.json"]


def test_a_loaded_retriever_reads_its_own_texts_after_the_index_is_replaced(tmp_path):
    """Was: DataError 'docs.jsonl, line 47: not valid JSON' (old offsets into the new file)."""
    docs = [Doc(f"d{i}", f"title {i}", f"text number {i} " + "word " * (i % 7)) for i in range(60)]
    small = build_retriever("dense", model="minilm")
    small.index(Corpus(docs))
    small.save(tmp_path / "idx")
    loaded = load_retriever(tmp_path / "idx")
    other = build_retriever("dense", model="minilm")
    other.index(Corpus([Doc(d.id, "other " + d.title, "a much longer replacement text " * 5) for d in docs[:50]]))
    other.save(tmp_path / "idx", overwrite=True)
    assert loaded.doc_text("d47") == docs[47].full_text
    assert load_retriever(tmp_path / "idx").doc_text("d47").startswith("other title 47")


def test_kill_9_at_random_moments_leaves_the_old_or_the_new_index(tmp_path):
    path = tmp_path / "idx"
    _save(path, 0, 0, 0)
    start = time.perf_counter()
    _save(path, 1, 1, 0.002)
    whole = time.perf_counter() - start  # one unkilled save, start-up included
    committed, rng, outcomes = 1, random.Random(20), {"old": 0, "new": 0}
    for attempt in range(2, 26):
        writer = _python(WRITER, path, attempt, attempt, 0.002, stdout=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 1.1) * whole)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        version = _version(path)  # never absent, never mixed
        assert version in (committed, attempt)
        outcomes["new" if version == attempt else "old"] += 1
        committed = version
    _save(path, 99, 99, 0)
    assert _version(path) == 99
    assert sorted(p.name for p in path.iterdir()) == [".lock", "gen-%06d" % int(open_index(path).folder.name[4:]), "manifest.json"]
    assert outcomes["old"] and outcomes["new"], outcomes  # the kills landed before and after the switch


def test_eight_readers_while_a_writer_resaves_fifty_times(tmp_path):
    path = tmp_path / "idx"
    _save(path, 0, 0, 0)
    readers = [_python(READER, path, 8, stdout=subprocess.PIPE) for _ in range(8)]
    time.sleep(1.0)  # the readers' start-up
    _save(path, 1, 50, 0)
    results = [reader.communicate()[0].split(maxsplit=3) for reader in readers]
    assert all(int(failures) == 0 for _, _, failures, _ in results), results
    assert sum(int(reads) for reads, *_ in results) > 200
    assert max(int(versions) for _, versions, *_ in results) > 5  # the readers saw the saves go by
    assert _version(path) == 50


def test_two_writers_at_once_both_land_whole(tmp_path):
    path = tmp_path / "idx"
    writers = [_python(WRITER, path, 100 * w + 1, 100 * w + 20, 0, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for w in (1, 2)]
    for writer in writers:
        out, err = writer.communicate()
        assert writer.returncode == 0, err
        assert len(out.split()) == 20
    assert _version(path) in (120, 220)
    assert not [p for p in path.iterdir() if p.name.startswith(".partial-")]


def test_two_first_saves_without_overwrite_one_wins_the_other_is_told(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        from indexes.manifest import IndexSaveError, write_index_dir
        def fill(folder):
            time.sleep(0.5)
            (folder / "a").write_text(sys.argv[2])
            return {"kind": "test"}
        try:
            write_index_dir(sys.argv[1], fill)
            print("saved")
        except IndexSaveError as err:
            print("refused", err)
    """)
    procs = [_python(code, tmp_path / "idx", n, stdout=subprocess.PIPE) for n in ("1", "2")]
    outs = sorted(p.communicate()[0].split()[0] for p in procs)
    assert outs == ["refused", "saved"]
    assert open_index(tmp_path / "idx").manifest["kind"] == "test"


def test_leftovers_of_a_crashed_first_save_are_recovered(tmp_path):
    path = tmp_path / "idx"
    writer = _python(WRITER, path, 1, 1, 0.5, stdout=subprocess.PIPE)
    for _ in range(100):
        if path.exists() and any(p.name.startswith(".partial-") for p in path.iterdir()):
            break
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    with pytest.raises(IndexLoadError, match="first save has not finished"):
        open_index(path)
    write_index_dir(path, _fill)  # not refused: only leftovers of a save are there
    assert sorted(p.name for p in path.iterdir()) == [".lock", "gen-000001", "manifest.json"]


# ---------------------------------------------------------------- the manifest is untrusted input

@pytest.fixture
def saved_dense(tmp_path):
    docs = [Doc(f"d{i}", f"title {i}", f"text number {i}") for i in range(10)]
    r = build_retriever("dense", model="minilm")
    r.index(Corpus(docs))
    r.save(tmp_path / "idx")
    return tmp_path / "idx"


def _edit(path: Path, change) -> None:
    """Apply `change` to the generation's manifest and the pointer alike (as an attacker would)."""
    for file in (path / "manifest.json", current_folder(path) / "manifest.json"):
        manifest = json.loads(file.read_text())
        change(manifest)
        file.write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["files"].update({"../outside.txt": m["files"]["docids.txt"]}), "not a relative path inside"),
    (lambda m: m["files"].update({"/etc/passwd": m["files"]["docids.txt"]}), "not a relative path inside"),
    (lambda m: m.update(files={}), "must list the index's files"),
    (lambda m: m["files"].pop("docids.txt"), "not listed in manifest.json"),
    (lambda m: m.update(kind=["dense"]), "'kind' must be a non-empty string"),
    (lambda m: m.update(format="1"), "'format' must be a positive integer"),
    (lambda m: m.pop("config"), "'config' must be an object"),
    (lambda m: m.update(shards=["../../etc/passwd"]), "not a file of the index"),
    (lambda m: m.update(shards=["/etc/passwd"]), "not a file of the index"),
    (lambda m: m.update(onnx={"file": "/etc/passwd"}), "not a file of the index"),
    (lambda m: m.update(doc_count="ten"), "'doc_count' must be a positive integer"),
    (lambda m: m["config"].update(model="/usr/lib"), "outside the index; load it with trust_paths=True"),
    (lambda m: m["config"].update(model="../../.."), "outside the index; load it with trust_paths=True"),
    (lambda m: m["config"].update(search_params={"a": 1}), "faiss cannot use the saved index"),  # found by the fuzzer
])
def test_manifest_fields_are_checked(saved_dense, change, message):
    _edit(saved_dense, change)
    with pytest.raises(IndexLoadError, match=message):
        load_retriever(saved_dense)


def test_a_symlink_inside_the_index_is_refused(saved_dense, tmp_path):
    folder = current_folder(saved_dense)
    (tmp_path / "outside.txt").write_text("secret")
    (folder / "extra").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(IndexLoadError, match="symbolic link"):
        load_retriever(saved_dense)


def test_two_hundred_random_manifest_edits_give_index_load_errors_only(saved_dense):
    outcome = fuzz_manifests(saved_dense, 200, random.Random(200))
    assert outcome["other_exceptions"] == [] and outcome["IndexLoadError"] > 150, outcome
    load_retriever(saved_dense)  # restored


def test_concurrent_trec_writers_each_land_whole(tmp_path):
    """Was: two writers of one TREC file shared one fixed `.tmp` name; readers saw empty, cut and mixed files."""
    code = textwrap.dedent("""
        import sys
        from retrieval.run import Run
        tag = sys.argv[2]
        run = Run({f"q{i}": {f"{tag}-d{j}": float(j) for j in range(50)} for i in range(40)})
        for _ in range(30):
            run.to_trec(sys.argv[1], tag=tag)
    """)
    path = tmp_path / "run.trec"
    writers = [_python(code, path, tag, stderr=subprocess.PIPE) for tag in ("a", "b", "c")]
    seen = set()
    while any(w.poll() is None for w in writers):
        if path.exists():
            lines = path.read_text().splitlines()
            tags = {line.split()[-1] for line in lines}
            assert len(lines) == 2000 and len(tags) == 1, (len(lines), tags)
            seen |= tags
    assert all(w.wait() == 0 for w in writers)
    assert not [p for p in tmp_path.iterdir() if p.name != "run.trec"]  # no temporary file left


def test_a_model_folder_outside_the_index_is_read_only_when_trusted(tmp_path):
    import shutil

    from retrieval.models import model_path, trusting_paths

    shutil.copytree(model_path("minilm"), tmp_path / "my-model")
    r = build_retriever("dense", model=str(tmp_path / "my-model"))
    r.index(Corpus([Doc(f"d{i}", "", f"text number {i}") for i in range(5)]))
    r.save(tmp_path / "idx")
    with pytest.raises(IndexLoadError, match="'.*my-model', outside the index"):
        load_retriever(tmp_path / "idx")
    expected = r.search({"q": "number 3"}, k=2)
    assert load_retriever(tmp_path / "idx", trust_paths=True).search({"q": "number 3"}, k=2) == expected
    with trusting_paths():  # what the CLI's --trust-paths does
        assert load_retriever(tmp_path / "idx").search({"q": "number 3"}, k=2) == expected
    search = [sys.executable, "-m", "retrieval.cli", "search", "--index", str(tmp_path / "idx"), "--query", "number 3", "--k", "2"]
    refused = subprocess.run(search, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip().endswith("if you trust the index and that folder"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    trusted = subprocess.run(search + ["--trust-paths"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert trusted.returncode == 0 and list(expected["q"])[0] in trusted.stdout, trusted.stderr
