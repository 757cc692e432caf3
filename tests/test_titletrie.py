"""Title trie and title-constrained decoding: next tokens against a naive computation over the title list,
random constrained walks that only ever produce corpus titles, persistence, bad input, large ids, and a
real tokenizer with Hugging Face beam search (a tiny random bert2bert)."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_keymodel
from indexes.manifest import IndexLoadError
from indexes.titletrie import TRIE_FILE, TitleTrie, decode_char, encode_id, max_token_id
from retrieval.generative.title_constraint import TitleConstraint
from indexes.manifest import current_folder

END, EOS, SEP = 0, 1, 2  # ids in the property tests; title tokens are drawn from 3..


def naive_next(titles, prefix, end_id):
    """Allowed next ids after `prefix`, straight from the list of titles."""
    prefix = tuple(prefix)
    out = set()
    for title in map(tuple, titles):
        if title[: len(prefix)] == prefix:
            out.add(title[len(prefix)] if len(title) > len(prefix) else end_id)
    return sorted(out)


title_sets = st.lists(st.lists(st.integers(3, 6), min_size=1, max_size=6), min_size=1, max_size=12).map(
    lambda ts: ts + [t[: len(t) // 2] for t in ts[:3] if len(t) > 1] + ts[:2]  # prefix-titles and duplicates
)


# ---------------------------------------------------------------- the trie against the naive computation


@settings(max_examples=60, deadline=None)
@given(title_sets, st.lists(st.lists(st.integers(0, 8), max_size=7), max_size=10))
def test_next_tokens_equal_the_naive_computation(titles, probes):
    trie = TitleTrie.build(titles, end_id=END)
    distinct = {tuple(t) for t in titles}
    assert len(trie) == len(distinct)
    assert set(trie.titles()) == distinct
    prefixes = {tuple(t[:i]) for t in titles for i in range(len(t) + 1)} | {tuple(p) for p in probes}
    for prefix in prefixes:
        expected = naive_next(titles, prefix, END)
        assert trie.next_tokens(prefix) == expected, prefix
        assert trie.next_tokens(prefix) == expected  # cached answer
        assert trie.next_tokens(prefix, cache=False) == expected
        assert (prefix in trie) == (prefix in distinct)
    for title in distinct:
        assert trie.next_tokens(title + (END,)) == []


def random_walk(constraint, rng, limit=100):
    generated = []
    while not generated or generated[-1] != constraint.eos_id:
        allowed = constraint(0, generated)
        assert allowed == sorted(set(allowed)) and allowed
        generated.append(rng.choice(allowed))
        assert len(generated) < limit
    return generated


@settings(max_examples=40, deadline=None)
@given(title_sets, st.sampled_from([END, EOS]), st.integers(0, 2**32 - 1))
def test_random_constrained_walks_only_produce_titles(titles, end_id, seed):
    """Whatever token the model picks among the allowed ones, the output is corpus titles: the issue's
    "constrained decoding never produces a title not in the corpus", single and multi-title."""
    trie = TitleTrie.build(titles, end_id=end_id)
    distinct = {tuple(t) for t in titles}
    rng = random.Random(seed)
    single = TitleConstraint(trie, eos_id=EOS)
    multi = TitleConstraint(trie, eos_id=EOS, separator_id=SEP, max_titles=3)
    for _ in range(20):
        walk = random_walk(single, rng)
        body = walk[:-1] if end_id == EOS else walk[:-2]
        if end_id != EOS:
            assert walk[-2] == END
        assert tuple(body) in distinct
        assert single.split_titles(walk) == [tuple(body)]

        walk = random_walk(multi, rng)
        found = multi.split_titles(walk)
        assert 1 <= len(found) <= 3 and all(t in distinct for t in found)
        assert walk.count(SEP) == len(found) - 1
        # the walk is exactly its titles, closed and joined as the rule says
        closed = [list(t) + ([END] if end_id != EOS else []) for t in found]
        rebuilt = [tok for part in closed for tok in part + [SEP]][:-1] + [EOS]
        assert walk == rebuilt


# ---------------------------------------------------------------- worked by hand


def test_hand_worked_case():
    # titles: "a b", "a b c", "a d", "e" (ids a=5 b=6 c=7 d=8 e=9); "a b" twice
    trie = TitleTrie.build([[5, 6], [5, 6, 7], [5, 8], [9], [5, 6]], end_id=2)
    assert len(trie) == 4
    assert sorted(trie.titles()) == [(5, 6), (5, 6, 7), (5, 8), (9,)]
    assert trie.next_tokens([]) == [5, 9]
    assert trie.next_tokens([5]) == [6, 8]
    assert trie.next_tokens([5, 6]) == [2, 7]
    assert trie.next_tokens([5, 6, 7]) == [2]
    assert trie.next_tokens([9]) == [2]
    assert trie.next_tokens([5, 6, 2]) == []
    assert trie.next_tokens([6]) == [] and trie.next_tokens([5, 7]) == [] and trie.next_tokens([-1]) == []
    assert [5, 6] in trie and (9,) in trie and [5] not in trie and [] not in trie and [5, 6, 2] not in trie

    # single title, end_id != eos: the title, its end, then eos
    one = TitleConstraint(trie, eos_id=1)
    assert one(0, [5, 6]) == [2, 7] and one(0, [5, 6, 2]) == [1] and one(0, [5, 6, 2, 1]) == [1]
    assert one.split_titles([5, 6, 2, 1]) == [(5, 6)]
    # end_id == eos: generation stops at the end
    trie_eos = TitleTrie.build([[5, 6], [5, 6, 7], [5, 8], [9]], end_id=1)
    stop = TitleConstraint(trie_eos, eos_id=1)
    assert stop(0, [5, 6]) == [1, 7] and stop(0, [9, 1]) == [1]
    assert stop.split_titles([5, 6, 7, 1]) == [(5, 6, 7)]
    assert stop.split_titles([5, 6]) == [] and stop.split_titles([5, 6], finished=True) == [(5, 6)]
    assert stop.split_titles([5], finished=True) == []  # not a whole title

    # multi-title, end_id != eos: "a b <end> | e <end> <eos>", at most 2 titles
    multi = TitleConstraint(trie, eos_id=1, separator_id=3, max_titles=2)
    assert multi(0, [5, 6, 2]) == [1, 3]
    assert multi(0, [5, 6, 2, 3]) == [5, 9]
    assert multi(0, [5, 6, 2, 3, 9]) == [2]
    assert multi(0, [5, 6, 2, 3, 9, 2]) == [1]  # two titles: only eos
    assert multi.split_titles([5, 6, 2, 3, 9, 2, 1]) == [(5, 6), (9,)]
    # multi-title, end_id == eos (CorpusBrain): the separator stands in for the end, "a b | e <eos>"
    corpusbrain = TitleConstraint(trie_eos, eos_id=1, separator_id=3, max_titles=2)
    assert corpusbrain(0, [5, 6]) == [1, 3, 7]
    assert corpusbrain(0, [5, 6, 3]) == [5, 9]
    assert corpusbrain(0, [5, 6, 3, 9]) == [1]  # second title: no separator offered
    assert corpusbrain.split_titles([5, 6, 3, 9, 1]) == [(5, 6), (9,)]
    assert corpusbrain.split_titles([5, 6, 3, 9], finished=True) == [(5, 6), (9,)]
    unlimited = TitleConstraint(trie_eos, eos_id=1, separator_id=3)
    assert unlimited(0, [5, 6, 3, 9, 3, 5, 8]) == [1, 3]


def test_the_cached_answer_is_not_changed_by_the_constraint():
    trie = TitleTrie.build([[5, 6]], end_id=1)
    constraint = TitleConstraint(trie, eos_id=1, separator_id=3)
    assert constraint(0, [5, 6]) == [1, 3]
    assert trie.next_tokens([5, 6]) == [1]


# ---------------------------------------------------------------- persistence


def test_save_and_load_in_a_new_folder_give_identical_answers(tmp_path):
    titles = [[5, 6], [5, 6, 7], [5, 8], [9], [60000, 5], [250000], [55295, 55296, 57344]]
    trie = TitleTrie.build(titles, end_id=2)
    manifest = trie.save(tmp_path / "a" / "trie", corpus="hand")
    assert manifest["kind"] == "titletrie" and manifest["n_titles"] == 7 and manifest["end_id"] == 2
    assert manifest["encoding_offset"] == 0 and manifest["corpus"] == "hand"
    loaded = TitleTrie.load(tmp_path / "a" / "trie")
    assert len(loaded) == 7 and loaded.end_id == 2
    assert set(loaded.titles()) == set(trie.titles()) == {tuple(t) for t in titles}
    prefixes = {tuple(t[:i]) for t in titles for i in range(len(t) + 2)} | {(7,), (5, 9), (250001,)}
    for prefix in prefixes:
        assert loaded.next_tokens(prefix) == trie.next_tokens(prefix) == naive_next(titles, prefix, 2)


def test_altered_or_truncated_files_do_not_load(tmp_path):
    trie = TitleTrie.build([[5, 6], [5, 6, 7], [9]], end_id=2)
    for damage in ("truncate", "alter", "remove"):
        folder = tmp_path / damage
        trie.save(folder)
        path = current_folder(folder) / TRIE_FILE
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif damage == "alter":
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        else:
            path.unlink()
        with pytest.raises(IndexLoadError):
            TitleTrie.load(folder)
    # without the checksum pass, a truncated file still fails with IndexLoadError (marisa refuses it)
    folder = tmp_path / "unverified"
    trie.save(folder)
    path = current_folder(folder) / TRIE_FILE
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(IndexLoadError):
        TitleTrie.load(folder, verify=False)


def test_another_index_kind_is_refused(tmp_path):
    from indexes.fmindex import FMIndex

    FMIndex.build([[1, 2]]).save(tmp_path / "fm")
    with pytest.raises(IndexLoadError, match="not a title trie"):
        TitleTrie.load(tmp_path / "fm")


def test_an_exception_during_save_leaves_nothing_loadable(tmp_path):
    trie = TitleTrie.build([[5, 6]], end_id=2)

    class Failing:
        def save(self, path):
            with open(path, "wb") as out:
                out.write(b"half a trie")
            raise KeyboardInterrupt

        def __len__(self):
            return 1

    trie._trie = Failing()
    with pytest.raises(KeyboardInterrupt):
        trie.save(tmp_path / "trie")
    assert not (tmp_path / "trie").exists()
    assert list(tmp_path.iterdir()) == []  # no partial folder left behind either
    with pytest.raises(IndexLoadError):
        TitleTrie.load(tmp_path / "trie")


# ---------------------------------------------------------------- bad input and the encoding


@pytest.mark.parametrize("titles, message", [
    ([[5], []], "title 1: empty"),
    ([[5], [6], [7, -1]], "title 2: token id -1 outside"),
    ([[5.0]], "title 0: token id 5.0 is not an integer"),
    ([["5"]], "title 0: token id '5' is not an integer"),
    ([[5], [True]], "title 1: token id True is not an integer"),
    ([[5, 2, 6]], "title 0: contains the terminator id end_id=2"),
    ([[max_token_id() + 1]], "title 0: token id 1112064 outside"),
])
def test_bad_titles_are_refused_with_their_position(titles, message):
    with pytest.raises(ValueError, match=message):
        TitleTrie.build(titles, end_id=2)


def test_bad_constraint_arguments():
    trie = TitleTrie.build([[5]], end_id=2)
    with pytest.raises(ValueError, match="end_id"):
        TitleTrie.build([[5]], end_id=-3)
    with pytest.raises(ValueError, match="separator_id"):
        TitleConstraint(trie, eos_id=1, separator_id=2)
    with pytest.raises(ValueError, match="max_titles"):
        TitleConstraint(trie, eos_id=1, separator_id=3, max_titles=0)
    with pytest.raises(ValueError, match="separator_id"):
        TitleConstraint(trie, eos_id=1, max_titles=2)


def test_large_ids_round_trip_through_the_encoding():
    import numpy as np

    ids = [0, 1, 127, 55000, 55295, 55296, 55297, 57343, 57344, 60000, 65535, 250000, max_token_id()]
    for token in ids:
        char = encode_id(token)
        assert not 0xD800 <= ord(char) <= 0xDFFF
        assert decode_char(char) == token
        char.encode("utf-8")  # storable
    titles = [[t, 7] for t in ids] + [[t] for t in ids] + [list(np.array([60000, 250000], dtype=np.int64))]
    trie = TitleTrie.build(titles, end_id=3)
    assert set(trie.titles()) == {tuple(int(x) for x in t) for t in titles}
    assert trie.next_tokens([]) == sorted(ids)
    assert trie.next_tokens([250000]) == [3, 7]
    assert trie.next_tokens(np.array([60000])) == [3, 7, 250000]
    assert [60000, 250000] in trie and (55296, 7) in trie
    big_end = TitleTrie.build([[5]], end_id=250001)
    assert big_end.next_tokens([5]) == [250001]


# ---------------------------------------------------------------- a real tokenizer and Hugging Face beam search


TITLES = ["Vitamin D", "Vitamin D deficiency", "Vitamin C", "Scurvy", "Photosynthesis", "Black holes", "Black",
          "Insulin", "Insulin resistance", "Volcanoes", "Antibiotics", "Chess"]
SOURCES = ["what causes scurvy", "hormone controlling blood sugar", "light cannot escape", "board game"]


def test_hugging_face_beam_search_only_generates_titles():
    keymodel = tiny_keymodel()
    tokenized = {tuple(keymodel.tokens(t)): t for t in TITLES}
    trie = TitleTrie.build(list(tokenized), end_id=keymodel.eos_id)
    longest = max(map(len, tokenized))

    single = TitleConstraint(trie, eos_id=keymodel.eos_id)
    finals = keymodel.generate(SOURCES, num_beams=4, max_new_tokens=longest + 1, allowed=single)
    for hyps in finals:
        assert len(hyps) == 4
        for ids, _ in hyps:
            assert tuple(ids) in tokenized, keymodel.tokenizer.decode(ids)
            assert single.split_titles(ids, finished=True) == [tuple(ids)]

    # CorpusBrain's multi-title output: titles joined by " |", at most two
    bar = keymodel.tokens("|")
    assert len(bar) == 1
    multi = TitleConstraint(trie, eos_id=keymodel.eos_id, separator_id=bar[0], max_titles=2)
    finals = keymodel.generate(SOURCES, num_beams=4, max_new_tokens=2 * longest + 2, allowed=multi)
    for hyps in finals:
        for ids, _ in hyps:
            found = multi.split_titles(ids, finished=True)
            assert 1 <= len(found) <= 2 and all(t in tokenized for t in found), keymodel.tokenizer.decode(ids)
            assert ids == [tok for t in found for tok in (*t, bar[0])][:-1]
