import json
import subprocess
import sys

import pytest
from conftest import REPO, TINY_QRELS, run_python

from eval.report import chromium
from eval.runner import evaluate
from retrieval import load_dataset, parse_spec
from indexes.manifest import current_folder


def dengen(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "retrieval.cli", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(done.stderr[-3000:])
    return done


def test_help_is_instant_and_imports_no_heavy_library():
    out = run_python("import sys, retrieval.cli as c; c.build_parser().format_help(); "
                     "print(sorted(m for m in ('torch','faiss','pyserini','jnius','sentence_transformers') if m in sys.modules))")
    assert out.strip() == "[]"
    assert "index" in dengen("--help").stdout


def test_cli_eval_equals_python_api(tiny_beir, tmp_path):
    dengen("eval", "--data", tiny_beir, "--retriever", "bm25", "--k", "1,5", "--out", tmp_path / "res", "--save-index", tmp_path / "bm25")
    record = json.loads((tmp_path / "res" / "tiny-test-bm25.json").read_text())
    api_record, run = evaluate(parse_spec("bm25"), load_dataset(tiny_beir), ks=(1, 5))
    assert record["metrics"] == pytest.approx(api_record.metrics) and record["schema_version"] == 1
    assert record["metrics"]["recall@5"] == 1.0
    assert set(record) >= {"retriever", "metrics", "index_bytes", "build_seconds", "latency_ms"}
    assert record["index_bytes"] > 0 and record["latency_ms"]["mean"] > 0
    # the TREC run written beside it scores the same through --run
    dengen("eval", "--data", tiny_beir, "--run", tmp_path / "res" / "tiny-test-bm25.trec", "--k", "1,5", "--out", tmp_path / "res2")
    again = json.loads((tmp_path / "res2" / "tiny-test-tiny-test-bm25.json").read_text())
    assert again["metrics"] == pytest.approx(record["metrics"])


def test_index_build_and_search(tiny_beir, tmp_path):
    out = dengen("index", "build", "--data", tiny_beir, "--retriever", "bm25:fields=multifield", "--out", tmp_path / "idx").stdout
    assert "indexed 8 documents" in out
    hits = dengen("search", "--index", tmp_path / "idx", "--query", "scurvy vitamin", "--k", "2").stdout.splitlines()
    assert len(hits) == 2 and hits[0].split()[2] == "d2" and "Scurvy" in hits[0] and hits[1].split()[2] == "d1"
    dengen("search", "--index", tmp_path / "idx", "--queries", tiny_beir / "queries.jsonl", "--out", tmp_path / "run.trec")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert {line.split()[0] for line in lines} == set(TINY_QRELS)


def test_index_build_sharded_dense_and_engine_refusal(tiny_beir, tmp_path):
    out = dengen("index", "build", "--data", tiny_beir, "--retriever", "dense:model=minilm", "--shards", "3",
                 "--out", tmp_path / "idx").stdout
    assert "indexed 8 documents" in out
    assert len(json.loads((tmp_path / "idx" / "manifest.json").read_text())["shards"]) == 3
    hits = dengen("search", "--index", tmp_path / "idx", "--query", "scurvy vitamin", "--k", "2").stdout.splitlines()
    assert hits[0].split()[2] == "d2"
    dengen("index", "build", "--data", tiny_beir, "--retriever", "dense:model=minilm", "--stream", "--out", tmp_path / "s")
    assert dengen("search", "--index", tmp_path / "s", "--query", "scurvy vitamin", "--k", "2").stdout.splitlines() == hits
    done = dengen("index", "build", "--data", tiny_beir, "--retriever", "bm25", "--engine", "ray", "--out",
                  tmp_path / "bm25", check=False)
    assert done.returncode != 0 and "engine='ray': a bm25 retriever indexes with engine 'local'" in done.stderr
    assert not (tmp_path / "bm25").exists()


def test_cli_reports_bad_input_with_file_and_line(tiny_beir):
    with open(tiny_beir / "corpus.jsonl", "a") as out:
        out.write('{"_id": "d9", "title": "no text"}\n')
    done = dengen("eval", "--data", tiny_beir, "--retriever", "bm25", check=False)
    assert done.returncode != 0
    assert f"{tiny_beir / 'corpus.jsonl'}, line 9, field 'text'" in done.stderr


def test_cli_refuses_damaged_index(tiny_beir, tmp_path):
    dengen("index", "build", "--data", tiny_beir, "--retriever", "bm25", "--out", tmp_path / "idx")
    (current_folder(tmp_path / "idx") / "docs.jsonl").write_text("")
    done = dengen("search", "--index", tmp_path / "idx", "--query", "x", check=False)
    assert done.returncode != 0 and "truncated" in done.stderr


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed")
def test_cli_report_writes_markdown_html_and_a_screenshot(tiny_beir, tmp_path):
    dengen("eval", "--data", tiny_beir, "--retriever", "bm25", "--out", tmp_path / "res")
    done = dengen("report", tmp_path / "res", "--out", tmp_path / "rep", "--screenshot", tmp_path / "page.png", "--window", "800x600")
    assert "| bm25 |" in done.stdout and (tmp_path / "rep" / "index.html").is_file()
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_through_mteb_agrees_with_the_runner(tiny_beir, tmp_path):
    dengen("eval", "--data", tiny_beir, "--retriever", "bm25", "--k", "1,5", "--out", tmp_path / "res")
    dengen("eval", "--data", tiny_beir, "--retriever", "bm25", "--k", "1,5", "--out", tmp_path / "res", "--mteb")
    ours = json.loads((tmp_path / "res" / "tiny-test-bm25.json").read_text())
    theirs = json.loads((tmp_path / "res" / "tiny-test-bm25-mteb.json").read_text())
    assert theirs["variant"] == "mteb" and set(theirs["metrics"]) == {f"{m}@{k}" for m in ("ndcg", "recall", "map", "mrr") for k in (1, 5)}
    assert theirs["metrics"] == pytest.approx({m: ours["metrics"][m] for m in theirs["metrics"]}, abs=1e-5)


def test_cli_eval_keep_missing_scores_as_trec_eval_and_drop_missing_warns(tmp_path):
    from conftest import TINY_QRELS, write_beir

    folder = write_beir(tmp_path / "d", qrels={**TINY_QRELS, "q1": {"d2": 1, "gone": 1}})
    refused = dengen("eval", "--data", folder, "--retriever", "bm25", check=False)
    assert refused.returncode == 2 and "'gone' is not in the corpus (--keep-missing scores it as trec_eval does" in refused.stderr
    kept = dengen("eval", "--data", folder, "--retriever", "bm25", "--keep-missing", "--k", "10", "--out", tmp_path / "k")
    dropped = dengen("eval", "--data", folder, "--retriever", "bm25", "--drop-missing", "--k", "10", "--out", tmp_path / "x")
    assert "not comparable to official ones" in dropped.stderr and "not comparable" not in kept.stderr
    recall = [json.loads((tmp_path / f / "d-test-bm25.json").read_text())["metrics"]["recall@10"] for f in ("k", "x")]
    assert recall == [pytest.approx(0.875), 1.0]  # q1 finds d2 but never the missing page: 1/2 for it, 7/8 over four


def test_cli_eval_sts_and_rarb_files(tmp_path):
    from test_rarb import write_mcr

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("score\tsentence1\tsentence2\n5\ta cat sat\ta cat sat\n0\ta cat sat\tstock prices fell\n"
                     "3\tthe dog ran\tthe dog ran fast\n")
    out = dengen("eval", "--sts", pairs, "--retriever", "dense:model=minilm", "--out", tmp_path / "r").stdout
    sts = json.loads((tmp_path / "r" / "pairs-encoder-minilm.json").read_text())
    assert (sts["task"], sts["dataset"], sts["family"]) == ("STS", "pairs", "STS") and sts["metrics"]["cosine_spearman"] == 1.0
    assert "STS (mean)" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("5,only two\n")
    done = dengen("eval", "--sts", bad, "--retriever", "dense:model=minilm", check=False)
    assert done.returncode == 2 and f"{bad}, line 1: expected 3 comma-separated columns" in done.stderr
    sets = write_mcr(tmp_path / "TempReason-l3-pure-test.csv", [
        ("Pick the cure.", "what cures scurvy", ["vitamin C cures scurvy", "chess openings"], 0)])
    dengen("eval", "--rarb", sets, "--retriever", "bm25", "--out", tmp_path / "m")
    names = sorted(json.loads(p.read_text())["dataset"] + " " + json.loads(p.read_text())["variant"] for p in (tmp_path / "m").glob("*.json"))
    assert names == ["TempReason-l3-pure instr", "TempReason-l3-pure no instr"]


def test_cli_train_dispatches_to_the_method_recipe(tmp_path):
    assert "adapter" in dengen("train", "--help").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rnaks: [8]\n")  # a misspelt key: the adapter recipe names the file and the key
    done = dengen("train", "adapter", "--config", bad, check=False)
    assert done.returncode != 0 and str(bad) in done.stderr and "rnaks" in done.stderr
    assert dengen("train", "nope", "--config", bad, check=False).returncode == 2
    # the trainer's own flags (--verify, --records) pass through: its parser, not dengen's, judges them
    done = dengen("train", "adapter", "--config", bad, "--frobnicate", check=False)
    assert done.returncode == 2 and "dengen train adapter" in done.stderr and "--frobnicate" in done.stderr
    done = dengen("search", "--index", tmp_path, "--query", "q", "--frobnicate", check=False)
    assert done.returncode == 2 and "unrecognized arguments: --frobnicate" in done.stderr
