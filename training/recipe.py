"""What every `dengen train METHOD --config FILE.yaml` recipe shares: reading the YAML against the
trainer's DEFAULTS (unknown keys name the file) and writing results.json atomically."""
from __future__ import annotations

import json
from pathlib import Path

from indexes.manifest import atomic_write


def read_recipe(path: str | Path, defaults: dict) -> dict:
    """`defaults` updated by the YAML mapping at `path`; a non-mapping or an unknown key exits naming the file."""
    import yaml

    with open(path, encoding="utf-8") as f:
        given = yaml.safe_load(f) or {}
    if not isinstance(given, dict):
        raise SystemExit(f"{path}: expected a mapping of keys to values")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def write_results(out: str | Path, report: dict) -> Path:
    """`out/results.json`, written to a temporary name first so a crash never leaves half a file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(report, indent=2))
    print(f"\nwrote {out / 'results.json'}")
    return out / "results.json"


def saved_row(out: str | Path, folder: str | Path) -> dict:
    """The row of `out/results.json` whose `folder` is `folder` (what a reload check compares against)."""
    path = Path(out) / "results.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    row = next((r for r in report["rows"] if r.get("folder") == str(folder)), None)
    if row is None:
        raise SystemExit(f"{path}: no row for {folder}")
    return row
