import pytest

from retrieval.hybrid import fuse, rrf, weighted_sum


def test_rrf_worked_case():
    a = {"x": 9.0, "y": 5.0, "z": 1.0}  # ranks x1 y2 z3
    b = {"y": 0.9, "w": 0.8}  # ranks y1 w2
    fused = rrf([a, b], k=60)
    assert fused["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["x"] == pytest.approx(1 / 61)
    assert fused["w"] == pytest.approx(1 / 62)
    assert fused["z"] == pytest.approx(1 / 63)
    assert max(fused, key=fused.get) == "y"


def test_weighted_rrf_worked_case():
    a = {"x": 9.0, "y": 5.0}  # ranks x1 y2
    b = {"y": 0.9, "x": 0.1}  # ranks y1 x2
    fused = rrf([a, b], k=60, weights=[1.0, 0.25])
    assert fused["x"] == pytest.approx(1 / 61 + 0.25 / 62)
    assert fused["y"] == pytest.approx(1 / 62 + 0.25 / 61)
    assert rrf([a, b], k=60, weights=[1.0, 1.0]) == rrf([a, b], k=60)  # weights 1: the paper's RRF
    assert max(fused, key=fused.get) == "x"  # a counts more: its first wins
    swapped = rrf([a, b], k=60, weights=[0.25, 1.0])
    assert max(swapped, key=swapped.get) == "y"


def test_weighted_sum_min_max_worked_case():
    a = {"x": 10.0, "y": 6.0, "z": 2.0}  # -> 1, .5, 0
    b = {"y": 0.8, "w": 0.4}  # -> 1, 0
    fused = weighted_sum([a, b], [0.25, 0.75])
    assert fused == pytest.approx({"x": 0.25, "y": 0.25 * 0.5 + 0.75, "z": 0.0, "w": 0.0})
    assert weighted_sum([{"only": 3.0}], [1.0]) == {"only": 1.0}


def test_fuse_dispatches_to_the_named_fusion_with_weights_one_by_default():
    a, b = {"x": 9.0, "y": 5.0}, {"y": 0.9, "w": 0.4}
    assert fuse([a, b]) == rrf([a, b], 60, [1.0, 1.0])
    assert fuse([a, b], "rrf", [1.0, 0.5], rrf_k=10) == rrf([a, b], 10, [1.0, 0.5])
    assert fuse([a, b], "weighted") == weighted_sum([a, b], [1.0, 1.0])
    assert fuse([a, b], "weighted", [0.2, 0.8]) == weighted_sum([a, b], [0.2, 0.8])
