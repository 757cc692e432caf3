"""Every user error is one line `dengen: error: ...` on stderr and exit status 2, raised before any long
work; bad data sources (damaged gzip, non-UTF-8 bytes, ids that break index files, devices, FIFOs,
overlong lines) are refused naming the file and line. A genuine bug keeps its traceback."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, write_beir

from retrieval import cli, data
from retrieval.dense.retriever import DenseRetriever
from retrieval.sparse.bm25 import BM25Retriever


def user_error(capsys, *argv, one_line: bool = True) -> str:
    """Run the CLI in this process; it must exit 2 with one stderr line, which is returned. `one_line=False`
    where the refusal comes after work that writes progress bars (only the last line is then checked)."""
    capsys.readouterr()  # drop what earlier calls wrote
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in argv])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("dengen: error: ") and (len(lines) == 1 or not one_line), lines
    return lines[-1]


def build(capsys, corpus, spec, tmp_path) -> str:
    return user_error(capsys, "index", "build", "--data", corpus, "--retriever", spec, "--out", tmp_path / "out")


def run_dengen(*argv, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, for inputs that could hang or exhaust memory if the check regressed."""
    return subprocess.run([sys.executable, "-m", "retrieval.cli", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def jsonl(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def doc_lines(n: int) -> list[str]:
    return [json.dumps({"_id": f"d{i}", "text": f"document number {i}"}) for i in range(n)]


class NoEncoding:
    """An encoder that knows its dimension but fails if anything is encoded."""

    dim = 384

    def encode_documents(self, texts, progress=False):
        raise AssertionError("the corpus was encoded before the spec was checked")

    encode_queries = encode_documents


@pytest.fixture
def no_work(monkeypatch):
    """Spec checks must fail before the corpus is read, encoded or indexed."""
    monkeypatch.setattr(DenseRetriever, "encoder", property(lambda self: NoEncoding()))
    monkeypatch.setattr(BM25Retriever, "_index", lambda self, corpus: pytest.fail("BM25 indexed before the spec was checked"))
    monkeypatch.setattr(data, "load_corpus", lambda *a, **k: pytest.fail("corpus read before the spec was checked"))
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("dataset read before the spec was checked"))


# ---------------------------------------------------------------- specs and options


@pytest.mark.parametrize("spec, names", [
    ("dense:modle=minilm", ["'modle'", "model", "index", "search_params"]),
    ("bm25:k=1.2", ["'k'", "k1", "b", "fields"]),
    ("bm25+dense:modle=minilm", ["'modle'", "model"]),  # a hybrid member
    ("bm25+dense@fuzion=rrf", ["'fuzion'", "fusion", "weights"]),  # the hybrid's own options
])
def test_unknown_option_names_the_key_and_the_valid_ones(capsys, tmp_path, no_work, spec, names):
    line = build(capsys, tmp_path / "corpus.jsonl", spec, tmp_path)
    assert "unknown option" in line and all(name in line for name in names), line


@pytest.mark.parametrize("spec, named", [
    ("dense:index=Flaat", "Flaat"),
    ("dense:index=PQ7", "PQ7"),  # parses, but 384 dimensions do not split into 7 sub-quantizers
    ("dense:index=HNSW32,search_params.efSerch=64", "efSerch"),
    ("bm25+dense:index=Flaat", "Flaat"),  # fails before the BM25 member is built
])
def test_bad_faiss_index_fails_before_the_corpus_is_read_or_encoded(capsys, tmp_path, no_work, spec, named):
    line = build(capsys, tmp_path / "corpus.jsonl", spec, tmp_path)
    assert named in line, line


def test_eval_checks_the_spec_before_reading_the_dataset(capsys, tmp_path, no_work):
    line = user_error(capsys, "eval", "--data", tmp_path, "--retriever", "dense:index=Flaat")
    assert "Flaat" in line


def test_unknown_engine_option_fails_before_the_corpus_is_read(capsys, tmp_path, no_work):
    line = user_error(capsys, "index", "build", "--data", tmp_path / "c.jsonl", "--retriever", "bm25",
                      "--engine", "ray", "--out", tmp_path / "out")
    assert "engine='ray'" in line


@pytest.mark.parametrize("k", ["0", "-1"])
def test_search_k_must_be_positive(capsys, tmp_path, k):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["search", "--index", str(tmp_path), "--query", "q", "--k", k])
    assert exit_.value.code == 2
    assert f"argument --k: must be a positive integer, got {k}" in capsys.readouterr().err


# ---------------------------------------------------------------- data files


def test_truncated_gzip_names_file_and_line(capsys, tmp_path):
    packed = gzip.compress("".join(line + "\n" for line in doc_lines(2000)).encode())
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(packed[: len(packed) // 2])
    line = build(capsys, corpus, "bm25", tmp_path)
    assert f"{corpus}, line " in line and "truncated" in line


def test_non_gzip_file_named_gz(capsys, tmp_path):
    corpus = jsonl(tmp_path / "corpus.jsonl.gz", doc_lines(3))  # plain text behind a .gz name
    line = build(capsys, corpus, "bm25", tmp_path)
    assert f"{corpus}, line 1: not a valid gzip file" in line


def test_non_utf8_byte_names_file_and_line(capsys, tmp_path):
    corpus = jsonl(tmp_path / "corpus.jsonl", doc_lines(3))
    with open(corpus, "ab") as out:
        out.write(b'{"_id": "d9", "text": "caf\xe9"}\n')  # Latin-1, not UTF-8
    line = build(capsys, corpus, "bm25", tmp_path)
    assert f"{corpus}, line 4: not UTF-8: byte 0xe9" in line


def test_doc_id_with_a_newline_is_refused_when_read(capsys, tmp_path):
    corpus = jsonl(tmp_path / "corpus.jsonl", doc_lines(2) + [json.dumps({"_id": "d\n9", "text": "x"})])
    line = build(capsys, corpus, "bm25", tmp_path)
    assert f"{corpus}, line 3, field '_id'" in line and "newline" in line


def test_query_id_with_a_tab_is_refused_when_read(capsys, tmp_path):
    folder = write_beir(tmp_path / "beir", queries={"q1": "first", "q\t2": "second"}, qrels={"q1": {"d1": 1}})
    line = user_error(capsys, "eval", "--data", folder, "--retriever", "bm25")
    assert f"{folder / 'queries.jsonl'}, line 2, field '_id'" in line


def test_dev_zero_is_refused_before_it_is_read(tmp_path):
    done = run_dengen("index", "build", "--data", "/dev/zero", "--retriever", "bm25", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["dengen: error: /dev/zero: a character device; data must be a regular file (or a folder of them)"]


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    done = run_dengen("index", "build", "--data", fifo, "--retriever", "bm25", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.splitlines() == [f"dengen: error: {fifo}: a FIFO; data must be a regular file (or a folder of them)"]
    done = run_dengen("index", "build", "--data", tmp_path, "--retriever", "bm25", "--out", tmp_path / "out")  # in a folder
    assert done.returncode == 2 and f"{fifo}: a FIFO" in done.stderr


def test_overlong_line_names_file_and_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 100)
    corpus = jsonl(tmp_path / "corpus.jsonl", doc_lines(2) + [json.dumps({"_id": "long", "text": "x" * 200})])
    line = build(capsys, corpus, "bm25", tmp_path)
    assert f"{corpus}, line 3: line longer than 100 bytes" in line


# ---------------------------------------------------------------- --overwrite


def test_overwrite_replaces_only_a_dengen_index(capsys, tmp_path):
    # Retriever.save judges the target, after indexing: BM25's progress bars come before the error line
    folder, out = write_beir(tmp_path / "beir"), tmp_path / "index"
    cli.main(["index", "build", "--data", str(folder), "--retriever", "bm25", "--out", str(out)])
    line = user_error(capsys, "index", "build", "--data", folder, "--retriever", "bm25", "--out", out, one_line=False)
    assert "--overwrite" in line
    cli.main(["index", "build", "--data", str(folder), "--retriever", "bm25", "--out", str(out), "--overwrite"])
    user_error(capsys, "eval", "--data", folder, "--retriever", "bm25", "--save-index", out, one_line=False)
    cli.main(["eval", "--data", str(folder), "--retriever", "bm25", "--save-index", str(out), "--overwrite"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    line = user_error(capsys, "index", "build", "--data", folder, "--retriever", "bm25", "--out", tmp_path / "mine",
                      "--overwrite", one_line=False)
    assert "not a dengen index" in line
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- bugs and interruptions


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, KeyError])
def test_a_genuine_bug_keeps_its_traceback(tmp_path, monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug("a bug, not a user error")

    monkeypatch.setattr(data, "load_corpus", broken)
    with pytest.raises(bug, match="a bug"):
        cli.main(["index", "build", "--data", str(tmp_path), "--retriever", "bm25", "--out", str(tmp_path / "out")])


def test_ctrl_c_is_one_line_and_exit_130(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load_corpus", interrupted)
    try:
        cli.main(["index", "build", "--data", str(tmp_path), "--retriever", "bm25", "--out", str(tmp_path / "out")])
    except SystemExit as exit_:
        assert exit_.code == 130 and capsys.readouterr().err == "dengen: interrupted\n"
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped dengen's main")
    else:
        pytest.fail("main returned after an interrupt")


def test_sigterm_takes_the_interrupt_path(tmp_path):
    code = (
        "import sys, time\n"
        "from retrieval import cli, data\n"
        "def slow(*a, **k):\n"
        "    print('reading', flush=True); time.sleep(60)\n"
        "data.load_corpus = slow\n"
        f"cli.main(['index', 'build', '--data', {str(tmp_path)!r}, '--retriever', 'bm25', '--out', {str(tmp_path / 'out')!r}])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "reading\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "dengen: interrupted\n"
