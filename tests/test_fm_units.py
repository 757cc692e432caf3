"""FMUnits (indexes/fm_units.py): one FM-index over parents, seen as per-unit indexes of `header + unit`."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexes.fm_units import FMUnits
from indexes.fmindex import FMIndex
from test_fmindex import naive_locate

B = FMIndex.BOUNDARY


@st.composite
def parents_and_pattern(draw):
    """Parents, each a header (maybe empty) and 0-4 units of tokens; an n-gram cut from a unit's
    `header + unit` stream (or random), maybe anchored at the start."""
    alphabet = draw(st.sampled_from([2, 3, 5]))
    tokens = st.lists(st.integers(0, alphabet - 1), max_size=6)
    parents = draw(st.lists(st.tuples(tokens, st.lists(tokens, max_size=4)), min_size=1, max_size=5))
    streams = [header + unit for header, units in parents for unit in units]
    source = draw(st.sampled_from(streams)) if streams else []
    if source and draw(st.booleans()):
        start = draw(st.integers(0, len(source) - 1))
        ngram = source[start : start + draw(st.integers(1, 4))]
    else:
        ngram = draw(st.lists(st.integers(0, alphabet), min_size=1, max_size=3))
    if all(header for header, _ in parents) and draw(st.booleans()):  # BOUNDARY: a parent's start, its title
        ngram = [B] + ngram
    return parents, ngram


def shared_view(parents):
    starts, ends, docs, position = [], [], [], 0
    for number, (header, units) in enumerate(parents):
        position += len(header)
        for unit in units:
            starts.append(position)
            position += len(unit)
            ends.append(position)
            docs.append(number)
    fm = FMIndex.build([header + [t for unit in units for t in unit] for header, units in parents])
    return FMUnits(fm, starts, ends, docs)


@settings(max_examples=300, deadline=None)
@given(parents_and_pattern())
def test_the_view_locates_as_per_unit_indexes_do(case):
    """Every occurrence in a per-unit index is found by the view at the same (unit, offset), except those
    running from the title into a unit after its parent's first non-empty one (the shared stream holds the title
    once, before the first unit); the view's only extra hits are n-grams that run from one unit into the
    next, credited to the unit they start in."""
    parents, ngram = case
    per_unit = [header + unit for header, units in parents for unit in units]
    header_of = []  # per unit: (its title's length, whether a non-empty unit comes before it in its parent)
    for header, units in parents:
        header_of += [(len(header), any(units[:i])) for i in range(len(units))]
    view = shared_view(parents)
    assert view.n_docs == len(per_unit)
    assert [view.doc_tokens(u).tolist() for u in range(view.n_docs)] == per_unit
    separate = FMIndex.build(per_unit) if per_unit else None
    if separate is not None:  # the per-unit stream's offsets: SEAL's coverage bookkeeping relies on them
        assert view.doc_starts.tolist() == separate.doc_starts.tolist()
    length = len(ngram) - (ngram[0] == B)
    expected = {(u, off) for u, off in naive_locate(per_unit, ngram)
                if not (header_of[u][1] and off < header_of[u][0] < off + length)}
    found = view.locate(ngram)
    assert len(found) == len(set(found))
    assert expected <= set(found)
    for unit, offset in set(found) - expected:
        assert ngram[0] != B and per_unit[unit][offset : offset + len(ngram)] != ngram  # crosses a unit end
    assert view.count(ngram) == view.fm.count(ngram)  # counts and constraints: the shared index's


def test_hand_worked_case_and_limit():
    # parent 0: header [9, 8], units [1, 2] and [3]; parent 1: no units; parent 2: header [9], unit [1, 3]
    fm = FMIndex.build([[9, 8, 1, 2, 3], [7], [9, 1, 3]])
    view = FMUnits(fm, starts=[2, 4, 7], ends=[4, 5, 9], docs=[0, 0, 2])
    assert view.n_docs == 3 and view.doc_starts.tolist() == [0, 4, 7, 10]
    assert sorted(view.locate([B, 9])) == [(0, 0), (1, 0), (2, 0)]  # a title belongs to each of its units
    assert sorted(view.locate([1])) == [(0, 2), (2, 1)]
    assert view.locate([2, 3]) == [(0, 3)]  # runs from unit 0 into unit 1: credited to unit 0
    assert view.locate([7]) == []  # a parent without units has nothing to rank
    assert len(view.locate([9], limit=2)) == 2
    assert view.doc_tokens(1).tolist() == [9, 8, 3] and view.doc_tokens(2).tolist() == [9, 1, 3]
    assert view.next_tokens([9]) == fm.next_tokens([9]) == {8: 1, 1: 1}
    with pytest.raises(IndexError, match="unit 3"):
        view.doc_tokens(3)


def test_bad_units_are_refused():
    fm = FMIndex.build([[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match="differ in length"):
        FMUnits(fm, [0], [1, 2], [0])
    with pytest.raises(ValueError, match="ordered"):
        FMUnits(fm, [1, 0], [2, 1], [0, 0])
    with pytest.raises(ValueError, match="grouped by document"):
        FMUnits(fm, [3, 0], [5, 3], [1, 0])


def test_write_and_read_arrays(tmp_path):
    fm = FMIndex.build([[9, 1, 2, 3, 4]])
    view = FMUnits(fm, [1, 3], [3, 5], [0, 0])
    view.write_arrays(tmp_path)
    again = FMUnits.read_arrays(fm, tmp_path)
    assert again.locate([B, 9]) == view.locate([B, 9]) and again.doc_tokens(1).tolist() == [9, 3, 4]
