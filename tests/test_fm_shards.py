"""ShardedFMIndex (indexes/fm_shards.py): shards of whole documents answer exactly as one FM-index."""
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from indexes.fm_shards import ShardedFMIndex
from indexes.fmindex import FMIndex
from retrieval.generative.constrained import IndexConstraint
from retrieval.generative.seal_scoring import rank_documents
from test_fmindex import corpus_and_pattern

EOS = 99


@settings(max_examples=200, deadline=None)
@given(corpus_and_pattern(), st.integers(1, 4))
def test_shards_merge_to_the_single_index(case, shards):
    docs, ngram = case
    single, sharded = FMIndex.build(docs), ShardedFMIndex.build(docs, shards)
    assert sharded.n_docs == single.n_docs and sharded.n_tokens == single.n_tokens
    assert sharded.doc_starts.tolist() == single.doc_starts.tolist()
    assert sharded.count(ngram) == single.count(ngram)
    assert sharded.rows_count(sharded.range(ngram)) == single.rows_count(single.range(ngram)) == single.count(ngram)
    assert sharded.next_tokens(ngram) == single.next_tokens(ngram)
    assert sorted(sharded.locate(ngram)) == sorted(single.locate(ngram))
    assert all(sharded.doc_tokens(d).tolist() == single.doc_tokens(d).tolist() for d in range(single.n_docs))
    hits = sharded.locate(ngram, limit=2)
    assert len(hits) == min(2, single.count(ngram)) and set(hits) <= set(single.locate(ngram))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=10), min_size=1, max_size=8),
       st.integers(2, 4), st.integers(0, 2**31 - 1))
def test_constrained_walks_and_seal_scores_are_the_single_indexes(docs, shards, seed):
    """Random walks under IndexConstraint see the same allowed sets; SEAL's ranking gives the same scores."""
    assume(len({t for doc in docs for t in doc}) > 1)  # SEAL's weight is undefined for a key covering the corpus
    single, sharded = FMIndex.build(docs), ShardedFMIndex.build(docs, shards)
    rng = random.Random(seed)
    for force in ((), (FMIndex.BOUNDARY,)):
        one, many = IndexConstraint(single, EOS, force_prefix=force), IndexConstraint(sharded, EOS, force_prefix=force)
        generated: list[int] = []
        for _ in range(6):
            allowed = one(0, generated)
            assert sorted(many(0, generated)) == sorted(allowed)
            generated.append(rng.choice(allowed))
            if generated[-1] == EOS:
                break
    keys = {tuple(doc[i : i + n]): -rng.random() * 5 for doc in docs for n in (1, 2, 3) for i in range(0, len(doc), 3)}
    keys[(FMIndex.BOUNDARY, docs[0][0])] = -1.0
    assert rank_documents(keys, sharded, max_hits=50) == pytest.approx(rank_documents(keys, single, max_hits=50))


def test_hand_worked_case_and_refusals():
    sharded = ShardedFMIndex.build([[5, 6, 7], [6, 7, 8], [7, 9]], shards=2)
    assert [s.n_docs for s in sharded.shards] == [2, 1]
    assert sharded.count([6, 7]) == 2 and sharded.next_tokens([7]) == {8: 1, 9: 1}
    assert sharded.locate([7, 9]) == [(2, 0)] and sharded.doc_tokens(2).tolist() == [7, 9]
    assert sharded.next_tokens([]) == {5: 1, 6: 2, 7: 3, 8: 1, 9: 1}
    with pytest.raises(IndexError, match="document 3"):
        sharded.doc_tokens(3)
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedFMIndex([])
    with pytest.raises(ValueError, match="shards=0"):
        ShardedFMIndex.build([[1]], shards=0)
    assert len(ShardedFMIndex.build([[1], [2]], shards=5).shards) == 2  # never an empty shard
