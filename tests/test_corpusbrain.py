"""CorpusBrain: the retriever generates only corpus titles and maps them to documents, saves and reloads in
a new process with the same run; the recipe's query halves, KILT gold and R-precision; the recipe end to end."""
import json
import sys

import pytest

from conftest import REPO, run_python, shared, tiny_keymodel
from retrieval import build_retriever, load_corpus, load_dataset, load_retriever
from retrieval.data import Corpus, Doc


@pytest.fixture(scope="module")
def keymodel():
    return tiny_keymodel()


@pytest.fixture(scope="module")
def tiny_brain(tiny_beir_session, keymodel):
    retriever = build_retriever("corpusbrain", model="bert2bert", beam=5)
    retriever._keymodel = keymodel
    retriever.index(load_corpus(tiny_beir_session))
    return retriever


def test_generated_titles_are_corpus_titles_and_map_to_their_documents(tiny_brain, tiny_beir_session):
    corpus = load_corpus(tiny_beir_session)
    titles = {tuple(tiny_brain.keymodel.tokens(d.title)): d.id for d in corpus}
    queries = ["what causes scurvy", "black holes and light", "a board game", "hormones", "x"]
    for query, found in zip(queries, tiny_brain.generate_titles(queries)):
        assert found and len(found) <= 5
        assert all(title in titles for title, _ in found), query
        assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
        # a title's score is log P(title, eos | query), teacher-forced (length_penalty 0, the default)
        best, score = found[0]
        eos = tiny_brain.keymodel.eos_id
        assert score == pytest.approx(tiny_brain.keymodel.score_keys(query, [list(best) + [eos]])[0], abs=1e-4)
    run = tiny_brain.search(dict(enumerate(queries)), k=3)
    for query_id, ranked in run.items():
        assert 1 <= len(ranked) <= 3 and set(ranked) <= set(corpus.ids)
        best_title = tiny_brain.generate_titles([queries[query_id]])[0][0]
        assert next(iter(ranked)) == titles[best_title[0]]  # the best title's document ranks first
        assert ranked[titles[best_title[0]]] == pytest.approx(best_title[1])


def test_length_penalty_one_ranks_titles_by_their_mean_token_log_probability(tiny_brain):
    """fairseq's lenpen 1, GENRE's beam score (its `marginalize` multiplies it back by the length): the sum over
    the title's tokens and eos, divided by their number."""
    query, eos = "what causes scurvy", tiny_brain.keymodel.eos_id
    tiny_brain.config["length_penalty"] = 1.0
    try:
        found = tiny_brain.generate_titles([query])[0]
    finally:
        tiny_brain.config["length_penalty"] = 0.0
    sums = tiny_brain.keymodel.score_keys(query, [list(title) + [eos] for title, _ in found])
    assert [score for _, score in found] == pytest.approx([s / (len(t) + 1) for s, (t, _) in zip(sums, found)], abs=1e-5)
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)


def test_a_beam_as_wide_as_the_titles_is_exact_search(tiny_brain):
    """scripts/corpusbrain_exact_check.py's premise: with one beam per title no prefix of the trie is pruned, so
    every title comes back with its teacher-forced log P(title, eos | query) and the first is the argmax."""
    query, eos = "what causes scurvy", tiny_brain.keymodel.eos_id
    titles = sorted(set(map(tuple, tiny_brain.identifiers)))
    tiny_brain.config["beam"] = len(titles)
    try:
        found = dict(tiny_brain.generate_titles([query])[0])
    finally:
        tiny_brain.config["beam"] = 5
    exact = dict(zip(titles, tiny_brain.keymodel.score_keys(query, [list(t) + [eos] for t in titles])))
    assert set(found) == set(exact)
    assert [found[t] for t in titles] == pytest.approx([exact[t] for t in titles], abs=1e-4)
    assert max(found, key=found.get) == max(exact, key=exact.get)


def test_documents_sharing_a_title_share_its_score(keymodel):
    corpus = Corpus([Doc("a", "Insulin", "one"), Doc("b", "insulin", "two"), Doc("c", "Chess", "three")])
    retriever = build_retriever("corpusbrain", model="bert2bert", beam=3)
    retriever._keymodel = keymodel
    retriever.index(corpus)  # MiniLM's tokenizer is uncased: "Insulin" and "insulin" are one title
    assert len(retriever.trie) == 2
    run = retriever.search({"q": "insulin"}, k=10)["q"]
    assert set(run) == {"a", "b", "c"} and run["a"] == run["b"]


def test_identifiers_titles_or_ids_and_refusals(keymodel):
    named = Corpus([Doc("Geneva Durben", "", "likes quokkas"), Doc("Ann Lee", "", "likes chess")])
    retriever = build_retriever("corpusbrain", model="bert2bert")
    retriever._keymodel = keymodel
    retriever.index(named)  # auto: no titles, so the ids are the identifiers (LIMIT's names)
    assert tuple(keymodel.tokens("Ann Lee")) in set(retriever.trie.titles())
    strict = build_retriever("corpusbrain", model="bert2bert", identifier="title")
    strict._keymodel = keymodel
    with pytest.raises(ValueError, match="'Geneva Durben' has no title"):
        strict.index(named)
    with pytest.raises(ValueError, match="identifier must be"):
        build_retriever("corpusbrain", identifier="url")
    with pytest.raises(ValueError, match="unknown CorpusBrain option"):
        build_retriever("corpusbrain", beams=3)
    with pytest.raises(ValueError, match="unknown CorpusBrain option"):
        retriever.set_search_options(length=3)


def test_saves_reloads_in_a_new_process_and_returns_the_same_run(tiny_brain, tiny_beir_session, tmp_path):
    queries = load_dataset(tiny_beir_session).queries
    here = tiny_brain.search(queries, k=5)
    tiny_brain.save(tmp_path / "brain")
    manifest = json.loads((tmp_path / "brain" / "manifest.json").read_text())
    assert manifest["kind"] == "corpusbrain" and manifest["titletrie"]["n_titles"] == 8
    code = ("import json; from retrieval import load_retriever, load_queries\n"
            f"r = load_retriever({str(tmp_path / 'brain')!r})\n"
            "import marisa_trie; assert r.trie.next_tokens([]) and r.config['beam'] == 5\n"
            f"print(json.dumps(r.search(load_queries({str(tiny_beir_session)!r}), k=5)))")
    there = json.loads(run_python(code).strip().splitlines()[-1])
    assert there == json.loads(json.dumps(here))  # ids, order and scores exactly
    again = load_retriever(tmp_path / "brain")
    assert again.search_one("what causes scurvy", k=2)[0].text  # texts from the docstore


def test_query_halves_kilt_gold_and_r_precision(tmp_path):
    from training.corpusbrain import DEFAULTS, kilt_gold, kilt_scores, load_data

    config = {**DEFAULTS, "data": str(shared("squad-v1.1-dev"))}
    dataset, train, test = load_data(config)
    assert len(dataset.corpus) == 48 and len(train) + len(test) == len(dataset.queries) == 10570
    assert not set(train) & set(test) and abs(len(train) - len(test)) <= 1
    assert load_data(config)[1] == train  # seeded
    assert len(load_data({**config, "test_sample": 10})[2]) == 10
    assert load_data({**config, "finetune_fraction": 0.0})[1] == {}
    some = dict(list(test.items())[:3])
    gold = kilt_gold(dataset, some)
    assert [g["id"] for g in gold] == list(some)
    first = gold[0]["output"][0]["provenance"][0]
    assert first["wikipedia_id"] in dataset.corpus.ids and first["title"] == dataset.corpus[first["wikipedia_id"]].title
    # hand case: query 1 ranks its page first, query 2 second, query 3 not at all -> R-precision (1 + 0 + 0) / 3
    pages = [gold[i]["output"][0]["provenance"][0]["wikipedia_id"] for i in range(3)]
    other = next(d for d in dataset.corpus.ids if d not in pages)
    run = {q: ({pages[0]: 2.0, other: 1.0} if i == 0 else {other: 2.0, pages[1]: 1.0} if i == 1 else {other: 1.0})
           for i, q in enumerate(some)}
    scores = kilt_scores(run, dataset, some, gold, tmp_path / "guess.jsonl", ks=[1, 2])
    assert scores["r-precision"] == pytest.approx(1 / 3) and scores["recall@2"] == pytest.approx(2 / 3)
    assert (tmp_path / "guess.jsonl").read_text().count("\n") == 3


@pytest.mark.slow
def test_recipe_pretrains_finetunes_evaluates_and_reloads(tmp_path):
    """`dengen train corpusbrain` on squad-v1.1-dev with a few steps per stage: results with both stages,
    BM25, KILT files, leaderboard records, and the saved index reloaded in a new process gives the same run."""
    import subprocess

    config = tmp_path / "cb.yaml"
    config.write_text(f"data: {shared('squad-v1.1-dev')}\nmax_steps: 2\ntest_sample: 16\nverify_queries: 8\n"
                      f"baselines: [bm25]\nout: {tmp_path / 'out'}\nreport: {tmp_path / 'report'}\n")
    for flag in ([], ["--verify"]):
        subprocess.run([sys.executable, "-m", "training.corpusbrain", "--config", str(config), *flag], cwd=REPO, check=True)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["corpusbrain-pretrained", "corpusbrain", "bm25"]
    assert all("r-precision" in r["metrics"] for r in results["rows"])
    assert results["rows"][2]["metrics"]["r-precision"] > 0.5  # BM25 over 48 pages
    assert results["training"]["pretraining_examples"] == {"ISS": 576, "LPS": 144, "HIP": 0}
    assert json.loads((tmp_path / "out" / "verify.json").read_text())["identical"] is True
    assert len(list((tmp_path / "report").glob("squad-v1.1-dev-test-page-*.json"))) == 3
    assert (tmp_path / "out" / "kilt" / "gold.jsonl").is_file() and (tmp_path / "out" / "kilt" / "corpusbrain.jsonl").is_file()
    # the same models (reused by their signatures), the pre-trained one not searched
    config.write_text(config.read_text() + "evaluate_pretrained: false\n")
    subprocess.run([sys.executable, "-m", "training.corpusbrain", "--config", str(config)], cwd=REPO, check=True)
    assert [r["name"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]] == ["corpusbrain", "bm25"]


def test_a_bad_evaluate_pretrained_is_one_line_before_any_work(tmp_path):
    from training.corpusbrain import main

    config = tmp_path / "cb.yaml"
    config.write_text(f"evaluate_pretrained: sometimes\nout: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit, match=r"cb.yaml: evaluate_pretrained must be true or false, got 'sometimes'"):
        main(["--config", str(config)])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["1.0", "-0.1", "lots"])
def test_a_bad_label_smoothing_is_one_line_before_any_work(tmp_path, value):
    from training.corpusbrain import main

    config = tmp_path / "cb.yaml"
    config.write_text(f"label_smoothing: {value}\nout: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit, match=r"cb.yaml: label_smoothing must be a number in \[0, 1\)"):
        main(["--config", str(config)])
    assert not (tmp_path / "out").exists()


def test_an_added_key_at_its_default_keeps_saved_models_reusable():
    from training.corpusbrain import DEFAULTS, STAGE_KEYS, signature
    from training.generative_eval import config_signature

    config = dict(DEFAULTS)
    before = config_signature(config, STAGE_KEYS["pretrained"])  # the hash models were saved under before iss_per_doc
    assert signature(config, "pretrained") == before
    assert signature({**config, "iss_per_doc": 100}, "pretrained") != before
    assert signature({**config, "iss_per_doc": 100}, "finetuned") != signature(config, "finetuned")
    finetuned = config_signature(config, STAGE_KEYS["pretrained"] + STAGE_KEYS["finetuned"])
    assert signature(config, "finetuned") == finetuned  # finetune_replay at 0 leaves saved models reusable
    replaying = {**config, "finetune_replay": 0.5}
    assert signature(replaying, "finetuned") != finetuned and signature(replaying, "pretrained") == before  # one stage's key


def test_replay_mixes_a_seeded_share_of_the_pretraining_examples_into_fine_tuning(tmp_path):
    from training.corpusbrain import main, replay_examples
    from training.corpusbrain_data import Example

    examples = [Example(f"sentence {i}", f"Page {i % 3}", "ISS") for i in range(10)]
    picked = replay_examples(examples, 0.5, seed=0)
    assert len(picked) == 5 and len(set(picked)) == 5 and set(picked) <= {(e.source, e.target) for e in examples}
    assert picked == replay_examples(examples, 0.5, seed=0) and replay_examples(examples, 0.0, seed=0) == []
    assert len(replay_examples(examples, 1.0, seed=1)) == 10
    config = tmp_path / "cb.yaml"
    config.write_text(f"finetune_replay: 1.5\nout: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit, match=r"cb.yaml: finetune_replay must be a number in \[0, 1\]"):
        main(["--config", str(config)])


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "training" / "configs").glob("corpusbrain-*.yaml")))
def test_shipped_configs_read(name):
    from training.corpusbrain import DEFAULTS
    from training.recipe import read_recipe

    config = read_recipe(REPO / "training" / "configs" / f"{name}.yaml", DEFAULTS)  # unknown keys or bad types fail
    assert config["out"] == f"results/{name}"
