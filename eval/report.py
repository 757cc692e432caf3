"""Leaderboard reports from results: Markdown, a static HTML page (sortable tables, plots inlined) and JSON.

Rows are retriever configurations (a result's `label`); columns are data sets in a setting (a result's
`column`), grouped by family (retrieval, STS, LIMIT, RAR-b, KILT, long documents) as the MTEB leaderboard
groups its tasks. A row's family mean is the mean over the family's data sets of its main metric, a data
set run in several settings (RAR-b with and without the instruction, QMSum whole or chunked) counting with
the row's best setting; a row missing a data set of the family has no mean there, as on MTEB's board. The
overall rank orders rows by their mean rank over all families, a family a row has no mean in counting as
ranked after every row that has one (MTEB's Borda count gives no points for a task not run). Results scored by another tool
for cross-checking (family MTEB) appear in a detail table only.
"""
from __future__ import annotations

import base64
import html
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from eval.record import SCHEMA_VERSION, Result

FAMILY_ORDER = ("retrieval", "STS", "LIMIT", "RAR-b", "KILT", "long documents")
CHECK_FAMILIES = ("MTEB",)  # the same data scored by another tool: detail only, never in a mean or rank


@dataclass
class Board:
    """The computed leaderboard: everything the Markdown, HTML and JSON show."""

    rows: list[str]
    families: dict[str, list[str]]  # family -> its columns, in order of first appearance
    cells: dict[tuple[str, str], Result]  # (row, column) -> the last result for it
    means: dict[tuple[str, str], float]  # (row, family) -> family mean, where the row has every data set
    rank: dict[str, int]  # row -> overall rank (1 best), for rows with at least one family mean
    costs: dict[str, dict]  # row -> latency_ms, index_mb, build_s and whatever profile was given
    missing: list[dict] = field(default_factory=list)  # cells that did not run: row, task, reason

    def ranked_families(self) -> list[str]:
        return [f for f in self.families if f not in CHECK_FAMILIES]


def _family_sort(name: str) -> tuple:
    return (name in CHECK_FAMILIES, FAMILY_ORDER.index(name) if name in FAMILY_ORDER else len(FAMILY_ORDER), name)


def _ranks(values: dict[str, float]) -> dict[str, int]:
    """Competition ranks (1, 2, 2, 4) of the highest-is-best `values`."""
    return {key: 1 + sum(other > value for other in values.values()) for key, value in values.items()}


def build_board(results: list[Result], missing: list[dict] | None = None, profiles: dict[str, dict] | None = None) -> Board:
    """The leaderboard of `results` (the last result of a cell wins); `missing` cells are listed with their
    reasons; `profiles` adds per-row facts (parameters, dims, docs/s) to the cost columns."""
    if not results:
        raise ValueError("no result records to report")
    rows = list(dict.fromkeys(r.label for r in results))
    cells = {(r.label, r.column): r for r in results}
    by_family: dict[str, list[str]] = {}
    for r in results:
        if r.column not in by_family.setdefault(r.family, []):
            by_family[r.family].append(r.column)
    families = {f: by_family[f] for f in sorted(by_family, key=_family_sort)}
    means = {}
    for family, columns in families.items():
        datasets = {r.dataset for r in results if r.family == family}
        for row in rows:
            best = {}
            for column in columns:
                if (row, column) in cells:
                    cell = cells[(row, column)]
                    best[cell.dataset] = max(best.get(cell.dataset, cell.score), cell.score)
            if best and len(best) == len(datasets):
                means[(row, family)] = statistics.fmean(best.values())
    family_ranks = [_ranks({row: means[(row, f)] for row in rows if (row, f) in means})
                    for f in families if f not in CHECK_FAMILIES]
    # a row without a family's mean ranks after every row that has one there (MTEB's Borda count gives a
    # model no points for a task it was not run on), so a row run on one family cannot top the board
    mean_rank = {row: statistics.fmean(ranks.get(row, len(ranks) + 1) for ranks in family_ranks)
                 for row in rows if any(row in ranks for ranks in family_ranks)}
    rank = _ranks({row: -value for row, value in mean_rank.items()})
    return Board(rows, families, cells, means, rank, {row: _costs(results, row, (profiles or {}).get(row, {})) for row in rows},
                 list(missing or []))


def _costs(results: list[Result], row: str, profile: dict) -> dict:
    """A row's one-query latency, index size and build time: from its retrieval results when it has any
    (the figures on other tasks' small corpora would flatter it), else over all its results."""
    mine = [r for r in results if r.label == row]
    mine = [r for r in mine if r.family == "retrieval"] or mine
    latency = [r.latency_ms["mean"] for r in mine if r.latency_ms]
    size = [r.index_bytes for r in mine if r.index_bytes is not None]
    built = max((r for r in mine if r.build_seconds is not None), key=lambda r: r.build_seconds, default=None)
    return {"latency_ms": statistics.fmean(latency) if latency else None,
            "index_mb": max(size) / 1e6 if size else None,
            "build_s": built.build_seconds if built else None,
            "docs_per_s": built.num_docs / built.build_seconds if built and built.num_docs and built.build_seconds > 0 else None,
            **profile}


COST_COLUMNS = (("latency_ms", "latency ms", "{:.1f}"), ("index_mb", "index MB", "{:.1f}"), ("build_s", "build s", "{:.0f}"),
                ("parameters", "parameters (M)", "{:.1f}"), ("dims", "dims", "{}"), ("docs_per_s", "docs/s indexed", "rate"))


def _fmt(value, pattern: str = "{:.4f}") -> str:
    if value is None:
        return "–"
    if pattern == "rate":  # whole numbers, but two significant digits below 10 (SitEmb indexes 0.033 meetings/s)
        pattern = "{:.0f}" if value >= 10 else "{:.2g}"
    return pattern.format(value)


def summary_table(board: Board) -> tuple[list[str], list[list[tuple[str, float | str | None]]]]:
    """Header and rows of (text, sort value): retriever, rank, each family's mean, then the costs."""
    families = board.ranked_families()
    costs = [c for c in COST_COLUMNS if any(board.costs[row].get(c[0]) is not None for row in board.rows)]
    header = ["retriever", "rank", *(f"{f} (mean)" for f in families), *(name for _, name, _ in costs)]
    body = []
    for row in sorted(board.rows, key=lambda r: (board.rank.get(r, len(board.rows) + 1), board.rows.index(r))):
        line = [(row, row), (str(board.rank[row]) if row in board.rank else "–", board.rank.get(row))]
        line += [(_fmt(board.means.get((row, f))), board.means.get((row, f))) for f in families]
        for key, _, pattern in costs:
            value = board.costs[row].get(key)
            shown = value / 1e6 if key == "parameters" and value is not None else value
            line.append((_fmt(shown, pattern), shown))
        body.append(line)
    return header, body


def detail_table(board: Board, family: str) -> tuple[list[str], list[list[tuple[str, float | str | None]]], set]:
    """Every metric of every column of one family: header, rows of (text, sort value) and the best cells."""
    columns = board.families[family]
    metrics = {c: list(dict.fromkeys(m for (row, col), r in board.cells.items() if col == c for m in r.metrics)) for c in columns}
    main = {c: next(r.main_metric for (_, col), r in board.cells.items() if col == c) for c in columns}
    order = [(c, m) for c in columns for m in sorted(metrics[c], key=lambda m: m != main[c])]  # main metric first
    header = ["retriever", *(f"{c} {m}" + (" *" if m == main[c] else "") for c, m in order)]
    rows = [row for row in board.rows if any((row, c) in board.cells for c in columns)]
    body, best = [], set()
    for row in rows:
        values = [board.cells[(row, c)].metrics.get(m) if (row, c) in board.cells else None for c, m in order]
        body.append([(row, row), *((_fmt(v), v) for v in values)])
    for j in range(1, len(header)):
        values = [line[j][1] for line in body if line[j][1] is not None]
        if values:
            best |= {(i, j) for i, line in enumerate(body) if line[j][1] == max(values)}
    return header, body, best


def _markdown(header: list[str], body: list[list[tuple]], best: set = frozenset()) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, line in enumerate(body):
        lines.append("| " + " | ".join(f"**{text}**" if (i, j) in best else text for j, (text, _) in enumerate(line)) + " |")
    return "\n".join(lines)


def markdown_report(board: Board) -> str:
    parts = ["## Summary", _markdown(*summary_table(board))]
    for family in board.families:
        note = " (the same data scored by another tool, a cross-check: not in the means)" if family in CHECK_FAMILIES else ""
        parts += [f"## {family}{note}", "Main metric marked *; best in bold.", _markdown(*detail_table(board, family))]
    if board.missing:
        parts += ["## Cells that did not run", "\n".join(f"- {m['row']} × {m['task']}: {m['reason']}" for m in board.missing)]
    return "\n\n".join(parts)


def markdown_table(results: list[Result]) -> str:
    """The summary and detail tables of `results` (what `dengen eval --suite` and `dengen report` print)."""
    return markdown_report(build_board(results))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task(board: Board, task: str, path: Path) -> bool:
    """Grouped bars for one task: a group per column (data set in a setting), a bar per row, the axis
    from 0. Returns False (nothing drawn) when there would be a single bar."""
    columns = list(dict.fromkeys(r.column for r in board.cells.values() if r.task == task))
    rows = [row for row in board.rows if any((row, c) in board.cells for c in columns)]
    if len(columns) * len(rows) < 2 or sum((row, c) in board.cells for row in rows for c in columns) < 2:
        return False
    plt = _pyplot()
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows) * len(columns) + 2), 4.2))
    top = 0.0
    for i, row in enumerate(rows):
        xs = [j + i * width for j, c in enumerate(columns) if (row, c) in board.cells]
        ys = [board.cells[(row, c)].score for c in columns if (row, c) in board.cells]
        top = max(top, *ys)
        ax.bar(xs, ys, width=width, label=row, color=plt.cm.tab20(i % 20))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))], columns, rotation=20 if len(columns) > 3 else 0,
                  ha="right" if len(columns) > 3 else "center", fontsize=8)
    metric = next(r.main_metric for r in board.cells.values() if r.task == task)
    ax.set_ylim(0, 1.0 if top <= 1.0 else top * 1.05)  # every bar from 0, scores on their natural scale
    ax.set_ylabel(metric)
    ax.set_title(task)
    ax.legend(fontsize=7, ncol=2 if len(rows) > 6 else 1, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both latency (lower) and quality (higher), fastest first."""
    front = []
    for x, y, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y, name))
    return front


def quality_points(board: Board) -> tuple[str, list[tuple[float, float, str]]]:
    """(family, points): each row's latency against its retrieval mean (else the first family rows share)."""
    for family in board.ranked_families():
        points = [(board.costs[row]["latency_ms"], board.means[(row, family)], row) for row in board.rows
                  if (row, family) in board.means and board.costs[row].get("latency_ms")]
        if len(points) >= 2:
            return family, points
    return "", []


def plot_quality_latency(board: Board, path: Path) -> bool:
    """Quality against one-query latency (log scale) with the Pareto front; False when under two points."""
    family, points = quality_points(board)
    if not points:
        return False
    plt = _pyplot()
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#4c72b0", zorder=2)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#c44e52", zorder=1, label="Pareto front")
    on_front = {p[2] for p in front}
    for x, y, name in points:
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                    fontweight="bold" if name in on_front else "normal")
    ax.set_xscale("log")
    ax.set_xlabel("query latency (ms, one query at a time, warm)")
    ax.set_ylabel(f"{family} mean")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _html_table(header, body, best=frozenset(), table_id="") -> str:
    head = "".join(f'<th data-col="{j}" title="click to sort">{html.escape(h)}</th>' for j, h in enumerate(header))
    lines = []
    for i, line in enumerate(body):
        cells = []
        for j, (text, value) in enumerate(line):
            sort = "" if value is None else html.escape(str(value))
            cells.append(f'<td data-sort="{sort}"{" class=best" if (i, j) in best else ""}>{html.escape(text)}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(lines) + "\n</tbody></table></div>")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; cursor: pointer; }}
th[data-dir="asc"]::after {{ content: " ▲"; }}
th[data-dir="desc"]::after {{ content: " ▼"; }}
div.scroll {{ overflow-x: auto; }}
td.best {{ font-weight: bold; background: #e8f4e8; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{count} results. Summary: family means of the main metric (a row missing a data set of a family has no
mean there), overall rank by mean family rank, and costs (one-query latency, index size). Click a column
header to sort.</p>
{summary}
{details}
{missing}
<h2>Quality against latency</h2>
{scatter}
<h2>Per task</h2>
{charts}
<script>
// sort a table by a clicked column: numbers by value (missing last), text alphabetically
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => {{
  const table = th.closest("table"), body = table.tBodies[0], col = +th.dataset.col;
  const dir = th.dataset.dir === "desc" ? "asc" : "desc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const key = tr => tr.cells[col].dataset.sort;
  const rows = [...body.rows].sort((a, b) => {{
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const nx = Number(x), ny = Number(y);
    const order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
    return dir === "asc" ? order : -order;
  }});
  rows.forEach(r => body.appendChild(r));
  table.dataset.sortedBy = col + " " + dir;
}}));
// lets a headless browser check that every plot decoded
window.addEventListener("load", () => {{
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok;
}});
</script>
</body></html>
"""


def _img(path: Path, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


REPORT_MARK = ".dengen-report"


def _check_report_folder(out: Path) -> None:
    """Refuse (DataError) to write into a folder holding files a report did not write: a report rewrites
    README.md, index.html and the rest, and dengen never overwrites a user's files. A folder with the mark,
    or an earlier report's files only (made before the mark existed), is a report folder."""
    from retrieval.errors import DataError

    if not out.exists() or (out / REPORT_MARK).is_file():
        return
    if not out.is_dir():
        raise DataError(out, None, None, "the report's --out must be a folder")
    names = {p.name for p in out.iterdir()}
    ours = names <= {"README.md", "index.html", "report.json"} | {n for n in names if n.endswith(".png")}
    page = out / "index.html"
    if names and not (ours and page.is_file() and "dengen" in page.read_text(encoding="utf-8", errors="replace")[:2000]):
        raise DataError(out, None, None, "holds files a dengen report did not write; choose a new or empty --out folder")


def write_report(results: list[Result], out: str | Path, title: str = "dengen leaderboard",
                 missing: list[dict] | None = None, profiles: dict[str, dict] | None = None) -> Path:
    """Write README.md, index.html (plots inlined), report.json and the PNGs into folder `out`;
    returns the HTML path."""
    from eval.runner import safe_name

    board = build_board(results, missing, profiles)
    out = Path(out)
    _check_report_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MARK).write_text("a dengen report folder: dengen report / leaderboard rewrite its files\n", encoding="utf-8")
    charts = []
    for task in dict.fromkeys(r.task for r in board.cells.values()):
        path = out / f"task-{safe_name(task)}.png"
        if plot_task(board, task, path):
            charts.append((task, path))
    scatter = out / "quality_latency.png"
    has_scatter = plot_quality_latency(board, scatter)
    images = ([f"![quality against latency]({scatter.name})"] if has_scatter else []) + [f"![{t}]({p.name})" for t, p in charts]
    (out / "README.md").write_text(f"# {title}\n\n{markdown_report(board)}\n\n" + "\n\n".join(images) + "\n", encoding="utf-8")
    family, points = quality_points(board)
    (out / "report.json").write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "title": title, "families": board.families,
        "rows": [{"label": row, "rank": board.rank.get(row), "costs": board.costs[row],
                  "means": {f: board.means[(row, f)] for f in board.families if (row, f) in board.means}} for row in board.rows],
        "pareto": {"family": family, "front": [p[2] for p in pareto_front(points)]},
        "missing": board.missing, "results": [r.to_json() for r in results],
    }, indent=2) + "\n", encoding="utf-8")
    details = []
    for f in board.families:
        header, body, best = detail_table(board, f)
        details.append(f"<h2>{html.escape(f)}</h2>" + _html_table(header, body, best, f"detail-{safe_name(f)}"))
    missing_html = ("<h2>Cells that did not run</h2><ul>" + "".join(
        f"<li>{html.escape(m['row'])} × {html.escape(m['task'])}: {html.escape(m['reason'])}</li>" for m in board.missing)
        + "</ul>") if board.missing else ""
    page = PAGE.format(
        title=html.escape(title), count=len(results), summary=_html_table(*summary_table(board), table_id="summary"),
        details="\n".join(details), missing=missing_html,
        scatter=_img(scatter, "quality against latency") if has_scatter else "<p>fewer than two rows with a latency and a family mean</p>",
        charts="\n".join(_img(p, t) for t, p in charts),
    )
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def chromium() -> str | None:
    """Debian's headless-capable Chromium, if installed (`make test` installs it)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page: str | Path, *, screenshot: str | Path | None = None, size: tuple[int, int] = (1200, 1600)) -> str:
    """Open an HTML page (a file, or an http URL) in headless Chromium: returns the DOM after scripts ran;
    with `screenshot`, also writes a PNG of the page at `size` (width, height in pixels)."""
    import subprocess
    import tempfile

    browser = chromium()
    if browser is None:
        raise FileNotFoundError("rendering needs Chromium: apt-get install chromium")
    uri = page if str(page).startswith(("http://", "https://")) else Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="dengen-chromium-") as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run([*flags, "--dump-dom", uri], capture_output=True, text=True, timeout=120, check=True).stdout
        if screenshot is not None:
            subprocess.run([*flags, f"--window-size={size[0]},{size[1]}", f"--screenshot={Path(screenshot).resolve()}", uri],
                           capture_output=True, timeout=120, check=True)
    return dom
