"""Leaderboard reports from result records: a Markdown table, a static HTML page, PNG plots.

Rows are retriever configurations (a record's `label`), columns are datasets (with their variant, e.g.
chunked or with instruction) showing each record's main metric, then the mean query latency and the mean
index size over the row's results. Plots: per-dataset bars and quality against latency.
"""
from __future__ import annotations

import base64
import html
import json
import statistics
from pathlib import Path

DEFAULT_METRIC = "ndcg@10"


def load_records(folder: str | Path) -> list[dict]:
    """Every result record (*.json) under `folder`, in the order they were made (then by file name),
    so a suite's columns keep its task order."""
    found = []
    for path in sorted(Path(folder).rglob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and "metrics" in record and "label" in record:
            # dates have whole seconds; the file's write time orders records made within one second
            found.append(((record.get("date", ""), path.stat().st_mtime_ns), record))
    return [record for _, record in sorted(found, key=lambda pair: pair[0])]


def main_metric(record: dict) -> str:
    return record.get("main_metric") or (DEFAULT_METRIC if DEFAULT_METRIC in record["metrics"] else sorted(record["metrics"])[0])


def variant(record: dict) -> str | None:
    """What setting of its dataset a record scored: how long documents were read, or the instruction."""
    info = record.get("long_doc")
    if isinstance(info, str):
        return info
    if info:
        if info["mode"] == "chunk":
            return f"chunk {info['window']}x{info['stride']}{info['unit'][0]}"
        if info["mode"] == "truncate":
            limits = [f"{info[k]}{unit}" for k, unit in (("max_words", "w"), ("max_tokens", "t")) if info.get(k)]
            return "truncate " + ",".join(limits)
        return info["mode"]
    if "instruction" in record:
        return "instr" if record["instruction"] else "no instr"
    return None


def column_name(record: dict) -> str:
    """Dataset plus what makes this run a different setting of it."""
    setting = record.get("variant") or variant(record)
    name = record.get("dataset", "?")
    return f"{name} [{setting}]" if setting else name


def leaderboard(records: list[dict]) -> tuple[list[str], list[str], dict]:
    """(rows, columns, cells): cells[(row, column)] = (value, metric); the last record for a cell wins."""
    rows = list(dict.fromkeys(r["label"] for r in records))
    datasets = list(dict.fromkeys(r.get("dataset", "?") for r in records))
    # columns in order of first appearance, each dataset's settings side by side
    first = {}
    for r in records:
        first.setdefault(column_name(r), (datasets.index(r.get("dataset", "?")), len(first)))
    columns = sorted(first, key=first.get)
    cells = {}
    for r in records:
        metric = main_metric(r)
        cells[(r["label"], column_name(r))] = (r["metrics"][metric], metric)
    return rows, columns, cells


def _row_costs(records: list[dict], row: str) -> tuple[str, str]:
    mine = [r for r in records if r["label"] == row]
    latency = [r["latency_ms"]["mean"] for r in mine if r.get("latency_ms")]
    size = [r["index_bytes"] for r in mine if r.get("index_bytes") is not None]
    return (f"{statistics.fmean(latency):.1f}" if latency else "", f"{statistics.fmean(size) / 1e6:.1f}" if size else "")


def _table(records: list[dict]) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """Header, body rows and the (row, column) positions holding each column's best value."""
    rows, columns, cells = leaderboard(records)
    metric_of = {c: next(m for (_, col), (_, m) in cells.items() if col == c) for c in columns}
    header = ["retriever", *(f"{c} ({metric_of[c]})" for c in columns), "latency ms (mean)", "index MB (mean)"]
    body, best = [], set()
    for j, column in enumerate(columns, start=1):
        values = [cells[(row, column)][0] for row in rows if (row, column) in cells]
        top = max(values)
        best |= {(i, j) for i, row in enumerate(rows) if (row, column) in cells and cells[(row, column)][0] == top}
    for row in rows:
        body.append([row, *(f"{cells[(row, c)][0]:.4f}" if (row, c) in cells else "–" for c in columns), *_row_costs(records, row)])
    return header, body, best


def markdown_table(records: list[dict]) -> str:
    header, body, best = _table(records)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, row in enumerate(body):
        lines.append("| " + " | ".join(f"**{v}**" if (i, j) in best else v for j, v in enumerate(row)) + " |")
    return "\n".join(lines)


def plot_bars(records: list[dict], path: Path) -> None:
    """One panel per dataset: each configuration's main metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns, cells = leaderboard(records)
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 0.45 * len(rows) * nrows + 1.5 * nrows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        present = [row for row in rows if (row, column) in cells]
        ax.barh(present, [cells[(row, column)][0] for row in present], color="#4c72b0")
        ax.set_title(f"{column} — {cells[(present[0], column)][1]}", fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality_latency(records: list[dict], path: Path) -> None:
    """Main metric against mean query latency (log scale), one marker series per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for column in dict.fromkeys(column_name(r) for r in records):
        points = [(r["latency_ms"]["mean"], r["metrics"][main_metric(r)], r["label"]) for r in records
                  if column_name(r) == column and r.get("latency_ms")]
        if not points:
            continue
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=column)
        for x, y, label in points:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("mean query latency (ms, one query at a time)")
    ax.set_ylabel("main metric")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
div.scroll {{ overflow-x: auto; }}
td.best {{ font-weight: bold; background: #e8f4e8; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 1em 0; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{count} results. Rows: retriever configurations; columns: datasets with their main metric (best in bold),
then mean one-query latency and mean index size over the row's results.</p>
<div class="scroll"><table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></div>
<h2>Per-dataset scores</h2>
<img id="bars" alt="per-dataset scores" src="data:image/png;base64,{bars}">
<h2>Quality against latency</h2>
<img id="latency" alt="quality against latency" src="data:image/png;base64,{latency}">
<script>
// lets a headless browser check that every plot decoded
window.addEventListener("load", () => {{
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok;
}});
</script>
</body></html>
"""


def write_report(records: list[dict], out: str | Path, title: str = "dengen leaderboard") -> Path:
    """Write README.md, index.html (plots inlined) and the PNGs into folder `out`; returns the HTML path."""
    if not records:
        raise ValueError("no result records to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_bars(records, out / "scores.png")
    plot_quality_latency(records, out / "quality_latency.png")
    table = markdown_table(records)
    (out / "README.md").write_text(
        f"# {title}\n\n{table}\n\n![per-dataset scores](scores.png)\n\n![quality against latency](quality_latency.png)\n",
        encoding="utf-8",
    )
    header, body, best = _table(records)
    cells = "\n".join(
        "<tr>" + "".join(f'<td{" class=best" if (i, j) in best else ""}>{html.escape(v)}</td>' for j, v in enumerate(row)) + "</tr>"
        for i, row in enumerate(body)
    )
    page = PAGE.format(
        title=html.escape(title), count=len(records), head="".join(f"<th>{html.escape(h)}</th>" for h in header), body=cells,
        bars=base64.b64encode((out / "scores.png").read_bytes()).decode(),
        latency=base64.b64encode((out / "quality_latency.png").read_bytes()).decode(),
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def chromium() -> str | None:
    """Debian's headless-capable Chromium, if installed (`make test` installs it)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: str | Path, *, screenshot: str | Path | None = None, size: tuple[int, int] = (1200, 1600)) -> str:
    """Open an HTML page in headless Chromium: returns the DOM after scripts ran; with `screenshot`,
    also writes a PNG of the page at `size` (width, height in pixels)."""
    import subprocess
    import tempfile

    browser = chromium()
    if browser is None:
        raise FileNotFoundError("rendering needs Chromium: apt-get install chromium")
    uri = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="dengen-chromium-") as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run([*flags, "--dump-dom", uri], capture_output=True, text=True, timeout=120, check=True).stdout
        if screenshot is not None:
            subprocess.run([*flags, f"--window-size={size[0]},{size[1]}", f"--screenshot={Path(screenshot).resolve()}", uri],
                           capture_output=True, timeout=120, check=True)
    return dom
