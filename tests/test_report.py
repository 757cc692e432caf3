import json
import re

import pytest

from eval.record import Result, read_results
from eval.report import build_board, chromium, markdown_report, pareto_front, plot_task, render, write_report


def _result(label, dataset, value, latency, family="retrieval", task=None, variant=None, metric="ndcg@10"):
    return Result(task=task or dataset, family=family, dataset=dataset, split="test", label=label, retriever={"kind": label},
                  metrics={metric: value, "recall@100": 0.9}, main_metric=metric, variant=variant,
                  latency_ms={"mean": latency}, index_bytes=2_000_000, num_docs=1000, build_seconds=4.0)


RESULTS = [
    _result("bm25", "scifact", 0.679, 4.0),
    _result("minilm", "scifact", 0.645, 14.0),
    _result("slow-and-bad", "scifact", 0.5, 50.0),
    _result("bm25", "limit-small", 0.98, 3.0, family="LIMIT", metric="recall@2"),
    _result("minilm", "limit-small", 0.16, 9.0, family="LIMIT", metric="recall@2"),
    _result("bm25", "ARC", 0.2, 3.0, family="RAR-b", task="RAR-b MCR", variant="no instr", metric="accuracy"),
    _result("bm25", "ARC", 0.3, 3.0, family="RAR-b", task="RAR-b MCR", variant="instr", metric="accuracy"),
    _result("minilm", "ARC", 0.25, 3.0, family="RAR-b", task="RAR-b MCR", variant="no instr", metric="accuracy"),
    _result("minilm", "scifact", 0.6451, 14.0, family="MTEB", task="MTEB", variant="mteb"),
]


def test_family_means_take_each_data_sets_best_setting_and_ranks_follow_mean_family_rank():
    board = build_board(RESULTS)
    assert board.families == {"retrieval": ["scifact"], "LIMIT": ["limit-small"], "RAR-b": ["ARC [no instr]", "ARC [instr]"],
                              "MTEB": ["scifact [mteb]"]}  # the cross-check family last
    assert board.means[("bm25", "RAR-b")] == pytest.approx(0.3)  # the better of its two settings
    assert board.means[("minilm", "RAR-b")] == pytest.approx(0.25)
    assert ("slow-and-bad", "LIMIT") not in board.means  # no LIMIT result: no mean there
    # family ranks: bm25 1,1,1; minilm 2,2,2; slow-and-bad 3 (retrieval only); MTEB is never ranked
    assert board.rank == {"bm25": 1, "minilm": 2, "slow-and-bad": 3}
    assert board.costs["minilm"]["latency_ms"] == 14.0  # its retrieval results' latency, not LIMIT's small corpus


def test_a_row_run_on_one_family_cannot_top_the_board():
    one_trick = _result("one-trick", "limit-small", 0.99, 1.0, family="LIMIT", metric="recall@2")
    board = build_board(RESULTS + [one_trick])
    # mean family ranks, a missing family ranked after every row that has it: bm25 (1+2+1)/3, minilm (2+3+2)/3,
    # one-trick (4+1+3)/3 although first on LIMIT, slow-and-bad (3+4+3)/3
    assert board.rank == {"bm25": 1, "minilm": 2, "one-trick": 3, "slow-and-bad": 4}


def test_markdown_summary_and_detail_tables():
    text = markdown_report(build_board(RESULTS, missing=[{"row": "slow-and-bad", "task": "limit", "reason": "no encoder"}]))
    summary = text.split("## retrieval")[0]
    assert "| retriever | rank | retrieval (mean) | LIMIT (mean) | RAR-b (mean) | latency ms | index MB | build s | docs/s indexed |" in summary
    assert "| bm25 | 1 | 0.6790 | 0.9800 | 0.3000 | 4.0 | 2.0 | 4 | 250 |" in summary
    assert "| slow-and-bad | 3 | 0.5000 | – | – |" in summary
    assert "| retriever | scifact ndcg@10 * | scifact recall@100 |" in text  # every metric, main one first
    assert "| bm25 | **0.6790** | **0.9000** |" in text
    assert "- slow-and-bad × limit: no encoder" in text
    slow = _result("situated", "scifact", 0.4, 66.0)
    slow.build_seconds = 30_000.0  # 1,000 documents in 30,000 s: a rate below one shows its digits, not 0
    assert "| 66.0 | 2.0 | 30000 | 0.033 |" in markdown_report(build_board(RESULTS + [slow]))


def test_pareto_front_keeps_points_no_other_beats_on_both_axes():
    points = [(4.0, 0.68, "bm25"), (14.0, 0.65, "minilm"), (35.0, 0.72, "hybrid"), (50.0, 0.5, "slow"), (4.0, 0.60, "same-speed-worse")]
    assert [name for _, _, name in pareto_front(points)] == ["bm25", "hybrid"]


def test_a_task_with_a_single_bar_gets_no_chart(tmp_path):
    board = build_board(RESULTS)
    assert plot_task(board, "scifact", tmp_path / "a.png") and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_task(build_board(RESULTS[:1]), "scifact", tmp_path / "b.png") and not (tmp_path / "b.png").exists()


def test_report_files_json_and_results_read_back(tmp_path):
    for i, r in enumerate(RESULTS):
        r.write(tmp_path / "results", f"r{i}")
    (tmp_path / "results" / "not-a-result.json").write_text('{"machine": {}}')
    assert read_results(tmp_path / "results") == RESULTS
    page = write_report(read_results(tmp_path / "results"), tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [row["label"] for row in report["rows"]] == ["bm25", "minilm", "slow-and-bad"]
    assert report["rows"][0]["means"]["LIMIT"] == 0.98 and report["pareto"]["front"] == ["bm25"]
    assert len(report["results"]) == len(RESULTS) and report["schema_version"] == 1
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    # no chart for MTEB: a single bar
    assert pngs == ["quality_latency.png", "task-RAR-b_MCR.png", "task-limit-small.png", "task-scifact.png"]
    assert page.read_text().count("data:image/png;base64,") == 4


def test_records_written_before_schema_versions_are_read():
    legacy = {"label": "bm25", "dataset": "ARC", "task": "RAR-b MCR", "instruction": True, "metrics": {"accuracy": 0.3},
              "main_metric": "accuracy", "tied_queries": 2, "date": "2026-01-01T00:00:00+0000"}
    result = Result.from_json(legacy)
    assert (result.family, result.column, result.score, result.details) == ("RAR-b", "ARC [instr]", 0.3,
                                                                          {"instruction": True, "tied_queries": 2})
    chunked = {"label": "bm25", "dataset": "QMSum", "metrics": {"ndcg@10": 0.5}, "task": "QMSum",
               "long_doc": {"mode": "chunk", "window": 150, "stride": 75, "unit": "words"}}
    assert Result.from_json(chunked).column == "QMSum [chunk 150x75w]"
    with pytest.raises(ValueError, match="x.json: result schema_version 99 is newer"):
        Result.from_json({**Result.from_json(chunked).to_json(), "schema_version": 99}, "x.json")
    with pytest.raises(ValueError, match="main metric 'ndcg@10' is not among"):
        Result(task="t", family="retrieval", dataset="d", split="", label="l", retriever={}, metrics={"p@1": 1.0},
               main_metric="ndcg@10")


def _sorted_page(page, header: int, clicks: int = 1):
    """The report with a script appended that clicks a summary header, as a user would."""
    text = page.read_text()
    click = (f"<script>window.addEventListener('load', () => {{ for (let i = 0; i < {clicks}; i++) "
             f"document.querySelector('#summary th[data-col=\"{header}\"]').click(); }});</script>")
    clicked = page.with_name("clicked.html")
    clicked.write_text(text.replace("</body>", click + "</body>"))
    return clicked


def _summary_order(dom: str) -> list[str]:
    body = dom.split('id="summary"')[1].split("</tbody>")[0]
    return re.findall(r"<tr><td data-sort=\"([^\"]*)\"", body)


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_html_sorts_by_a_clicked_header_and_every_image_decodes(tmp_path):
    page = write_report(RESULTS, tmp_path / "report")
    shot = tmp_path / "shot.png"
    dom = render(page, screenshot=shot)
    assert 'data-images-loaded="4"' in dom  # every plot decoded to a non-empty image
    assert _summary_order(dom) == ["bm25", "minilm", "slow-and-bad"]  # by rank
    latency = 2 + 3  # retriever, rank, three family means, then latency
    assert _summary_order(render(_sorted_page(page, latency))) == ["slow-and-bad", "minilm", "bm25"]  # highest first
    assert _summary_order(render(_sorted_page(page, latency, clicks=2))) == ["bm25", "minilm", "slow-and-bad"]
    limit = 3  # LIMIT mean: the row without one sorts last either way
    assert _summary_order(render(_sorted_page(page, limit, clicks=2)))[-1] == "slow-and-bad"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_render_without_chromium_says_how_to_get_it(tmp_path, monkeypatch):
    import eval.report

    monkeypatch.setattr(eval.report, "chromium", lambda: None)
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        render(write_report(RESULTS, tmp_path / "report"))


def test_a_report_never_overwrites_a_folder_it_did_not_write(tmp_path):
    from retrieval.errors import DataError

    user = tmp_path / "mine"
    user.mkdir()
    (user / "README.md").write_text("my notes")
    with pytest.raises(DataError, match="holds files a dengen report did not write"):
        write_report(RESULTS, user)
    assert (user / "README.md").read_text() == "my notes"
    write_report(RESULTS, tmp_path / "report")
    write_report(RESULTS, tmp_path / "report")  # its own folder: rewritten
    assert (tmp_path / "report" / ".dengen-report").is_file()
