"""KILT jsonl, Run -> KILT guesses, and KILT's page-level metrics (facebookresearch/KILT eval_retrieval.py).

Hand-worked cases write KILT's evidence-set rank out step by step: each distinct gold set is one point that
moves to the position of its latest page, True once all its pages were seen; other pages are False.
"""
import gzip
import json
import random

import pytest

from conftest import shared
from eval.kilt import (
    align,
    corpus_pages,
    evaluate_kilt,
    evidence_rank,
    example_scores,
    kilt_queries,
    kilt_retrieval_per_example,
    kilt_retrieval_scores,
    load_knowledge_source,
    main,
    metric_names,
    read_kilt,
    run_to_kilt,
    write_kilt,
)
from retrieval import DataError, Doc, Run


def gold_record(qid, *provenance_sets, extra_outputs=()):
    """A gold example: one output (with an answer) per provenance set, plus any extra outputs."""
    outputs = [{"answer": f"a{i}", "provenance": [{"wikipedia_id": p} for p in pages]} for i, pages in enumerate(provenance_sets)]
    return {"id": qid, "input": f"question {qid}", "output": outputs + list(extra_outputs)}


def guess_record(qid, pages):
    return {"id": qid, "output": [{"provenance": [{"wikipedia_id": p} for p in pages]}]}


# ---------------------------------------------------------------- hand-worked metric cases


def kilt_test_case(rank_keys):
    """KILT's own tests/test_data gold2.out + guess2_1.out, re-typed (mixed int/str ids, as there)."""
    def entry(x):
        return {"wikipedia_id": x, "section": x, "start_paragraph_id": str(x), "end_paragraph_id": x}
    gold = {"id": 1, "input": "q", "output": [
        {"answer": "test1", "provenance": [entry(1), entry("2")]},
        {"answer": "test2", "provenance": [entry(5)]},
        {"answer": "test3", "provenance": [entry(7), entry(9), entry(11)]},
    ]}
    guess = {"id": 1, "output": [{"provenance": [entry(x) for x in (2, 5, "7", 33, 1, 9, 44, "88")]}]}
    return gold, guess


@pytest.mark.parametrize("rank_keys", [("wikipedia_id",), ("wikipedia_id", "section"), ("wikipedia_id", "start_paragraph_id", "end_paragraph_id")])
def test_kilt_reference_case_three_sets(rank_keys):
    gold, guess = kilt_test_case(rank_keys)
    got = kilt_retrieval_scores([gold], [guess], ks=(1, 2, 5, 10), rank_keys=rank_keys)
    # sets S0={1,2} S1={5} S2={7,9,11}; guesses 2 5 7 33 1 9 44 88
    # R-precision: S0 top-2 [2,5] -> 1/2; S1 top-1 [2] -> 0; S2 top-3 [2,5,7] -> 1/3; max = 1/2
    assert got["r-precision"] == 1 / 2
    # rank: 2 -> [S0]; 5 -> [S0,T]; 7 -> [S0,T,S2]; 33 -> [S0,T,S2,F]; 1 -> S0 done: [T,S2,F,T];
    #       9 -> S2 moves: [T,F,T,S2]; 44, 88 -> [T,F,T,S2,F,F]
    assert got["precision@1"] == 1  # [T]
    assert got["precision@5"] == 2 / 5  # [T,F,T,S2,F]: 2 True
    assert got["recall@5"] == 2 / 3  # 2 of 3 sets complete (KILT's own test asserts this, and the three above)
    assert got["success_rate@5"] == 1
    assert got["recall@2"] == 1 / 3  # [T,F]
    assert got["precision@10"] == 2 / 10 and got["recall@10"] == 2 / 3  # the rank has only 6 points


def test_kilt_reference_case_single_guess():
    gold, _ = kilt_test_case(("wikipedia_id",))
    got = kilt_retrieval_scores([gold], [guess_record(1, [5])], ks=(1, 5))  # KILT's guess2_2.out
    # R-precision: S0 top-2 [5] -> 0/2; S1 top-1 [5] -> 1/1; S2 -> 0/3; max = 1. rank: [T]
    assert got == {"r-precision": 1, "precision@1": 1, "precision@5": 1 / 5, "recall@5": 1 / 3, "success_rate@5": 1}


def test_duplicate_guesses_repeated_sets_and_shared_pages():
    gold = gold_record("q", ["A", "A", "B"], ["B", "C"], ["B", "A"], extra_outputs=[{"answer": "no provenance"}])
    guess = guess_record("q", ["B", "B", "X", "C", "A"])
    got = example_scores(gold, guess, ks=(1, 2, 5))
    # guesses de-duplicated first: B X C A.  Gold lists de-duplicated: {A,B} R=2, {B,C} R=2, {B,A} R=2, [] R=0
    # R-precision: top-2 [B,X] holds 1 of each 2-page set -> 1/2 (the answer-only output scores 0); max = 1/2
    assert got["r-precision"] == 1 / 2
    # distinct sets: S0={A,B}, S1={B,C} ({B,A} repeats S0).  B is in both: [S0,S1]; X: [S0,S1,F];
    # C completes S1: [S0,F,T]; A completes S0: [F,T,T]
    assert evidence_rank(["B", "X", "C", "A"], [{"A", "B"}, {"B", "C"}, {"A", "B"}]) == ([False, True, True], 2)
    assert got["precision@1"] == 0  # [F]
    assert got["recall@2"] == 1 / 2  # [F,T]: S1 counts within 2 although its last page C is the 3rd guess
    assert got["success_rate@2"] == 1
    assert got["recall@5"] == 1 and got["precision@5"] == 2 / 5


def test_one_page_completing_one_set_and_advancing_another():
    gold = gold_record("q", ["A"], ["B", "A"])
    got = example_scores(gold, guess_record("q", ["B", "A", "C"]), ks=(1, 2, 5))
    # R-precision: {A} top-1 [B] -> 0; {A,B} top-2 [B,A] -> 2/2; max = 1
    # rank: B -> [S1]; A completes S0 -> [S1,T], then S1 -> [T,T]; C -> [T,T,F]
    assert got["r-precision"] == 1
    assert got["precision@1"] == 1 and got["recall@2"] == 1 and got["precision@5"] == 2 / 5


def test_examples_without_provenance_stay_in_the_mean_with_zero():
    gold = [
        gold_record("hit", ["A"]),
        {"id": "answer-only", "input": "q", "output": [{"answer": "yes"}]},
        gold_record("empty-guess", ["B"]),
    ]
    guess = [guess_record("hit", ["A"]), guess_record("answer-only", ["A"]), guess_record("empty-guess", [])]
    per = kilt_retrieval_per_example(gold, guess, ks=(1, 5))
    assert per["r-precision"] == {"hit": 1, "answer-only": 0, "empty-guess": 0}
    assert per["recall@5"] == {"hit": 1, "answer-only": 0, "empty-guess": 0}
    # means over all 3 gold examples, as KILT divides by the dataset size: 1/3
    assert kilt_retrieval_scores(gold, guess, ks=(1, 5))["r-precision"] == 1 / 3


def test_an_empty_provenance_list_is_a_set_that_never_completes():
    # KILT builds an empty evidence set from "provenance": [] and counts it as a distinct set
    gold = gold_record("q", ["A"], [])
    got = example_scores(gold, guess_record("q", ["A"]), ks=(5,))
    assert got["r-precision"] == 1  # max(1/1, R=0 -> 0)
    assert got["recall@5"] == 1 / 2  # rank [T] over 2 distinct sets


def test_recall_and_success_rate_only_for_k_above_one():
    assert metric_names([5, 1]) == ["r-precision", "precision@1", "precision@5", "recall@5", "success_rate@5"]
    got = kilt_retrieval_scores([gold_record("q", ["A"])], [guess_record("q", ["A"])], ks=(1,))
    assert set(got) == {"r-precision", "precision@1"}
    with pytest.raises(ValueError, match="positive"):
        metric_names([0, 5])


def test_alignment_follows_kilt_validate_input():
    gold = [gold_record(7, ["A"]), gold_record("b", ["B"])]
    guess = [guess_record("b", ["B"]), guess_record(" 7 ", ["A"])]  # other order; ids compared as str(id).strip()
    assert [(g["id"], h["id"]) for g, h in align(gold, guess)] == [(7, " 7 "), ("b", "b")]
    assert kilt_retrieval_scores(gold, guess)["r-precision"] == 1
    with pytest.raises(ValueError, match="no guess for 1 gold ids"):
        kilt_retrieval_scores(gold, guess[:1])
    with pytest.raises(ValueError, match="'b' appears twice"):
        kilt_retrieval_scores(gold, guess + [guess_record("b", [])])
    with pytest.warns(UserWarning, match="1 guesses have ids outside the gold"):
        assert kilt_retrieval_scores(gold, guess + [guess_record("zz", [])])["r-precision"] == 1


def test_guess_needs_exactly_one_output_with_provenance():
    gold = gold_record("q", ["A"])
    with_answer = {"id": "q", "output": [{"answer": "x"}, {"provenance": [{"wikipedia_id": "A"}]}]}
    assert example_scores(gold, with_answer)["r-precision"] == 1  # answer outputs are filtered out first
    two = {"id": "q", "output": [{"provenance": []}, {"provenance": [{"wikipedia_id": "A"}]}]}
    with pytest.raises(ValueError, match="exactly one output with provenance, has 2"):
        example_scores(gold, two)
    with pytest.raises(ValueError, match="lacks wikipedia_id"):
        example_scores(gold, {"id": "q", "output": [{"provenance": [{"title": "A"}]}]})


# ---------------------------------------------------------------- runs to guesses


DOC_PAGES = {"A#p0": ("1", "Alpha"), "A#p1": ("1", "Alpha, later"), "B#p0": ("2", "Beta"), "C#p0": (3, None)}


def test_run_to_kilt_collapses_paragraphs_to_pages_first_occurrence_wins():
    run = Run({"q1": {"A#p1": 0.9, "B#p0": 0.8, "A#p0": 0.7, "C#p0": 0.6}})
    records = run_to_kilt(run, {"q1": "first", "q2": "second"}, DOC_PAGES, k=2)
    assert records[0] == {"id": "q1", "input": "first", "output": [{"provenance": [
        {"wikipedia_id": "1", "title": "Alpha, later"},  # A#p1 outranks A#p0, so its title is kept
        {"wikipedia_id": "2", "title": "Beta"},  # k=2 counts pages: A#p0 did not use a slot
    ]}]}
    assert records[1] == {"id": "q2", "input": "second", "output": [{"provenance": []}]}  # not in the run
    full = run_to_kilt(run, {"q1": "first"}, DOC_PAGES)[0]["output"][0]["provenance"]
    assert full[-1] == {"wikipedia_id": "3"}  # no title given: none written; ids become strings


def test_run_to_kilt_breaks_ties_like_the_rest_of_dengen_and_names_unknown_docs():
    tied = run_to_kilt({"q": {"A#p0": 1.0, "B#p0": 1.0}}, {"q": "x"}, DOC_PAGES)
    assert [p["wikipedia_id"] for p in tied[0]["output"][0]["provenance"]] == ["2", "1"]  # doc id descending
    with pytest.raises(ValueError, match="query 'q': document 'Z' is not in doc_pages"):
        run_to_kilt({"q": {"Z": 1.0}}, {"q": "x"}, DOC_PAGES)
    with pytest.warns(UserWarning, match="1 run queries are not in inputs"):
        run_to_kilt({"q": {}, "other": {}}, {"q": "x"}, DOC_PAGES)
    with pytest.raises(ValueError, match="positive"):
        run_to_kilt({}, {"q": "x"}, DOC_PAGES, k=0)


def test_corpus_pages_uses_titles_or_a_page_function():
    docs = [Doc("Super_Bowl_50#p0", "Super Bowl 50", "t"), Doc("Super_Bowl_50#p1", "Super Bowl 50", "u")]
    assert corpus_pages(docs) == {"Super_Bowl_50#p0": ("Super Bowl 50", "Super Bowl 50"), "Super_Bowl_50#p1": ("Super Bowl 50", "Super Bowl 50")}
    assert corpus_pages(docs, page_id=lambda d: d.id.split("#")[0])["Super_Bowl_50#p1"] == ("Super_Bowl_50", "Super Bowl 50")
    with pytest.raises(ValueError, match="'x' has no title"):
        corpus_pages([Doc("x", "", "text")])


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["guess.jsonl", "guess.jsonl.gz"])
def test_write_then_read_round_trips(tmp_path, name):
    records = run_to_kilt({"q1": {"A#p0": 1.0}}, {"q1": "Ünïcode input"}, DOC_PAGES)
    write_kilt(records, tmp_path / "out" / name)
    assert read_kilt(tmp_path / "out" / name) == records
    assert not list((tmp_path / "out").glob("*.tmp"))


GOOD = {"id": "q1", "input": "x", "output": [{"answer": "a", "provenance": [{"wikipedia_id": "1", "title": "T"}]}]}


@pytest.mark.parametrize(
    "line, field, message",
    [
        ('{"id": "q2", "input": ', None, "not valid JSON"),
        ('["a list"]', None, "expected a JSON object"),
        ('{"input": "x", "output": []}', "id", "missing"),
        ('{"id": "  ", "input": "x", "output": [{}]}', "id", "non-empty string or integer"),
        ('{"id": "q2", "output": [{"answer": "a"}]}', "input", "missing"),
        ('{"id": "q2", "input": 5, "output": [{"answer": "a"}]}', "input", "expected a string"),
        ('{"id": "q2", "input": "x"}', "output", "missing"),
        ('{"id": "q2", "input": "x", "output": []}', "output", "non-empty list"),
        ('{"id": "q2", "input": "x", "output": [{"answer": 3}]}', "output[0].answer", "expected a string"),
        ('{"id": "q2", "input": "x", "output": [{"provenance": {"wikipedia_id": "1"}}]}', "output[0].provenance", "expected a list"),
        ('{"id": "q2", "input": "x", "output": [{"answer": "a"}, {"provenance": [{"wikipedia_id": "1"}, {"title": "T"}]}]}',
         "output[1].provenance[1].wikipedia_id", "missing"),
        ('{"id": "q2", "input": "x", "output": [{"provenance": [{"wikipedia_id": null}]}]}', "output[0].provenance[0].wikipedia_id", "got None"),
        ('{"id": "q2", "input": "x", "output": [{"provenance": [{"wikipedia_id": "1", "title": 4}]}]}', "output[0].provenance[0].title", "expected a string"),
        ('{"id": " q1", "input": "x", "output": [{"answer": "a"}]}', "id", "duplicate id 'q1' (first on line 1)"),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")  # the blank line 2 is skipped but counted
    with pytest.raises(DataError) as err:
        read_kilt(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, field)
    assert message in str(err.value) and f"{path}, line 3" in str(err.value)


def test_guess_files_may_omit_input_and_rank_keys_are_checked(tmp_path):
    path = tmp_path / "g.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write(json.dumps({"id": 1, "output": [{"provenance": [{"wikipedia_id": 12}]}]}) + "\n")
    assert read_kilt(path, require_input=False)[0]["id"] == 1
    with pytest.raises(DataError, match="line 1, field 'input'"):
        read_kilt(path)
    with pytest.raises(DataError, match=r"field 'output\[0\].provenance\[0\].section': missing"):
        read_kilt(path, rank_keys=("wikipedia_id", "section"), require_input=False)


def test_command_line_prints_means(tmp_path, capsys):
    write_kilt([gold_record("q", ["A", "B"])], tmp_path / "gold.jsonl")
    write_kilt([guess_record("q", ["B", "X", "A"])], tmp_path / "guess.jsonl")
    main([str(tmp_path / "guess.jsonl"), str(tmp_path / "gold.jsonl"), "--ks", "1,2"])
    # top-2 [B,X] -> R-precision 1/2; rank B -> [S0], X -> [S0,F], A -> [F,T]
    assert json.loads(capsys.readouterr().out) == {"r-precision": 0.5, "precision@1": 0, "precision@2": 0.5, "recall@2": 1, "success_rate@2": 1}


# ---------------------------------------------------------------- knowledge source and end-to-end runs

KS_PAGES = [
    {"_id": "1", "wikipedia_id": "101", "wikipedia_title": "Scurvy", "text": ["Scurvy", "Scurvy is caused by a lack of vitamin C."]},
    {"_id": "2", "wikipedia_id": "102", "wikipedia_title": "Insulin", "text": ["Insulin", "Insulin lowers blood glucose."]},
    {"_id": "3", "wikipedia_id": "103", "wikipedia_title": "Chess", "text": ["Chess", "Chess is a board game for two players."]},
]


def write_knowledge_source(path, pages=KS_PAGES):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p) + "\n" for p in pages))
    return path


def test_knowledge_source_pages_become_documents(tmp_path):
    corpus = load_knowledge_source(write_knowledge_source(tmp_path / "ks.json"))
    assert corpus.ids == ["101", "102", "103"]
    assert corpus["101"].title == "Scurvy" and corpus["101"].text == "Scurvy is caused by a lack of vitamin C."  # title paragraph dropped
    bad = write_knowledge_source(tmp_path / "bad.json", KS_PAGES[:1] + [{"wikipedia_id": "9", "wikipedia_title": "X", "text": "not a list"}])
    with pytest.raises(DataError) as err:
        load_knowledge_source(bad)
    assert (err.value.line, err.value.field) == (2, "text") and str(bad) in str(err.value)


def test_evaluate_kilt_runs_a_retriever_end_to_end(tmp_path):
    from retrieval import build_retriever

    corpus = load_knowledge_source(write_knowledge_source(tmp_path / "ks.json"))
    gold = [gold_record("a", ["101"]), gold_record("b", ["102"]), gold_record("c", ["103", "101"])]
    gold[0]["input"], gold[1]["input"], gold[2]["input"] = "lack of vitamin C", "blood glucose hormone", "board game and vitamin C"
    write_kilt(gold, tmp_path / "toy-dev-kilt.jsonl")
    record, guess = evaluate_kilt(build_retriever("bm25"), tmp_path / "toy-dev-kilt.jsonl", corpus, ks=(1, 2))
    assert (record.dataset, record.split, record.main_metric) == ("toy", "dev", "r-precision")
    assert [g["id"] for g in guess] == ["a", "b", "c"] and guess[0]["output"][0]["provenance"][0] == {"wikipedia_id": "101", "title": "Scurvy"}
    assert record.metrics == kilt_retrieval_scores(gold, guess, ks=(1, 2))
    assert record.metrics["r-precision"] == 1.0  # each query names its pages' words; c's two pages rank first


# ---------------------------------------------------------------- the real KILT dev files


KILT_DEV = {"hotpotqa-dev-kilt.jsonl.gz": (5600, 13420, 10519), "wow-dev-kilt.jsonl.gz": (3054, 3054, 630)}


@pytest.fixture(scope="module", params=sorted(KILT_DEV))
def kilt_dev(request):
    return request.param, read_kilt(shared("kilt-dev") / request.param)


def gold_pages(record):
    """An example's distinct gold pages in first-seen order (every kilt-dev example has one provenance output)."""
    pages = []
    for entry in record["output"][0]["provenance"]:
        if entry["wikipedia_id"] not in pages:
            pages.append(entry["wikipedia_id"])
    return pages


def test_kilt_dev_reads_with_the_counts_of_its_provenance_file(kilt_dev):
    name, gold = kilt_dev
    examples, entries, pages = KILT_DEV[name]
    assert len(gold) == examples
    assert sum(len(o["provenance"]) for r in gold for o in r["output"]) == entries
    assert len({p["wikipedia_id"] for r in gold for o in r["output"] for p in o["provenance"]}) == pages


def test_kilt_dev_gold_as_guess_scores_one(kilt_dev):
    name, gold = kilt_dev
    # the raw provenance lists, repeats included: hotpotqa repeats a page in 1712 examples, so without
    # KILT's de-duplication R would be 3 or 4 there and R-precision would fall below 1
    repeats = sum(len(o["provenance"]) > len(gold_pages(r)) for r in gold for o in r["output"])
    assert repeats == (1712 if name.startswith("hotpotqa") else 0)
    guess = [{"id": r["id"], "output": [{"provenance": r["output"][0]["provenance"]}]} for r in gold]
    scores = kilt_retrieval_scores(gold, guess, ks=(1, 2, 5, 10))
    assert scores["r-precision"] == 1.0
    for k in (2, 5, 10):
        assert scores[f"recall@{k}"] == scores[f"success_rate@{k}"] == 1.0
        # one set per example gives one True point: KILT's precision@k tops out at 1/k
        assert scores[f"precision@{k}"] == pytest.approx(1 / k)
    assert scores["precision@1"] == 1.0


def expected_single_set(pages, gold, ks):
    """The metrics for one gold set computed plainly: R-precision from the first R pages; the set's point
    sits at 1 + (non-gold pages before its last gold page) once all its pages are present."""
    gold = set(gold)
    r = len(gold)
    out = {"r-precision": len(set(pages[:r]) & gold) / r}
    last = max((pages.index(p) for p in gold), default=-1) if gold <= set(pages) else None
    position = None if last is None else 1 + sum(p not in gold for p in pages[:last])
    for k in ks:
        hit = int(position is not None and position <= k)
        out[f"precision@{k}"] = hit / k
        if k > 1:
            out[f"recall@{k}"] = out[f"success_rate@{k}"] = hit
    return out


def test_kilt_dev_distractor_run_matches_an_independent_computation(kilt_dev):
    name, gold = kilt_dev
    rng = random.Random(20240607)
    own = [gold_pages(r) for r in gold]
    run, doc_pages, page_lists = Run(), {}, []
    for i, record in enumerate(gold):
        others = [j for j in rng.sample(range(len(gold)), 4) if j != i][:3]
        before = [p for j in others[: rng.randrange(4)] for p in own[j]]  # 0-3 other examples' pages first
        pages = before + own[i][::-1] + own[others[-1]]  # then the gold pages reversed, then one more example's
        scores = {}
        for position, page in enumerate(pages):  # two paragraphs per page listed; repeats keep the first
            for paragraph in (0, 1):
                doc_pages[f"{page}#p{paragraph}"] = (page, f"title of {page}")
                scores.setdefault(f"{page}#p{paragraph}", -2.0 * position - paragraph)
        run[record["id"]] = scores
        deduplicated = list(dict.fromkeys(pages))
        page_lists.append(deduplicated[:8])
    guess = run_to_kilt(run, kilt_queries(gold), doc_pages, k=8)
    assert [[p["wikipedia_id"] for p in g["output"][0]["provenance"]] for g in guess] == page_lists

    ks = (1, 2, 5, 10)
    per = kilt_retrieval_per_example(gold, guess, ks)
    for i, record in enumerate(gold):
        expected = expected_single_set(page_lists[i], own[i], ks)
        assert {m: per[m][record["id"]] for m in expected} == expected, record["id"]
    means = kilt_retrieval_scores(gold, guess, ks)
    assert 0.05 < means["r-precision"] < 0.95 and 0.05 < means["recall@2"] < 0.95  # not degenerate
    assert means == pytest.approx(DISTRACTOR_MEANS[name], abs=1e-4)


# the means the test above gives (pinned so a change in the run construction or metrics shows up)
DISTRACTOR_MEANS = {
    "hotpotqa-dev-kilt.jsonl.gz": {
        "r-precision": 0.2521, "precision@1": 0.2521, "precision@2": 0.1261, "precision@5": 0.1486, "precision@10": 0.1,
        "recall@2": 0.2521, "recall@5": 0.7429, "recall@10": 1.0,
        "success_rate@2": 0.2521, "success_rate@5": 0.7429, "success_rate@10": 1.0,
    },
    "wow-dev-kilt.jsonl.gz": {
        "r-precision": 0.2672, "precision@1": 0.2672, "precision@2": 0.258, "precision@5": 0.2, "precision@10": 0.1,
        "recall@2": 0.516, "recall@5": 1.0, "recall@10": 1.0,
        "success_rate@2": 0.516, "success_rate@5": 1.0, "success_rate@10": 1.0,
    },
}
