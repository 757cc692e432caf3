"""The pure helpers of scripts/bench_scale.py's HNSW frontier (no index is built)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_scale  # noqa: E402


def test_frontier_cell_names_round_trip():
    assert bench_scale.frontier_cell(None) == "frontier-flat"
    assert bench_scale.frontier_cell((16, 200)) == "frontier-hnsw16-efc200"
    assert bench_scale.frontier_graph("frontier-hnsw16-efc200") == (16, 200)
    for other in ("frontier-flat", "hnsw32", "flat"):
        assert bench_scale.frontier_graph(other) is None


def test_frontier_cells_are_dense_with_their_factory():
    assert bench_scale.engine_family("frontier-hnsw32-efc40") == "dense"
    assert bench_scale.engine_family("bm25") == "bm25"
    assert bench_scale.dense_factory("frontier-hnsw32-efc40", 1000) == "HNSW32"
    assert bench_scale.dense_factory("frontier-flat", 1000) == "Flat"


def test_frontier_graphs_only_the_first_from_1m_unless_full():
    ms, efcs = [16, 32], [40, 200]
    all_pairs = [(16, 40), (16, 200), (32, 40), (32, 200)]
    assert bench_scale.frontier_graphs(100_000, ms, efcs, full=False) == all_pairs
    assert bench_scale.frontier_graphs(1_000_000, ms, efcs, full=False) == [(16, 40)]
    assert bench_scale.frontier_graphs(1_000_000, ms, efcs, full=True) == all_pairs


@pytest.mark.parametrize("queries, vectors, threads, expected", [
    (300, 20_000, 2, "sequential"),        # 300 * 384 = 115,200 < 128,000
    (334, 20_000, 2, "blas"),              # 334 * 384 = 128,256
    (1, 20_000, 2, "database-parallel"),   # fewer queries than threads, vectors >= 10,000
    (1, 9_999, 2, "sequential"),
    (1, 20_000, 1, "sequential"),
])
def test_flat_path_follows_faiss_rule(queries, vectors, threads, expected):
    assert bench_scale.flat_path(queries, vectors, 384, threads, blas_threshold=128_000, database_bs=1024) == expected


def test_frontier_options_need_flat():
    with pytest.raises(SystemExit):
        bench_scale.parse_args(["--engines", "hnsw32", "--frontier"])
    args = bench_scale.parse_args(["--engines", "flat", "--frontier", "--hnsw-m", "8", "--ef-search", "10,20"])
    assert (args.hnsw_m, args.ef_construction, args.ef_search) == ([8], [40, 200], [10, 20])
