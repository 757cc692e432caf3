"""`dengen leaderboard run/check`: a YAML board filled cell by cell, cached by key, checked against expectations."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, write_beir
from test_suite import data_root

from eval.leaderboard import check_board, read_board, run_board
from retrieval.errors import DataError

BOARD = """\
title: tiny board
tolerance: 0.001
tasks:
  - scifact
  - {name: limit, sample: 50}
  - sts
rows:
  - name: BM25
    retriever: bm25
    expect:
      scifact: {ndcg@10: 1.0}
  - name: BM25 k1=0.5
    retriever: bm25:k1=0.5
"""


def board_file(tmp_path, text=BOARD):
    path = tmp_path / "board.yaml"
    path.write_text(text)
    return path


def test_board_fills_every_cell_keeps_empty_ones_with_reasons_and_reuses_the_cache(tmp_path, capsys):
    root, out = data_root(tmp_path), tmp_path / "out"
    board = read_board(board_file(tmp_path))
    filled = run_board(board, out, root)
    assert filled.computed == 6
    assert sorted((r.label, r.column) for r in filled.results) == [
        ("BM25", "limit-small"), ("BM25", "scifact"), ("BM25 k1=0.5", "limit-small"), ("BM25 k1=0.5", "scifact")]
    assert {(m["row"], m["task"]) for m in filled.missing} == {("BM25", "sts"), ("BM25 k1=0.5", "sts")}
    assert "no text encoder" in filled.missing[0]["reason"]
    assert {r.num_queries for r in filled.results if r.family == "LIMIT"} == {50}  # the seeded sample
    assert check_board(board, filled) == []

    again = run_board(board, out, root)  # nothing changed: every cell from the cache
    assert again.computed == 0 and again.results == filled.results and again.missing == filled.missing
    assert filled.seconds > 0 and again.seconds == filled.seconds  # the cost as the cells recorded it

    board.rows[0].expect["scifact"]["ndcg@10"] = 0.9  # a wrong expectation fails the check, naming the cell
    assert check_board(board, again) == ["BM25 / scifact / ndcg@10: 1.0000, expected 0.9 ± 0.001"]

    write_beir(root / "scifact", queries={"q1": "vitamin C deficiency scurvy"}, qrels={"q1": {"d2": 1}})  # new data
    third = run_board(read_board(board_file(tmp_path, BOARD + "  - name: BM25 k1=2\n    retriever: bm25:k1=2\n")), out, root)
    assert third.computed == 2 + 3  # scifact for the two old rows, every cell of the new row
    assert {r.num_queries for r in third.results if r.dataset == "scifact"} == {1}


def test_a_failing_cell_never_stops_the_board_and_is_retried(tmp_path, capsys):
    from retrieval import build_retriever
    from retrieval.data import load_dataset

    root = data_root(tmp_path)
    saved = tmp_path / "limit-index"
    retriever = build_retriever("bm25")
    retriever.index(load_dataset(root / "limit-small").corpus)
    retriever.save(saved)
    text = BOARD.replace("  - name: BM25 k1=0.5\n    retriever: bm25:k1=0.5\n", f"  - name: saved\n    retriever: {saved}\n")
    filled = run_board(read_board(board_file(tmp_path, text)), tmp_path / "out", root)
    reasons = {m["task"]: m["reason"] for m in filled.missing if m["row"] == "saved"}
    assert "ValueError: the index holds 46 documents; scifact has" in reasons["scifact"]  # built on another corpus
    assert any(r.label == "saved" and r.dataset == "limit-small" for r in filled.results)  # its own corpus scored
    capsys.readouterr()
    again = run_board(read_board(board_file(tmp_path, text)), tmp_path / "out", root)
    said = capsys.readouterr().out
    assert again.computed == 0 and "[saved] scifact ..." in said and "[BM25] scifact ..." not in said  # only the failure ran
    assert [m["row"] for m in again.missing if "ValueError" in m["reason"]] == ["saved"]


@pytest.mark.parametrize("text, where", [
    ("tasks: [scifact]\nrows:\n  - {name: a}\n", "line 3, field 'retriever': required"),
    ("tasks: [nope]\nrows:\n  - {name: a, retriever: bm25}\n", "field 'name': unknown task 'nope'"),
    ("tasks: [scifact]\nrows:\n  - name: a\n    retriever: bm25\n    expct: {}\n", "line 3, field 'expct': unknown row key"),
    ("tasks: [scifact]\nrows:\n  - name: a\n    retriever: bm25\n    expect: {scifact: {ndcg@10: high}}\n",
     "field 'scifact.ndcg@10': expected a number"),
    ("tasks: [{name: limit, sample: 0}]\nrows:\n  - {name: a, retriever: bm25}\n", "line 1, field 'sample'"),
    ("tasks: [scifact]\nrows:\n  - {name: a, retriever: bm25}\n  - {name: a, retriever: bm25}\n", "line 4, field 'name': row names"),
    ("tasks: [scifact\n", "not valid YAML"),
    ("cells: [a]\ntasks: [scifact]\nrows:\n  - {name: a, retriever: bm25}\n", "line 1, field 'cells': expected a folder path"),
])
def test_bad_boards_name_the_file_line_and_field(tmp_path, text, where):
    path = board_file(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_board(path)
    assert str(err.value).startswith(str(path)) and where in str(err.value)


def test_cli_check_fails_with_exit_2_on_a_score_outside_its_tolerance(tmp_path):
    root = data_root(tmp_path)
    path = board_file(tmp_path, BOARD.replace("ndcg@10: 1.0", "ndcg@10: 0.5"))
    code = (f"from retrieval.cli import main; main(['leaderboard', 'check', '{path}', '--out', '{tmp_path / 'out'}', "
            f"'--data-root', '{root}'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "FAIL BM25 / scifact / ndcg@10: 1.0000, expected 0.5 ± 0.001" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"dengen: error: {path}: 1 expected score(s) not reproduced")
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert {row["label"] for row in report["rows"]} == {"BM25", "BM25 k1=0.5"} and len(report["missing"]) == 2


def test_shipped_boards_parse_and_name_existing_recipes(monkeypatch):
    from retrieval.spec import parse_spec

    monkeypatch.chdir(REPO)  # a board's paths are relative to the repository root

    boards = sorted((REPO / "eval" / "leaderboards").glob("*.yaml"))
    assert {p.name for p in boards} >= {"default.yaml", "smoke.yaml"}
    for path in boards:
        for row in read_board(path).rows:  # read_board refuses a recipe whose config file is missing
            assert parse_spec(row.retriever).kind  # every spec names a known kind with valid options


def test_the_committed_store_reproduces_every_expected_score_of_the_default_board(monkeypatch, tmp_path):
    """Every cell of eval/leaderboards/default.yaml is in its committed store and holds the pinned scores: a
    changed expectation, a lost cell or a record the report can no longer read fails here, in seconds."""
    monkeypatch.chdir(REPO)  # a board's paths are relative to the repository root
    board = read_board(REPO / "eval" / "leaderboards" / "default.yaml")
    filled = run_board(board, tmp_path, only=set())  # nothing computed: the committed cells only
    stale = [(m["row"], m["task"]) for m in filled.missing if m["reason"] == "not computed yet"]
    if not filled.results:
        pytest.skip("the shared data differ from those the store was computed on (no cell key matches)")
    assert filled.computed == 0 and stale == []
    assert len(filled.profiles) == len(board.rows)  # every row names its size
    assert check_board(board, filled) == []


@pytest.mark.slow
def test_smoke_board_reproduces_its_expected_scores(tmp_path):
    """`dengen leaderboard check` on real data: BM25 (Anserini's SciFact 0.6789) and SPLADE rows."""
    done = subprocess.run([sys.executable, "-m", "retrieval.cli", "leaderboard", "check", "eval/leaderboards/smoke.yaml",
                           "--out", str(tmp_path / "board")], cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every expected score reproduced" in done.stdout
    report = json.loads((tmp_path / "board" / "report" / "report.json").read_text())
    assert [row["label"] for row in report["rows"]] == ["BM25", "SPLADE (splade-tiny)"]


def test_rows_limited_to_some_tasks_and_runs_limited_to_some_rows(tmp_path):
    root, out = data_root(tmp_path), tmp_path / "out"
    text = BOARD.replace("    retriever: bm25:k1=0.5\n", "    retriever: bm25:k1=0.5\n    tasks: [scifact]\n")
    board = read_board(board_file(tmp_path, text))
    first = run_board(board, out, root, only={"BM25 k1=0.5"})  # the other row is neither computed nor cached
    assert first.computed == 1 and [(r.label, r.column) for r in first.results] == [("BM25 k1=0.5", "scifact")]
    reasons = {(m["row"], m["task"]): m["reason"] for m in first.missing}
    assert reasons[("BM25 k1=0.5", "limit@50")] == "not run for this row (its tasks: scifact)"
    assert reasons[("BM25", "scifact")] == "not computed yet"
    with pytest.raises(DataError, match="field 'tasks': expected a list of the board's tasks"):
        read_board(board_file(tmp_path, text.replace("tasks: [scifact]", "tasks: [qmsum]")))
    # --task: only some tasks of a row computed now (a long row filled one session at a time)
    second = run_board(board, out, root, only={"BM25"}, only_tasks={"limit@50"})
    assert second.computed == 1 and ("BM25", "limit-small") in {(r.label, r.column) for r in second.results}
    reasons = {(m["row"], m["task"]): m["reason"] for m in second.missing}
    assert reasons[("BM25", "scifact")] == "not computed yet"
    assert run_board(board, out, root, only_tasks={"scifact"}).computed == 1  # the rest came from the cache


def test_a_check_limited_to_some_tasks_checks_the_other_expectations_on_the_stored_cells(tmp_path):
    root = data_root(tmp_path)
    board = read_board(board_file(tmp_path, f"cells: {tmp_path / 'store'}\n" + BOARD))
    assert run_board(board, tmp_path / "out", root).computed == 6  # the committed store, filled
    # `leaderboard check --task limit@50`: recomputes that task only, into OUT/cells
    checked = run_board(board, tmp_path / "check", root, cached=False, only_tasks={"limit@50"})
    assert checked.computed == 2 and (tmp_path / "check" / "cells" / "BM25" / "limit_50.json").is_file()
    assert ("BM25", "scifact") in {(r.label, r.column) for r in checked.results}  # read from the store
    assert check_board(board, checked) == []  # not "expected 1.0, not computed"
    board.rows[0].expect["scifact"]["ndcg@10"] = 0.9
    assert check_board(board, checked) == ["BM25 / scifact / ndcg@10: 1.0000, expected 0.9 ± 0.001"]
    # a board without a cells: folder keeps them in OUT/cells, for `run` and `check` with the same --out
    plain = read_board(board_file(tmp_path))
    assert run_board(plain, tmp_path / "plain", root).computed == 6
    checked = run_board(plain, tmp_path / "plain", root, cached=False, only={"BM25 k1=0.5"})
    assert checked.computed == 3 and check_board(plain, checked) == []  # that row's three cells only


def test_a_row_whose_tasks_keep_no_index_still_names_its_size(tmp_path):
    """QMSum builds its retrievers inside the task: the row's profile (parameters, dims) comes from its model."""
    root, out = data_root(tmp_path), tmp_path / "out"
    board = read_board(board_file(tmp_path, "title: t\ntasks: [qmsum]\nrows:\n  - name: MiniLM\n    retriever: dense:model=minilm\n"))
    filled = run_board(board, out, root)
    assert filled.computed == 1 and filled.profiles["MiniLM"]["parameters"] == 22713216
    assert filled.profiles["MiniLM"]["dims"] == 384


def test_a_task_revision_invalidates_the_cells_cached_before_it(monkeypatch, tmp_path):
    """squad-pages changed its questions (the held-out half only): its cells cached before must not be reused."""
    from eval import suite
    from eval.leaderboard import Row, Task, cell_key

    row, root = Row("BM25", "bm25"), tmp_path
    revised, scifact = cell_key(row, Task("squad-pages", 200), root), cell_key(row, Task("scifact"), root)
    monkeypatch.setattr(suite, "TASK_REVISIONS", {})
    assert cell_key(row, Task("squad-pages", 200), root) != revised
    assert cell_key(row, Task("scifact"), root) == scifact  # an unrevised task keeps its cached cells


def test_trained_rows_cells_are_keyed_on_the_recipe_and_survive_a_fresh_machine(monkeypatch, tmp_path):
    """A board's committed `cells:` store keys a trained row on its recipe's settings, not on its model files:
    on a machine that never trained the model the cells are reused; a changed recipe trains and computes again;
    --no-train without a model made by the recipe leaves the cell empty with its reason; a check never
    rewrites the store."""
    import shutil

    import training.adapter
    from eval.leaderboard import Task, cell_key
    from retrieval import build_retriever
    from retrieval.data import load_dataset

    root, made, recipe = data_root(tmp_path), tmp_path / "recipe-out", tmp_path / "recipe.yaml"
    recipe.write_text(f"out: {made}\nrank: 8\n")
    trained = []

    def train(argv):  # stands in for `dengen train adapter --config recipe.yaml`: the model and results.json
        import yaml

        trained.append(argv)
        retriever = build_retriever("bm25")
        retriever.index(load_dataset(root / "limit-small").corpus)
        retriever.save(made / "index", overwrite=True)
        (made / "results.json").write_text(json.dumps({"config": yaml.safe_load(recipe.read_text())}))

    monkeypatch.setattr(training.adapter, "main", train)
    text = (f"title: t\ncells: {tmp_path / 'store'}\ntasks:\n  - {{name: limit, sample: 50}}\nrows:\n  - name: trained\n"
            f"    retriever: {made / 'index'}\n    recipe: {{method: adapter, config: {recipe}}}\n")
    board = read_board(board_file(tmp_path, text))
    untrained = run_board(board, tmp_path / "out", root, train=False)
    assert untrained.computed == 0 and "--no-train, and no model made with the settings of" in untrained.missing[0]["reason"]

    first = run_board(board, tmp_path / "out", root)
    stored = tmp_path / "store" / "trained" / "limit_50.json"
    assert len(trained) == 1 and first.computed == 1 and stored.is_file()
    key = cell_key(board.rows[0], Task("limit", 50), root)
    train(["again"])  # the same recipe run again (new files, new times): the same key
    assert cell_key(board.rows[0], Task("limit", 50), root) == key

    shutil.rmtree(made)  # a fresh machine: the store came with the board, the model did not
    fresh = run_board(board, tmp_path / "out", root, train=False)
    assert fresh.computed == 0 and fresh.results == first.results

    stamp = stored.stat().st_mtime_ns
    checked = run_board(board, tmp_path / "out", root, cached=False)  # as `leaderboard check` runs it
    assert checked.computed == 1 and (tmp_path / "out" / "cells" / "trained" / "limit_50.json").is_file()
    assert stored.stat().st_mtime_ns == stamp

    recipe.write_text(f"out: {made}\nrank: 16\n")  # other settings: the model is made again, the cell computed again
    changed = run_board(board, tmp_path / "out", root)
    assert changed.computed == 1 and len(trained) == 4


@pytest.mark.parametrize("name, text", [("scifact.json", "my notes\n"), ("profile.json", '{"mine": 1}\n')])
def test_a_file_dengen_did_not_write_in_the_cell_store_is_refused_and_kept(tmp_path, name, text):
    root, store = data_root(tmp_path), tmp_path / "store"
    (store / "BM25").mkdir(parents=True)
    (store / "BM25" / name).write_text(text)
    board = read_board(board_file(tmp_path, f"cells: {store}\ntasks: [scifact]\nrows:\n  - {{name: BM25, retriever: bm25}}\n"))
    with pytest.raises(DataError, match="not a file dengen wrote for a leaderboard; move it away"):
        run_board(board, tmp_path / "out", root)
    assert (store / "BM25" / name).read_text() == text
    assert sorted(p.name for p in (store / "BM25").iterdir()) == [name]  # nothing computed or written beside it


def test_cli_report_renders_the_stored_cells_and_computes_nothing(tmp_path):
    root, out = data_root(tmp_path), tmp_path / "out"
    path = board_file(tmp_path)
    run_board(read_board(path), out, root, only={"BM25"})  # one row stored, the other never computed
    code = (f"from retrieval.cli import main; main(['leaderboard', 'report', '{path}', '--out', '{out}', "
            f"'--data-root', '{root}'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 cell(s) computed, 2 result(s)" in done.stdout and "[BM25 k1=0.5]" not in done.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert {row["label"] for row in report["rows"]} == {"BM25"}
    assert {m["reason"] for m in report["missing"] if m["row"] == "BM25 k1=0.5"} == {"not computed yet"}
    done = subprocess.run([sys.executable, "-c", code.replace("])", ", '--row', 'BM25'])")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "`leaderboard report` computes nothing" in done.stderr
    done = subprocess.run([sys.executable, "-c", code.replace("'report'", "'run'").replace("])", ", '--task', 'qmsum'])")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "--task: 'qmsum' not in" in done.stderr and "its tasks: scifact, limit@50, sts" in done.stderr
