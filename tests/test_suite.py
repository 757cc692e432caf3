"""`dengen eval --suite`: every task on a tiny data root, one report row per retriever, settings as columns."""
import json
import shutil

import pytest

from conftest import REPO, TINY_DOCS, shared, write_beir
from test_rarb import write_mcr

from eval.record import read_results
from eval.report import markdown_table
from eval.suite import QMSUM_CHUNKS, run_suite

# long enough that QMSum's 150-word windows split them: the relevant words sit in the second window
LONG_DOCS = [(d, t, " ".join(["filler"] * 160) + " " + text) for d, t, text in TINY_DOCS]


def data_root(tmp_path):
    root = tmp_path / "data"
    write_beir(root / "scifact")
    write_beir(root / "qmsum", docs=LONG_DOCS)
    shutil.copytree(shared("limit-small"), root / "limit-small")
    rows = [("Pick the cure.", "what cures scurvy", ["vitamin C cures scurvy", "chess openings"], 0),
            ("Pick the cure.", "what treats bacterial infection", ["volcano ash", "antibiotics treat infection"], 1)]
    (root / "rar-b-mcr").mkdir()
    write_mcr(root / "rar-b-mcr" / "ARC-Challenge-test.csv", rows)
    return root


def test_default_suite_runs_every_offline_task_for_bm25(tmp_path, capsys):
    out = tmp_path / "results"
    records = run_suite("bm25", out, data_root=data_root(tmp_path))
    said = capsys.readouterr().out
    assert "skip sts: bm25 has no text encoder" in said and "skip kilt:" in said
    assert "skip LIMIT (limit):" in said and "skip RAR-b alphanli:" in said  # absent from this root

    assert {r.label for r in records} == {"bm25"}  # one report row, whatever each task scored with
    columns = [r.column for r in records]
    window = f"{QMSUM_CHUNKS['window']}x{QMSUM_CHUNKS['stride']}w"
    assert columns == ["scifact", "limit-small", "ARC-Challenge [no instr]", "ARC-Challenge [instr]",
                       "QMSum [full]", f"QMSum [chunk {window}]", "scifact [mteb]"]
    by_column = dict(zip(columns, records))
    assert by_column["scifact"].metrics["ndcg@10"] > 0.9  # every tiny query has one obvious answer
    assert by_column[f"QMSum [chunk {window}]"].details["long_doc"]["chunks"] == 2 * len(LONG_DOCS)
    assert by_column["ARC-Challenge [no instr]"].metrics["accuracy"] == 1.0
    assert by_column["limit-small"].main_metric == "recall@2"
    assert by_column["scifact [mteb]"].metrics["ndcg@10"] == pytest.approx(by_column["scifact"].metrics["ndcg@10"], abs=1e-3)

    saved = read_results(out)  # each record is on disk, the report reads them back
    assert sorted(r.column for r in saved) == sorted(columns)
    assert all(json.loads(p.read_text())["details"]["suite"] == "default" for p in out.glob("*.json"))
    assert "QMSum [full]" in markdown_table(saved)


def test_suite_from_the_cli_with_chosen_tasks_and_name(tmp_path):
    from conftest import run_python

    root = data_root(tmp_path)
    run_python(f"from retrieval.cli import main; main(['eval', '--suite', 'default', '--tasks', 'scifact,qmsum', "
               f"'--retriever', 'bm25:k1=1.2', '--name', 'my-bm25', '--data-root', '{root}', '--out', '{tmp_path / 'r'}'])",
               cwd=REPO)
    records = read_results(tmp_path / "r")
    assert {r.label for r in records} == {"my-bm25"} and len(records) == 3
    assert all(r.retriever.get("k1", r.retriever.get("inner", {}).get("k1")) == 1.2 for r in records)


def test_kilt_task_with_a_knowledge_source(tmp_path):
    from test_kilt import gold_record, write_knowledge_source

    from eval.kilt import write_kilt

    root = data_root(tmp_path)
    write_knowledge_source(root / "kilt" / "kilt_knowledgesource.json")
    gold = [gold_record("a", ["101"]), gold_record("b", ["102"])]
    gold[0]["input"], gold[1]["input"] = "lack of vitamin C", "blood glucose hormone"
    write_kilt(gold, root / "kilt-dev" / "toy-dev-kilt.jsonl")

    (kilt,) = run_suite("bm25", tmp_path / "results", data_root=root, tasks=["kilt"])
    assert (kilt.column, kilt.main_metric, kilt.metrics["r-precision"]) == ("toy", "r-precision", 1.0)


def test_mteb_task_reuses_the_index_the_scifact_task_built(tmp_path, monkeypatch):
    from retrieval.api import Retriever

    indexed = []
    original = Retriever.index
    monkeypatch.setattr(Retriever, "index", lambda self, corpus: (indexed.append(len(corpus)), original(self, corpus))[1])
    ours, theirs = run_suite("bm25", tmp_path / "results", data_root=data_root(tmp_path), tasks=["scifact", "mteb"])
    assert indexed == [len(TINY_DOCS)]  # once, by the scifact task; mteb searched that same index
    assert theirs.metrics["ndcg@10"] == pytest.approx(ours.metrics["ndcg@10"], abs=1e-5)


def test_extra_rarb_set_files_in_the_data_root_are_scored_under_their_names(tmp_path):
    root = tmp_path / "data"
    rows = [("Pick the cure.", "what cures scurvy", ["vitamin C cures scurvy", "chess openings"], 0)]
    (root / "rar-b-mcr").mkdir(parents=True)
    write_mcr(root / "rar-b-mcr" / "TempReason-l3-pure-test.csv", rows)  # not one of the six known sets
    records = run_suite("bm25", tmp_path / "results", data_root=root, tasks=["rar-b"])
    assert [r.column for r in records] == ["TempReason-l3-pure [no instr]", "TempReason-l3-pure [instr]"]
    assert all(r.family == "RAR-b" and r.metrics["accuracy"] == 1.0 for r in records)


def test_squad_pages_task_scores_page_retrieval_as_kilt_does(tmp_path):
    import gzip

    root = tmp_path / "data"
    folder = root / "squad-v1.1-dev"
    (folder / "qrels").mkdir(parents=True)
    pages = [("Scurvy", "Scurvy is caused by a lack of vitamin C."), ("Insulin", "Insulin lowers blood glucose.")]
    with gzip.open(folder / "pages.jsonl.gz", "wt") as out:
        for title, text in pages:
            out.write(json.dumps({"_id": title, "title": title, "text": text}) + "\n")
    questions = {"a": ("lack of vitamin C", "Scurvy"), "b": ("what lowers blood glucose", "Insulin"),
                 "c": ("vitamin C lack causes what", "Scurvy"), "d": ("insulin lowers what", "Insulin")}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in questions.items()))
    (folder / "qrels" / "test-page.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{page}\t1\n" for q, (_, page) in questions.items()))
    (record,) = run_suite("bm25", tmp_path / "results", data_root=root, tasks=["squad-pages"])
    assert (record.family, record.main_metric, record.score, record.num_queries) == ("KILT", "r-precision", 1.0, 2)
    # only the questions the SQuAD recipes hold out (CorpusBrain's and UGR's seeded half) are scored
    from training.generative_eval import split_queries

    trained, held_out = split_queries(questions, 0.5, 0)
    assert len(trained) == len(held_out) == 2 and not set(trained) & set(held_out)
