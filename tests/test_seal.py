"""SEAL: weight and aggregation formulas on hand-worked cases, constrained decoding never leaving the corpus,
the retriever through the common API (save, reload, eval, mteb) with a tiny random model, and the data builder."""
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, run_python, tiny_keymodel, write_beir
from indexes.fmindex import FMIndex
from retrieval import build_retriever, load_corpus, load_dataset, load_retriever
from retrieval.generative.constrained import IndexConstraint, KeyRecorder
from retrieval.generative.seal_scoring import (
    coverage_discount,
    first_stage,
    full_score,
    ngram_weight,
    query_ngrams,
    rank_documents,
    locate_in_documents,
    weigh_keys,
)

B = FMIndex.BOUNDARY


# ---------------------------------------------------------------- formulas, worked by hand


def test_ngram_weight_is_the_squared_log_odds():
    # P = 0.5, F = (1 + 5) / (99 + 5) = 0.0576923: log[P(1-F)] - log[F(1-P)] = log(0.9423077 / 0.0576923) = log(16.3333)
    assert ngram_weight(math.log(0.5), count=1, n_tokens=99) == pytest.approx(math.log(49 / 3) ** 2, rel=1e-6)
    assert ngram_weight(math.log(0.5), 1, 99, alpha=1.0) == pytest.approx(2.793208, rel=1e-6)
    # less likely under the model than in the corpus: clipped to 0; absent from the corpus: 0
    assert ngram_weight(math.log(0.01), count=50, n_tokens=99) == 0.0
    assert ngram_weight(math.log(0.9), count=0, n_tokens=99) == 0.0


def test_lm_only_weights_ignore_the_corpus_frequency():
    fm = FMIndex.build([[1, 2, 3], [1, 2]])
    keys = {(1, 2): -1.0, (3,): -3.0}
    lm = weigh_keys(keys, fm, use_index_frequency=False)  # cutoff = -3.1
    assert lm[(1, 2)] == pytest.approx(2.1**2) and lm[(3,)] == pytest.approx(0.1**2)


def test_coverage_discount():
    assert coverage_discount((1, 2, 3, 4), 10.0, {1, 2}, beta=0.8) == pytest.approx(10 * (0.2 + 0.8 * 2 / 4))
    assert coverage_discount((1, 2), 10.0, set(), beta=0.8) == 10.0
    assert coverage_discount((1, 1, 2), 10.0, {1, 2}, beta=0.8) == pytest.approx(2.0)  # token types, not tokens


def test_first_stage_counts_each_key_once_per_document_where_it_covers_new_positions():
    fm = FMIndex.build([[1, 2, 3, 4], [3, 4, 5], [1, 2]])
    weights = {(1, 2): 5.0, (3, 4): 3.0, (4, 5): 2.0}
    # (4,5) in d1 overlaps the 4 that (3,4) already covered: it adds nothing there, but is d1's best key? no: 3 > 2
    assert first_stage(weights, fm, beta=0.8) == {0: (8.0, 5.0), 1: (3.0, 3.0), 2: (5.0, 5.0)}
    # a key above max_hits is not used in the first stage
    assert first_stage(weights, fm, max_hits=1) == {1: (2.0, 2.0)}


def test_full_score_greedy_non_overlapping_with_discount_and_unigrams():
    doc = [B, 7, 1, 2, 3, 1, 2, 9]
    weights = {(1, 2, 3): 4.0, (1, 2): 3.0, (9,): 1.0}
    [matches] = locate_in_documents([doc], weights)
    unigrams = {7: 0.5, 1: 2.0}
    # (1,2,3) takes 4.0; (1,2) at 2 overlaps; (1,2) at 5 adds 3 * 0.2 = 0.6 once; (9,) adds 1.0;
    # the free tokens B and 7 add 7's unigram 0.5 (1 is never free)
    assert full_score(doc, matches, unigrams, beta=0.8) == pytest.approx(4.0 + 0.6 + 1.0 + 0.5)
    assert full_score(doc, matches, unigrams, beta=0.8, single_key=1.0) == pytest.approx(4.0)
    # a repeated key adds nothing the second time
    doc = [B, 1, 2, 8, 1, 2]
    assert full_score(doc, locate_in_documents([doc], {(1, 2): 3.0})[0], {}) == pytest.approx(3.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 4), max_size=12), min_size=1, max_size=5),
       st.dictionaries(st.lists(st.integers(-1, 4), min_size=1, max_size=3).map(tuple), st.sampled_from([0.0, 1.0, 2.5]), max_size=8))
def test_keys_are_located_where_a_brute_force_scan_finds_them_and_never_across_documents(docs, weights):
    found = locate_in_documents(docs, weights)
    for doc, matches in zip(docs, found):
        expected = {}
        for key, w in weights.items():
            spans = [(i, i + len(key)) for i in range(len(doc) - len(key) + 1) if tuple(doc[i : i + len(key)]) == key]
            if w > 0.0 and spans:
                expected[key] = (w, spans)
        assert {k: (w, sorted(spans)) for k, (w, spans) in matches.items()} == expected


def test_titles_match_only_at_the_document_start():
    fm = FMIndex.build([[10, 11, 0, 20], [20, 10, 11]])  # doc 0: title 10 11, eos 0, body 20
    weights = {(B, 10, 11, 0): 6.0}
    assert first_stage(weights, fm) == {0: (6.0, 6.0)}
    ranked = rank_documents({(B, 10, 11, 0): -0.01}, fm, fully_score=10)
    assert set(ranked) == {0} and ranked[0] > 0


def test_query_ngrams_are_word_ngrams_in_every_capitalisation():
    words = lambda text: [hash(w) % 1000 for w in text.split()]  # noqa: E731  a tokenizer stand-in
    keys = query_ngrams("vitamin d", lambda t: [t])
    assert sorted(k[0] for k in keys) == sorted(["vitamin", "Vitamin", "d", "D", "vitamin d", "Vitamin d",
                                                 "vitamin D", "Vitamin D"])
    assert len(query_ngrams("a b c d", words, max_words=3)) == len(set(map(tuple, query_ngrams("a b c d", words))))


# ---------------------------------------------------------------- constrained decoding


corpora = st.lists(st.lists(st.integers(3, 8), min_size=0, max_size=10), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(corpora, st.integers(0, 2**31 - 1), st.integers(0, 3))
def test_constrained_walks_never_leave_the_corpus(docs, seed, stop_at_count):
    """Random walks through the allowed sets: every prefix occurs; a walk ends only at eos."""
    fm = FMIndex.build(docs)
    rng = random.Random(seed)
    for force in [(), (B,)]:
        constraint = IndexConstraint(fm, eos_id=1, force_prefix=force, stop_at_count=stop_at_count)
        generated: list[int] = []
        for _ in range(12):
            allowed = constraint(0, generated)
            assert allowed, "the constraint must always allow something"
            token = rng.choice(allowed)
            if token == 1:
                break
            generated.append(token)
            count = fm.count(list(force) + generated)
            assert count > 0
            if stop_at_count and count <= stop_at_count:
                assert constraint(0, generated) == [1]
                break


@pytest.fixture(scope="module")
def keymodel():
    return tiny_keymodel()


@pytest.fixture(scope="module")
def tiny_seal(tiny_beir_session, keymodel):
    retriever = build_retriever("seal", model="bert2bert", beam=4, length=4, title_length=6, fully_score=50)
    retriever._keymodel = keymodel
    retriever.index(load_corpus(tiny_beir_session))
    return retriever


def test_every_generated_key_is_in_the_corpus(tiny_seal, keymodel):
    fm = tiny_seal.fm
    queries = ["what causes scurvy", "hormone controlling blood sugar"]
    for force, length in [((), 4), ((B,), 6)]:
        sources = [f"{q} || {'title' if force else 'body'}" for q in queries]
        constraint = IndexConstraint(fm, keymodel.eos_id, force_prefix=force, vocab_size=keymodel.vocab_size)
        recorder = KeyRecorder(4, keymodel.eos_id, keymodel.pad_id)
        finals = keymodel.generate(sources, num_beams=4, max_new_tokens=length, allowed=constraint, recorder=recorder)
        for keys, hyps in zip(recorder.keys, finals):
            assert len(keys) >= 4
            for key in list(keys) + [tuple(h) for h, _ in hyps]:
                body = [t for t in key if t != keymodel.eos_id] if not force else list(key)
                assert fm.count(list(force) + body) > 0, keymodel.tokenizer.decode(key)
            # the recorded score is the model's log-probability of the key, teacher-forced
            key = max(keys, key=len)
            assert keys[key] == pytest.approx(keymodel.score_keys(sources[0 if keys is recorder.keys[0] else 1], [list(key)])[0], abs=1e-4)


def test_diverse_beam_search_with_one_group_is_hugging_faces_beam_search(tiny_seal, keymodel):
    from retrieval.generative.constrained import diverse_beam_search

    sources = ["what causes scurvy || body", "black hole light || body"]
    constraint = IndexConstraint(tiny_seal.fm, keymodel.eos_id, vocab_size=keymodel.vocab_size)
    recorder = KeyRecorder(4, keymodel.eos_id, keymodel.pad_id)
    keymodel.generate(sources, num_beams=4, max_new_tokens=4, allowed=constraint, recorder=recorder)
    ours = diverse_beam_search(keymodel, sources, num_beams=4, groups=1, penalty=0.0, max_new_tokens=4, allowed=constraint)
    for theirs, mine in zip(recorder.keys, ours):
        assert set(theirs) == set(mine)
        assert all(theirs[k] == pytest.approx(mine[k], abs=1e-4) for k in theirs)


def test_diversity_penalty_spreads_the_groups_first_tokens(tiny_seal, keymodel):
    from retrieval.generative.constrained import diverse_beam_search

    constraint = IndexConstraint(tiny_seal.fm, keymodel.eos_id, vocab_size=keymodel.vocab_size)
    plain = diverse_beam_search(keymodel, ["insulin || body"], num_beams=4, groups=4, penalty=0.0, max_new_tokens=3,
                                allowed=constraint)[0]
    diverse = diverse_beam_search(keymodel, ["insulin || body"], num_beams=4, groups=4, penalty=1e3, max_new_tokens=3,
                                  allowed=constraint)[0]
    firsts = lambda keys: {k[0] for k in keys if len(k) == 3}  # noqa: E731
    assert len(firsts(plain)) == 1  # four identical groups follow the same best beam
    assert len(firsts(diverse)) == 4  # a huge penalty forces four different first tokens
    assert all(tiny_seal.fm.count(list(k)) > 0 for k in diverse)
    with pytest.raises(ValueError, match="multiple of groups"):
        diverse_beam_search(keymodel, ["x"], num_beams=4, groups=3, penalty=0.0, max_new_tokens=1)


def test_title_keys_start_at_document_starts(tiny_seal):
    keys = tiny_seal.generate_keys(["vitamin deficiency in elderly people"])[0]
    titles = [k for k in keys if k[0] == B]
    assert titles, "the title pass yields complete titles"
    for key in titles:
        assert key[-1] == tiny_seal.keymodel.eos_id
        assert all(offset == 0 for _, offset in tiny_seal.fm.locate(list(key)))


def test_title_keys_off_drops_only_the_title_keys(tiny_seal):
    query = ["vitamin deficiency in elderly people"]
    every = tiny_seal.generate_keys(query)[0]
    tiny_seal.set_search_options(use_index_frequency=False)  # a random model's keys weigh 0 otherwise
    with_titles = tiny_seal.rank(query[0], every, 10)
    tiny_seal.set_search_options(title_keys=False)
    try:
        bodies = tiny_seal.generate_keys(query)[0]
        # a dev choice ranks keys generated with titles as if titles were off: the same ranking
        assert tiny_seal.rank(query[0], every, 10) == tiny_seal.rank(query[0], bodies, 10) != with_titles
    finally:
        tiny_seal.set_search_options(title_keys=True, use_index_frequency=True)
    assert any(k[0] == B for k in every) and not any(k[0] == B for k in bodies)
    assert bodies.keys() == {k for k in every if k[0] != B}
    assert all(bodies[k] == pytest.approx(every[k], abs=1e-4) for k in bodies)


def test_unconstrained_ablation_still_keeps_only_corpus_keys(tiny_seal):
    tiny_seal.set_search_options(constrained=False)
    try:
        keys = tiny_seal.generate_keys(["what causes scurvy"])[0]
    finally:
        tiny_seal.set_search_options(constrained=True)
    assert all(tiny_seal.fm.count(list(k)) > 0 for k in keys)
    with pytest.raises(ValueError, match="unknown SEAL option"):
        tiny_seal.set_search_options(beams=3)
    # a known option with a value of the wrong type is refused before any search, not at its first use
    for bad, shown in (({"beam": True}, "beam=True: expected int"), ({"beam": "5"}, "beam='5': expected int"),
                       ({"whole_words": 1}, "whole_words=1: expected bool"), ({"alpha": "x"}, "alpha='x': expected float")):
        with pytest.raises(ValueError, match=f"SEAL option {shown}"):
            tiny_seal.set_search_options(**bad)
    tiny_seal.set_search_options(alpha=2)  # an int where a float is expected is a number
    tiny_seal.set_search_options(alpha=2.0)


# ---------------------------------------------------------------- the common API


def test_seal_saves_reloads_and_returns_the_same_run(tiny_seal, tiny_beir_session, tmp_path):
    queries = load_dataset(tiny_beir_session).queries
    # a random model gives every key P far below its corpus frequency (weight 0): LM weights rank anyway
    tiny_seal.set_search_options(use_index_frequency=False)
    run = tiny_seal.search(queries, k=5)
    assert set(run) == set(queries) and all(len(docs) <= 5 for docs in run.values())
    assert all(run.values())
    tiny_seal.save(tmp_path / "seal")
    again = load_retriever(tmp_path / "seal")
    assert type(again).__name__ == "SEALRetriever" and again.uses_titles
    assert isinstance(again.fm.bwt, np.memmap)
    assert again.config["use_index_frequency"] is False  # search options travel in the manifest
    assert again.search(queries, k=5) == run
    hits = again.search_one("what causes scurvy", k=3)
    assert hits and hits[0].text  # texts come from the docstore
    tiny_seal.set_search_options(use_index_frequency=True)


def test_sharded_fm_index_returns_the_same_run_and_reloads(tiny_seal, keymodel, tiny_beir_session, tmp_path):
    from indexes.fm_shards import ShardedFMIndex

    corpus, queries = load_corpus(tiny_beir_session), load_dataset(tiny_beir_session).queries
    sharded = build_retriever("seal", model="bert2bert", beam=4, length=4, title_length=6, fully_score=50,
                              use_index_frequency=False)
    sharded._keymodel = keymodel
    sharded.index(corpus, shards=3)
    assert isinstance(sharded.fm, ShardedFMIndex) and [s.n_docs for s in sharded.fm.shards] == [3, 2, 3]
    tiny_seal.set_search_options(use_index_frequency=False)
    try:
        expected = tiny_seal.search(queries, k=5)
    finally:
        tiny_seal.set_search_options(use_index_frequency=True)
    assert sharded.search(queries, k=5) == expected  # same keys, counts and scores: the merge is exact
    sharded.save(tmp_path / "sharded")
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert manifest["fm_shards"] == [f"fmindex/shard-0000{i}" for i in range(3)]
    again = load_retriever(tmp_path / "sharded")
    assert isinstance(again.fm, ShardedFMIndex) and again.search(queries, k=5) == expected
    with pytest.raises(ValueError, match="shards=9"):
        sharded.index(corpus, shards=9)
    with pytest.raises(ValueError, match="shards: not an indexing option of a ugr retriever"):
        build_retriever("ugr").index(corpus, shards=2)


def test_fm_shards_built_on_ray_give_the_same_run(keymodel, tiny_beir_session, tmp_path):
    """engine="ray": the shards are built by Ray tasks (a local Ray, in a fresh interpreter so its threads
    never live inside pytest) and the retriever answers exactly as with shards built here, also reloaded."""
    pytest.importorskip("ray")

    options = dict(model="bert2bert", beam=4, length=4, title_length=6, fully_score=50, use_index_frequency=False)
    corpus, queries = load_corpus(tiny_beir_session), load_dataset(tiny_beir_session).queries
    here = build_retriever("seal", **options)
    here._keymodel = keymodel
    here.index(corpus, shards=3)
    expected = here.search(queries, k=5)
    code = (
        "import json, sys; sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_keymodel\nfrom retrieval import build_retriever, load_corpus\n"
        f"r = build_retriever('seal', **{options!r})\n"
        "r._keymodel = tiny_keymodel()  # seeded: the same weights as the fixture's\n"
        f"r.index(load_corpus({str(tiny_beir_session)!r}), engine='ray', shards=3)\n"
        f"r.save({str(tmp_path / 'ray')!r})\n"
        f"print(json.dumps([[s.n_docs for s in r.fm.shards], r.search({queries!r}, k=5)]))"
    )
    sizes, on_ray = json.loads(run_python(code).strip().splitlines()[-1])
    assert sizes == [3, 2, 3]
    for run in (on_ray, load_retriever(tmp_path / "ray").search(queries, k=5)):
        assert {q: list(hits) for q, hits in run.items()} == {q: list(hits) for q, hits in expected.items()}
        assert all(run[q][d] == pytest.approx(score, abs=1e-5) for q in expected for d, score in expected[q].items())
    with pytest.raises(ValueError, match="ray_address= is an option of engine='ray'"):
        here.index(corpus, ray_address="head:6379")
    with pytest.raises(ValueError, match="indexes with engine 'local'"):
        build_retriever("ugr").index(corpus, engine="ray")


def test_seal_through_the_runner_and_mteb(tiny_seal, tiny_beir_session, tmp_path):
    from eval.mteb_adapter import MtebRetriever, mteb_scores
    from eval.mteb_tasks import local_retrieval_task
    from eval.runner import evaluate

    tiny_seal.set_search_options(use_index_frequency=False)
    try:
        record, _ = evaluate(tiny_seal, load_dataset(tiny_beir_session), latency_sample=2)
        scores = mteb_scores(MtebRetriever(tiny_seal), local_retrieval_task(tiny_beir_session))
    finally:
        tiny_seal.set_search_options(use_index_frequency=True)
    assert record.metrics["ndcg@10"] > 0
    assert record.metrics["ndcg@10"] == pytest.approx(scores["ndcg_at_10"], abs=1e-4)


def test_a_corpus_without_titles_indexes_bodies_only(keymodel):
    from retrieval.data import Corpus, Doc

    retriever = build_retriever("seal", model="bert2bert", beam=2, length=2)
    retriever._keymodel = keymodel
    retriever.index(Corpus([Doc("a", "", "alpha beta"), Doc("b", "", "gamma")]))
    assert not retriever.uses_titles
    assert retriever.fm.doc_tokens(0).tolist() == keymodel.tokens("alpha beta")


# ---------------------------------------------------------------- training data and trainer


def test_spans_start_where_the_query_overlaps():
    from training.seal import sample_spans, stopwords

    passage = "filler " * 30 + "scurvy is caused by a lack of vitamin c in the diet " + "filler " * 30
    spans = sample_spans("what causes scurvy vitamin c", passage, 20, 5, 0.05, random.Random(0), stopwords())
    assert sum("scurvy" in s or "vitamin" in s for s in spans) >= 18


def test_training_examples_follow_the_reference_shapes(tiny_beir_session):
    from training.seal import DEFAULTS, supervised_examples, unsupervised_examples

    dataset = load_dataset(tiny_beir_session)
    config = {**DEFAULTS, "supervised_spans": 2, "title_samples": 1, "span_samples": 2}
    supervised = supervised_examples(dataset, config, random.Random(0))
    assert len(supervised) == 4 * 3  # four judged pairs: two spans and a title each
    assert ("what causes scurvy || title", "Scurvy") in supervised
    unsupervised = unsupervised_examples(dataset.corpus, config, random.Random(0))
    sources = [s for s, _ in unsupervised]
    assert sum(s.lower().endswith("|| title") for s in sources) >= 8  # the whole document -> title, per doc
    assert all(s.lower().endswith(("|| title", "|| body")) for s in sources)


def test_training_lowers_the_loss(keymodel):
    import copy

    from training.keymodel_train import train_keymodel
    from training.seal import DEFAULTS

    model = copy.deepcopy(keymodel)
    examples = [("what causes scurvy || body", "a lack of vitamin c")] * 8
    before = model.loss([examples[0][0]], [model.tokens(examples[0][1]) + [model.eos_id]]).item()
    info = train_keymodel(model, examples, {**DEFAULTS, "max_steps": 15, "batch_size": 8, "lr": 3e-3, "epochs": 100}, progress=False)
    after = model.loss([examples[0][0]], [model.tokens(examples[0][1]) + [model.eos_id]]).item()
    assert info["steps"] == 15 and after < before - 1.0


def test_a_model_trained_with_the_same_recipe_signature_is_reused(tmp_path):
    """train_or_reuse trains and writes its record last; the same signature reuses the folder without
    building examples or a model; another signature trains again."""
    from training.keymodel_train import train_or_reuse
    from training.seal import DEFAULTS

    calls = []

    def start():
        calls.append("model")
        return tiny_keymodel()

    def examples():
        calls.append("examples")
        return [("what causes scurvy || body", "vitamin c")] * 4

    config = {**DEFAULTS, "max_steps": 2, "batch_size": 2}
    first = train_or_reuse(tmp_path / "m", "sig-a", start, examples, config, desc="t", extra={"stage": "x"})
    assert calls == ["model", "examples"] and first["signature"] == "sig-a" and first["stage"] == "x" and first["steps"] == 2
    assert (tmp_path / "m" / "keymodel-train.json").is_file()
    assert train_or_reuse(tmp_path / "m", "sig-a", start, examples, config, desc="t") == first
    assert calls == ["model", "examples"]
    train_or_reuse(tmp_path / "m", "sig-b", start, examples, config, desc="t")
    assert calls == ["model", "examples"] * 2


def test_records_are_rewritten_from_results_with_defaults_for_new_keys(tmp_path):
    """--records: one record per row, a row's own dataset/split winning over the recipe's."""
    import json

    from training.generative_eval import rewrite_records

    report = {"config": {"data": "x/scifact", "test_split": "test", "backbone": "bert2bert", "out": str(tmp_path),
                         "report": str(tmp_path / "report"), "search": {}},
              "queries": 3, "date": "2026-11-27",
              "rows": [{"name": "seal", "metrics": {"ndcg@10": 0.1}, "ms_per_query": 5.0},
                       {"name": "bm25", "dataset": "squad-v1.1-dev", "split": "ugr-page", "queries": 2,
                        "metrics": {"ndcg@10": 0.9}}]}
    (tmp_path / "results.json").write_text(json.dumps(report))
    again = rewrite_records(tmp_path, "seal", {"main_metric": "ndcg@10", "extra_default": 1})
    assert again["config"]["main_metric"] == "ndcg@10" and again["config"]["extra_default"] == 1
    written = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert written == ["scifact-test-seal-bert2bert.json", "squad-v1.1-dev-ugr-page-bm25.json"]
    bm25 = json.loads((tmp_path / "report" / "squad-v1.1-dev-ugr-page-bm25.json").read_text())
    assert bm25["num_queries"] == 2 and bm25["split"] == "ugr-page" and bm25["latency_ms"] is None


def test_search_options_are_chosen_on_held_out_queries_never_test_ones(tiny_seal, tiny_beir_session):
    """dev_split "rest": a seeded sample of the test split's other queries; each dev choice is searched with
    one generation of keys, the best by main_metric stays in the retriever; a choice that would change the
    keys themselves (beam) is refused before any training."""
    from eval.metrics import evaluate_run
    from training.seal import DEFAULTS, check_dev_choices, choose_on_dev, dev_dataset

    config = {**DEFAULTS, "data": str(tiny_beir_session), "dev_split": "rest", "dev_sample": 2, "ks": [10], "depth": 10,
              "dev_choices": [{}, {"unigram_scores": False}, {"single_key": 1.0, "unigram_scores": False}]}
    test_queries = {"q1": "what causes scurvy"}
    dev = dev_dataset(config, test_queries)
    assert len(dev.queries) == 2 and "q1" not in dev.queries and set(dev.qrels) == set(dev.queries)
    saved = dict(tiny_seal.config)
    try:
        record = choose_on_dev(tiny_seal, dev, config)
        scores = [row["metrics"]["ndcg@10"] for row in record["choices"]]
        assert record["chosen"] == config["dev_choices"][scores.index(max(scores))]
        for option in ("unigram_scores", "single_key"):
            assert tiny_seal.config[option] == record["chosen"].get(option, saved[option])
        keys = tiny_seal.generate_keys(list(dev.queries.values()))  # the chosen options reproduce the chosen row
        run = {q: tiny_seal.rank(dev.queries[q], k, 10) for q, k in zip(dev.queries, keys)}
        assert evaluate_run(dev.qrels, run, ks=[10])["ndcg@10"] == max(scores)
    finally:
        tiny_seal.set_search_options(**{k: saved[k] for k in ("unigram_scores", "single_key")})
    with pytest.raises(ValueError, match="dev_choices: {'beam': 5} must be a mapping of scoring options"):
        check_dev_choices({**config, "dev_choices": [{"beam": 5}]})
    with pytest.raises(ValueError, match="need dev_split"):
        check_dev_choices({**config, "dev_split": None})



def test_a_bad_dev_choice_is_one_line_and_exit_2_before_training(tmp_path):
    import subprocess
    import sys

    import yaml

    config = tmp_path / "seal.yaml"
    config.write_text(yaml.safe_dump({"data": str(write_beir(tmp_path / "tiny")), "train_split": None, "dev_split": "rest",
                                      "dev_choices": [{"beam": 5}], "out": str(tmp_path / "out")}))
    done = subprocess.run([sys.executable, "-m", "retrieval.cli", "train", "seal", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"dengen: error: {config}: dev_choices: {{'beam': 5}}")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the recipe, end to end (real model)


@pytest.mark.slow
def test_recipe_trains_saves_reloads_and_writes_records(tmp_path):
    """`dengen train seal` on LIMIT-small for a few steps: search options chosen on 8 held-out queries; results.json
    with SEAL, ablations and BM25; the saved index reloaded in a new process returns the same run; leaderboard
    records for `dengen report`."""
    import json
    import subprocess
    import sys

    import yaml

    from conftest import REPO, SHARED_DATA

    config = tmp_path / "seal.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(SHARED_DATA / "limit-small"), "train_split": None, "backbone": "bert2bert", "layout": "plain",
        "span_samples": 2, "max_steps": 3,
        "query_sample": 16, "verify_queries": 16, "baselines": ["bm25"], "search": {"beam": 4, "fully_score": 50},
        "dev_split": "rest", "dev_sample": 8, "dev_choices": [{}, {"content_keys": True}],
        "ks": [2, 10], "main_metric": "recall@2", "out": str(tmp_path / "out"), "report": str(tmp_path / "report"),
    }))
    for flag in ([], ["--verify"], ["--records"]):
        subprocess.run([sys.executable, "-m", "training.seal", "--config", str(config), *flag], cwd=REPO, check=True)
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["seal", "seal-no_constraints", "seal-single_key", "seal-lm_weights", "bm25"]
    assert json.loads((tmp_path / "out" / "verify.json").read_text())["identical"] is True
    assert report["dev"]["queries"] == 8 and report["dev"]["chosen"] in [{}, {"content_keys": True}]
    records = sorted(p.name for p in (tmp_path / "report").glob("*.json"))
    assert "limit-small-test-seal-bert2bert.json" in records and "limit-small-test-bm25.json" in records


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "training" / "configs").glob("seal-*.yaml")))
def test_shipped_configs_read(name):
    """Every shipped SEAL recipe reads (unknown keys or bad types fail), names only SEAL search options and
    chooses on dev only among scoring options."""
    from retrieval.generative.seal import SEARCH_DEFAULTS
    from training.recipe import read_recipe
    from training.seal import DEFAULTS, check_dev_choices

    config = read_recipe(REPO / "training" / "configs" / f"{name}.yaml", DEFAULTS)
    check_dev_choices(config)
    assert set(config["search"]) <= set(SEARCH_DEFAULTS) and config["out"] == f"results/{name}"


# ---------------------------------------------------------------- refusals and the shared schedule


def test_bad_models_and_options_are_refused(tmp_path):
    from retrieval.generative.keymodel import KeyModel

    from retrieval.errors import ModelNotAvailable

    with pytest.raises(ModelNotAvailable, match="unknown model 't5'"):
        KeyModel.create("t5")
    with pytest.raises(ValueError, match="unknown key model layout 'oneshoot'"):
        build_retriever("seal", prompt="oneshoot")
    with pytest.raises(FileNotFoundError, match="keymodel.json"):
        KeyModel.load(tmp_path)
    with pytest.raises(ValueError, match="unknown SEAL option"):
        build_retriever("seal", beams=4)


def test_linear_warmup_is_hf_trainers_schedule():
    import torch

    from training.contrastive import linear_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_warmup(optimizer, total=10, warmup_ratio=0.2)  # 2 warm-up steps, then 8 of decay
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
