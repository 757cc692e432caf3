import pytest

from eval.report import chromium, column_name, load_records, markdown_table, render, write_report


def _record(label, dataset, value, latency, **extra):
    return {"label": label, "dataset": dataset, "metrics": {"ndcg@10": value, "recall@100": 0.9},
            "latency_ms": {"mean": latency}, "index_bytes": 2_000_000, **extra}


RECORDS = [
    _record("bm25", "scifact", 0.679, 4.0),
    _record("dense-minilm-Flat", "scifact", 0.645, 14.0),
    _record("bm25", "limit-small", 0.98, 3.0, main_metric="recall@100"),
    _record("dense-minilm-Flat", "qmsum", 0.2, 20.0, long_doc="chunk"),
]


def test_markdown_leaderboard_rows_columns_and_best():
    table = markdown_table(RECORDS)
    lines = table.splitlines()
    assert lines[0] == ("| retriever | scifact (ndcg@10) | limit-small (recall@100) | qmsum [chunk] (ndcg@10) "
                        "| latency ms (mean) | index MB (mean) |")
    assert lines[2] == "| bm25 | **0.6790** | **0.9000** | – | 3.5 | 2.0 |"
    assert lines[3] == "| dense-minilm-Flat | 0.6450 | – | **0.2000** | 17.0 | 2.0 |"


def test_column_names_carry_the_variant():
    assert column_name({"dataset": "ARC", "instruction": True}) == "ARC [instr]"
    assert column_name({"dataset": "ARC", "instruction": False}) == "ARC [no instr]"
    assert column_name({"dataset": "qmsum", "long_doc": "truncate"}) == "qmsum [truncate]"
    chunked = {"mode": "chunk", "window": 150, "stride": 75, "unit": "words", "chunks": 9}
    assert column_name({"dataset": "QMSum", "long_doc": chunked}) == "QMSum [chunk 150x75w]"
    truncated = {"mode": "truncate", "max_words": None, "max_tokens": 256}
    assert column_name({"dataset": "QMSum", "long_doc": truncated}) == "QMSum [truncate 256t]"
    assert column_name({"dataset": "ARC", "instruction": False}) == "ARC [no instr]"


def test_report_files_and_reload(tmp_path):
    import json

    for i, r in enumerate(RECORDS):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    (tmp_path / "not-a-result.json").write_text('{"machine": {}}')
    assert load_records(tmp_path) == RECORDS
    page = write_report(load_records(tmp_path), tmp_path / "report")
    assert (tmp_path / "report" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![per-dataset scores](scores.png)" in (tmp_path / "report" / "README.md").read_text()
    assert page.read_text().count("data:image/png;base64,") == 2


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_html_renders_table_and_images_in_headless_chromium(tmp_path):
    page = write_report(RECORDS, tmp_path / "report")
    shot = tmp_path / "shot.png"
    dom = render(page, screenshot=shot)
    assert 'data-images-loaded="2"' in dom  # both plots decoded to non-empty images
    assert dom.count("<tr>") == 1 + 2 and "<td class=\"best\">0.6790</td>" in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_render_without_chromium_says_how_to_get_it(tmp_path, monkeypatch):
    import eval.report

    monkeypatch.setattr(eval.report, "chromium", lambda: None)
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        render(write_report(RECORDS, tmp_path / "report"))
