#!/usr/bin/env python
"""Exhaustive (Flat) search with faiss's own BLAS threshold against dengen's (indexes.faiss_index.BLAS_MIN_VALUES).

faiss picks a kernel by batch size: below `distance_compute_blas_threshold` query x dimension values it takes one
inner product at a time, from it one matrix multiply per block (BLAS). Per (vectors, dims, batch) cell, the same
random unit vectors and queries are searched for the top 10 with either threshold, alternating, `--repeats` times;
the JSON keeps the median and the slowest time of each and whether the two returned the same positions.

    .venv/bin/python scripts/bench_flat_paths.py --out results/bench_flat_paths.json
    .venv/bin/python scripts/bench_flat_paths.py --burn 2 --out results/bench_flat_paths-loaded.json
    .venv/bin/python scripts/bench_flat_paths.py --threshold 12288 --batches 1,2,4,8,32,128,300 --burn 2  # another switch

`--burn N` keeps N busy-loop processes running during the measurement (a loaded machine).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as dengen runs (retrieval/__init__.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench_common import busy_processes, machine_info, write_json  # noqa: E402
from indexes.faiss_index import BLAS_MIN_VALUES, faiss_module  # noqa: E402


def cell(faiss, faiss_default: int, threshold: int, n: int, dim: int, batches: list[int], repeats: int, rng) -> list[dict]:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    rows = []
    for batch in batches:
        queries = rng.standard_normal((batch, dim), dtype=np.float32)
        times: dict[str, list[float]] = {"faiss": [], "dengen": []}
        found = {}
        for _ in range(repeats):
            for name, threshold in (("faiss", faiss_default), ("dengen", threshold)):
                faiss.cvar.distance_compute_blas_threshold = threshold
                start = time.perf_counter()
                found[name] = index.search(queries, 10)[1]
                times[name].append((time.perf_counter() - start) * 1000)
        faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_VALUES
        row = {"vectors": n, "dim": dim, "batch": batch, "same_positions": bool(np.array_equal(found["faiss"], found["dengen"]))}
        for name, ms in times.items():
            row[f"{name}_ms_median"], row[f"{name}_ms_max"] = statistics.median(ms), max(ms)
        row["speedup_median"] = row["faiss_ms_median"] / row["dengen_ms_median"]
        rows.append(row)
        print(f"{n:>7} x {dim} batch {batch:>3}: faiss {row['faiss_ms_median']:8.2f} ms (max {row['faiss_ms_max']:8.2f})  "
              f"dengen {row['dengen_ms_median']:8.2f} ms (max {row['dengen_ms_max']:8.2f})  x{row['speedup_median']:.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,100000")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--batches", default="1,4,32,64,128,300")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--burn", type=int, default=0, help="busy-loop processes kept running meanwhile")
    parser.add_argument("--threshold", type=int, default=BLAS_MIN_VALUES,
                        help="the threshold measured as dengen's (query x dimension values; default: dengen's own)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_flat_paths.json"))
    args = parser.parse_args()
    import faiss

    faiss_default = faiss.cvar.distance_compute_blas_threshold  # read before dengen sets its own
    faiss_module()
    with busy_processes(args.burn):
        rng = np.random.default_rng(0)
        batches = [int(b) for b in args.batches.split(",")]
        rows = [row for n in map(int, args.sizes.split(",")) for dim in map(int, args.dims.split(","))
                for row in cell(faiss, faiss_default, args.threshold, n, dim, batches, args.repeats, rng)]
    write_json(args.out, {"command": " ".join(sys.argv), "burn": args.burn, "faiss_default_threshold": faiss_default,
                          "dengen_threshold": args.threshold, "faiss_omp_threads": faiss.omp_get_max_threads(),
                          "machine": machine_info(("faiss-cpu", "numpy")), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
