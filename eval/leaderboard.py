"""A leaderboard as data: a YAML file of rows (retrievers) and tasks (columns), filled cell by cell.

    dengen leaderboard run eval/leaderboards/default.yaml --out results/leaderboard
    dengen leaderboard check eval/leaderboards/default.yaml --out results/leaderboard

The file (see eval/leaderboards/default.yaml):

    title: dengen leaderboard
    tolerance: 0.002                 # default allowed |score - expected|
    tasks:                           # eval.suite task names, or {name: ..., sample: N} for a seeded query sample
      - scifact
      - {name: squad-pages, sample: 200}
    rows:
      - name: BM25
        retriever: bm25              # any retriever spec: built-in, a saved index, a trained module folder
        expect:                      # column -> metric -> expected score, as pyserini's reproduction files pair
          scifact: {ndcg@10: 0.6789} # a command with its score
      - name: SEAL (LoRA)
        retriever: seal:model=results/seal-scifact-lora/model
        recipe: {method: seal, config: training/configs/seal-scifact-lora.yaml}   # trained when missing

Each cell (row x task) is stored under OUT/cells/, or in the board's own `cells:` folder (committed beside it,
so cells computed on one machine are reused on the next), with a key hashing the row's spec, the task and its
options, the task's data files (contents), and for a trained row its recipe's settings (for any other file
the spec names, sizes and modification times). A run skips every cell whose key is unchanged, so a long
board fills over several runs and a new row costs only that row. A cell that cannot run (a task a retriever
has no encoder for, missing data, a saved index built on another corpus) is kept empty with its reason; it
never stops the board.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from eval.record import Result
from indexes.manifest import atomic_write
from retrieval.errors import DataError, SpecError

BOARD_KEYS = {"title", "tolerance", "tasks", "rows", "cells"}
ROW_KEYS = {"name", "retriever", "recipe", "expect", "tolerance", "tasks"}
TASK_KEYS = {"name", "sample"}
HASH_CHUNK = 1 << 20


@dataclass
class Task:
    name: str  # an eval.suite task, or beir:FOLDER for any BEIR-layout folder given with --data
    sample: int | None = None

    @property
    def key(self) -> str:
        return self.name + (f"@{self.sample}" if self.sample else "")


@dataclass
class Row:
    name: str
    retriever: str | dict
    recipe: dict | None = None  # {"method": ..., "config": ...}: the recipe that makes the row's model
    expect: dict = field(default_factory=dict)  # column -> {metric: expected score}
    tolerance: float | None = None
    tasks: list[str] | None = None  # the board tasks this row runs (default all): SitEmb on chunk-level tasks only
    line: int | None = None  # where the row starts in the board file


@dataclass
class Board:
    path: Path
    title: str
    tasks: list[Task]
    rows: list[Row]
    tolerance: float = 0.002
    cells: Path | None = None  # the board's committed cell store (default OUT/cells)


def _load_with_lines(text: str):
    """YAML (safe) with the line each mapping starts on kept under "__line__", for error messages."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        value = loader.construct_mapping(node, deep=True)
        value["__line__"] = node.start_mark.line + 1
        return value

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)


def _plain(value):
    """`value` without the loader's line marks."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_board(path: str | Path) -> Board:
    """The board at `path`; any problem is a DataError naming the file, the line and the field."""
    import yaml

    from eval.suite import TASKS

    path = Path(path)
    try:
        data = _load_with_lines(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, f"not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise DataError(path, None, None, "expected a mapping with tasks: and rows:")

    def check_keys(mapping: dict, allowed: set, what: str) -> None:
        unknown = sorted(set(mapping) - allowed - {"__line__"})
        if unknown:
            raise DataError(path, mapping.get("__line__"), unknown[0], f"unknown {what} key; known: {', '.join(sorted(allowed))}")

    check_keys(data, BOARD_KEYS, "board")
    for key in ("tasks", "rows"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise DataError(path, data.get("__line__"), key, "a non-empty list is required")
    tolerance = _number(data.get("tolerance", 0.002), path, data.get("__line__"), "tolerance")
    cells = data.get("cells")
    if cells is not None and not isinstance(cells, str):
        raise DataError(path, data.get("__line__"), "cells", f"expected a folder path, got {cells!r}")
    tasks = []
    for entry in data["tasks"]:
        entry = entry if isinstance(entry, dict) else {"name": entry, "__line__": data["__line__"]}
        check_keys(entry, TASK_KEYS, "task")
        name = entry.get("name")
        if not isinstance(name, str) or (name not in TASKS and not name.startswith("beir:")):
            raise DataError(path, entry["__line__"], "name", f"unknown task {name!r}; choose from {', '.join(TASKS)} or beir:FOLDER")
        sample = entry.get("sample")
        if sample is not None and (not isinstance(sample, int) or isinstance(sample, bool) or sample < 1):
            raise DataError(path, entry["__line__"], "sample", f"expected a positive whole number, got {sample!r}")
        tasks.append(Task(name, sample))
    rows, names = [], set()
    for entry in data["rows"]:
        if not isinstance(entry, dict):
            raise DataError(path, data["__line__"], "rows", f"each row is a mapping, got {entry!r}")
        check_keys(entry, ROW_KEYS, "row")
        line = entry["__line__"]
        for key in ("name", "retriever"):
            if key not in entry:
                raise DataError(path, line, key, "required")
        if not isinstance(entry["name"], str) or entry["name"] in names:
            raise DataError(path, line, "name", f"row names must be distinct strings, got {entry['name']!r}")
        names.add(entry["name"])
        recipe = entry.get("recipe")
        if recipe is not None:
            check_keys(recipe, {"method", "config"}, "recipe")
            _check_recipe(_plain(recipe), path, recipe["__line__"])
        expect = entry.get("expect") or {}
        if not isinstance(expect, dict):
            raise DataError(path, line, "expect", "expected column: {metric: score}")
        for column, metrics in _plain(expect).items():
            if not isinstance(metrics, dict) or not metrics:
                raise DataError(path, expect.get("__line__", line), column, "expected {metric: score, ...}")
            for metric, value in metrics.items():
                _number(value, path, expect.get("__line__", line), f"{column}.{metric}")
        row_tolerance = entry.get("tolerance")
        row_tasks = entry.get("tasks")
        if row_tasks is not None and (not isinstance(row_tasks, list) or not set(row_tasks) <= {t.name for t in tasks}):
            raise DataError(path, line, "tasks", f"expected a list of the board's tasks ({', '.join(t.name for t in tasks)}), "
                                                 f"got {row_tasks!r}")
        rows.append(Row(entry["name"], _plain(entry["retriever"]), _plain(recipe), _plain(expect),
                        None if row_tolerance is None else _number(row_tolerance, path, line, "tolerance"),
                        row_tasks, line))
    return Board(path, str(data.get("title", path.stem)), tasks, rows, tolerance, Path(cells) if cells else None)


def _number(value, path: Path, line: int | None, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, line, name, f"expected a number, got {value!r}")
    return float(value)


def _check_recipe(recipe: dict, path: Path, line: int) -> None:
    from retrieval.cli import TRAINERS

    if recipe.get("method") not in TRAINERS:
        raise DataError(path, line, "method", f"unknown recipe method {recipe.get('method')!r}; choose from {', '.join(sorted(TRAINERS))}")
    if not Path(str(recipe.get("config"))).is_file():
        raise DataError(path, line, "config", f"no recipe file {recipe.get('config')!r}")


# ---------------------------------------------------------------- cell keys


def _file_digest(path: Path, content: bool) -> str:
    stat = path.stat()
    if not content:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(path: Path, content: bool) -> str:
    """A digest of a file or a folder's files (contents, or sizes and modification times)."""
    if not path.exists():
        return "missing"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path) if file != path else file.name}={_file_digest(file, content)}\n".encode())
    return digest.hexdigest()


def _paths_in(spec) -> list[Path]:
    """The existing files and folders a spec names (saved indexes, trained modules, model folders)."""
    from retrieval.spec import spec_to_config

    found = []

    def visit(value):
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and ("/" in value or value.startswith(".")) and Path(value).exists():
            found.append(Path(value))

    try:
        config = spec_to_config(spec)
    except SpecError:  # e.g. a saved index a recipe has not written yet: keyed by its text, the cell says why
        return []
    visit(config if isinstance(config, dict) else {"spec": config})
    return found


def task_data(task: Task, root: Path) -> list[Path]:
    from eval.suite import TASK_DATA

    if task.name.startswith("beir:"):
        return [Path(task.name[5:])]
    return [root / name for name in TASK_DATA[task.name]]


def cell_key(row: Row, task: Task, root: Path) -> str:
    """What a cell's result depends on, hashed: the spec, the task, its data, and the recipe's settings for
    the models a recipe makes (so a cell survives the machine its model was trained on), the sizes and
    modification times of any other file the spec names."""
    from eval.suite import TASK_REVISIONS

    revision = TASK_REVISIONS.get(task.name)
    named = _paths_in(row.retriever)
    parts = {
        "retriever": row.retriever,
        "task": task.key + (f"#{revision}" if revision else ""),
        "data": {str(p.name): tree_digest(p, content=True) for p in task_data(task, root)},
    }
    if row.recipe:
        settings, made = recipe_settings(row)
        parts["recipe"] = {"method": row.recipe["method"], "config": settings}
        named = [p for p in named if not p.resolve().is_relative_to(made.resolve())]
    parts["named_files"] = {str(p): tree_digest(p, content=False) for p in named}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- running


@dataclass
class Filled:
    """What a board run produced: every result, the cells that did not run, per-row profiles."""

    results: list[Result]
    missing: list[dict]
    profiles: dict[str, dict]
    computed: int  # cells computed in this run (the rest came from the cache)
    seconds: float = 0.0  # what its cells cost when they were computed (their recorded `seconds`): the board's cost


def _cell_path(store: Path, row: Row, task: Task) -> Path:
    from eval.runner import safe_name

    return store / safe_name(row.name) / f"{safe_name(task.key)}.json"


def _stored(path: Path, field: str) -> dict | None:
    """The JSON dengen stored at `path` (a cell has "key", a profile "spec"), None when there is none. Any other
    file there is refused before work starts: dengen never writes over a file it did not write."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        stored = None
    if not isinstance(stored, dict) or field not in stored:
        raise DataError(path, None, None, "not a file dengen wrote for a leaderboard; move it away, "
                                          "dengen will not write over it")
    return stored


def _read_cell(path: Path, key: str) -> dict | None:
    cell = _stored(path, "key")
    return cell if cell and cell["key"] == key else None


def recipe_settings(row: Row) -> tuple[dict, Path]:
    """The settings the row's recipe file gives (as JSON values) and the folder its models are written to."""
    import importlib

    import yaml

    from retrieval.cli import TRAINERS

    given = yaml.safe_load(Path(row.recipe["config"]).read_text(encoding="utf-8")) or {}
    module = importlib.import_module(TRAINERS[row.recipe["method"]])
    return json.loads(json.dumps(given)), Path(given.get("out", module.DEFAULTS.get("out", "")))


def recipe_is_current(row: Row) -> bool:
    """Whether the recipe's out/results.json was made with every setting its file now gives."""
    given, out = recipe_settings(row)
    results = out / "results.json"
    if not results.is_file():
        return False
    made = json.loads(results.read_text(encoding="utf-8")).get("config", {})
    return all(made.get(k) == v for k, v in given.items())


def ensure_trained(row: Row) -> None:
    """Run the row's recipe unless its output's results.json was made from the same settings."""
    if not row.recipe or recipe_is_current(row):
        return
    import importlib

    from retrieval.cli import TRAINERS

    config = row.recipe["config"]
    print(f"{row.name}: dengen train {row.recipe['method']} --config {config} (no model made with its settings)")
    importlib.import_module(TRAINERS[row.recipe["method"]]).main(["--config", str(config)])


def _profile(retriever) -> dict:
    """Parameters of every torch model the retriever holds, and its vector size when it has one."""
    import torch

    seen, parameters = set(), 0

    def visit(obj, depth: int) -> None:
        nonlocal parameters
        if id(obj) in seen or depth > 4:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    parameters += p.numel()
            return
        children = obj if isinstance(obj, (list, tuple)) else getattr(obj, "__dict__", {}).values()
        for child in children:
            if isinstance(child, (torch.nn.Module, list, tuple)) or hasattr(child, "__dict__") and \
                    type(child).__module__.split(".")[0] in ("retrieval", "sentence_transformers", "indexes"):
                visit(child, depth + 1)

    from retrieval.longdoc import encoder_of

    encoder = encoder_of(retriever)  # first: it loads a lazy encoder, whose parameters then count
    visit(retriever, 0)
    return {"parameters": parameters or None, "dims": getattr(encoder, "dim", None) if encoder is not None else None}


def run_board(board: Board, out: str | Path, data_root: str | Path | None = None, *, train: bool = True,
              cached: bool = True, only: set[str] | None = None, only_tasks: set[str] | None = None) -> Filled:
    """Fill every cell of `board` not already stored with the same key (every cell when not `cached`);
    write each as it finishes. Cells live in the board's `cells:` folder, or OUT/cells when it has none or
    when not `cached` (a check never rewrites the committed cells). With `only`, rows not named there are
    read from the cache, never computed; with `only_tasks` (task names or keys, e.g. "squad-pages@200"),
    the same for the other tasks, so one row's long cells can be filled one session at a time. A check
    limited so (not `cached`) reads the cells it does not compute where `run` keeps them."""
    from eval.suite import TASKS, Skip, SuiteRun, retrieval_task
    from retrieval.data import shared_data

    root = Path(data_root) if data_root else shared_data()
    store = board.cells if board.cells and cached else Path(out) / "cells"
    results, missing, profiles, computed, seconds = [], [], {}, 0, 0.0
    for row in board.rows:
        ctx = None
        profile_path = _cell_path(store, row, Task("profile"))
        stored = _stored(profile_path, "spec")  # refuses a foreign file before the row's work
        for task in board.tasks:
            if row.tasks is not None and task.name not in row.tasks:
                missing.append({"row": row.name, "task": task.key, "reason": "not run for this row (its tasks: "
                                f"{', '.join(row.tasks)})"})
                continue
            key = cell_key(row, task, root)
            path = _cell_path(store, row, task)
            cell = _read_cell(path, key)
            cell = cell if cached else None
            out_of_scope = ((only is not None and row.name not in only)
                            or (only_tasks is not None and not {task.name, task.key} & only_tasks))
            if cell is None and out_of_scope and not cached:  # a limited check: the rest as `run` stored them
                cell = _read_cell(_cell_path(board.cells or Path(out) / "cells", row, task), key)
            if cell is None and out_of_scope:
                missing.append({"row": row.name, "task": task.key, "reason": "not computed yet"})
                continue
            if cell is None and not train and row.recipe and not recipe_is_current(row):
                missing.append({"row": row.name, "task": task.key, "reason": "not computed yet (--no-train, and no "
                                f"model made with the settings of {row.recipe['config']})"})
                continue
            if cell is None:
                if ctx is None:
                    if train:
                        ensure_trained(row)
                    ctx = SuiteRun(row.retriever, root)
                ctx.sample = task.sample
                run = retrieval_task(Path(task.name[5:]).resolve()) if task.name.startswith("beir:") else TASKS[task.name]
                start = time.perf_counter()
                print(f"[{row.name}] {task.key} ...", flush=True)
                try:
                    new = [dataclasses.replace(r, label=row.name) for r in run(ctx)]
                    cell = {"key": key, "row": row.name, "task": task.key, "results": [r.to_json() for r in new]}
                except Skip as why:
                    cell = {"key": key, "row": row.name, "task": task.key, "skipped": str(why)}
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # one cell's failure leaves the rest of the board running
                    traceback.print_exc(file=sys.stderr)
                    reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                    missing.append({"row": row.name, "task": task.key, "reason": reason})
                    continue  # not cached: the next run tries again
                cell["seconds"] = round(time.perf_counter() - start, 1)  # what the cell cost: the board's cost
                atomic_write(path, json.dumps(cell, indent=2) + "\n")
                computed += 1
                print(f"[{row.name}] {task.key}: {cell.get('skipped') or f'{len(new)} result(s)'} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            seconds += cell.get("seconds", 0.0)
            if "skipped" in cell:
                missing.append({"row": row.name, "task": task.key, "reason": cell["skipped"]})
            else:
                results += [Result.from_json(r, path) for r in cell["results"]]
        # its index from a retrieval task, else (QMSum keeps none) the retriever its last task used
        built = (next(iter(ctx.built.values()), None) or ctx.last) if ctx else None
        if built is not None:
            profiles[row.name] = {**_profile(built), "spec": row.retriever}
            atomic_write(profile_path, json.dumps(profiles[row.name], indent=2) + "\n")
        elif stored:
            profiles[row.name] = stored
    return Filled(results, missing, profiles, computed, seconds)


def check_board(board: Board, filled: Filled) -> list[str]:
    """Every expected score outside its tolerance, or expected but not computed, as one line each."""
    failures = []
    by_cell = {(r.label, r.column): r for r in filled.results}
    for row in board.rows:
        tolerance = row.tolerance if row.tolerance is not None else board.tolerance
        for column, metrics in row.expect.items():
            result = by_cell.get((row.name, column))
            for metric, expected in metrics.items():
                if result is None or metric not in result.metrics:
                    failures.append(f"{row.name} / {column} / {metric}: expected {expected}, not computed")
                elif abs(result.metrics[metric] - expected) > tolerance:
                    failures.append(f"{row.name} / {column} / {metric}: {result.metrics[metric]:.4f}, "
                                    f"expected {expected} ± {tolerance}")
    return failures
