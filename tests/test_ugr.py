"""UGR: task prompts in the key model, granularity corpora, the UGR retriever (tiny random models only)."""
import json
import random
import types

import pytest
import torch

from conftest import REPO, assert_same_run, run_python, shared, tiny_keymodel
from retrieval import build_retriever, load_corpus, load_dataset
from retrieval.generative.constrained import IndexConstraint, KeyRecorder
from retrieval.generative.prompts import DISCRETE_TEXT, TaskPrompt, TaskSource, encoder_embeddings
from indexes.manifest import current_folder

SOURCES = ["what causes scurvy || body", "hormone controlling blood sugar || title"]


def targets(km):
    return [km.tokens("vitamin c") + [km.eos_id], km.tokens("insulin") + [km.eos_id]]


def words(km, task):
    return km.tokenizer(DISCRETE_TEXT[task], add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- the prompt designs


def test_discrete_prompt_puts_the_task_words_after_cls():
    km = tiny_keymodel()
    plain = km._encoder_inputs(SOURCES[:1])["input_ids"][0].tolist()
    TaskPrompt.create(km, "discrete").attach(km, task="paragraph")  # a unit name maps to its task
    assert km.task == "passage"
    prompted = km._encoder_inputs(SOURCES[:1])["input_ids"][0].tolist()
    assert prompted == plain[:1] + words(km, "passage") + plain[1:]
    assert km.tokenizer.decode(prompted).startswith("[CLS] passage retrieval what causes scurvy")
    tagged = km._encoder_inputs([TaskSource(SOURCES[0], "sentence")])["input_ids"][0].tolist()
    assert tagged == plain[:1] + words(km, "sentence") + plain[1:]  # a tagged source overrides the default task


def test_soft_prompt_vectors_are_prepended_trainable_and_initialised_from_the_task_words():
    km = tiny_keymodel()
    plain = km._encoder_inputs(SOURCES)
    prompt = TaskPrompt.create(km, "soft", length=5)
    prompt.attach(km)
    table = encoder_embeddings(km).weight
    sentence = words(km, "sentence")
    assert torch.equal(prompt.vectors["sentence"], table[[sentence[i % len(sentence)] for i in range(5)]])
    batch = km._encoder_inputs([TaskSource(SOURCES[0], "sentence"), TaskSource(SOURCES[1], "document")])
    assert set(batch) == {"inputs_embeds", "attention_mask"}
    embeds, mask = batch["inputs_embeds"], batch["attention_mask"]
    assert torch.equal(embeds[0, :5], prompt.vectors["sentence"]) and torch.equal(embeds[1, :5], prompt.vectors["document"])
    assert torch.equal(embeds[:, 5:], table[plain["input_ids"]])
    assert torch.equal(mask, torch.cat([torch.ones(2, 5, dtype=mask.dtype), plain["attention_mask"]], 1))
    # trainable, and part of the parameters the shared trainer optimises
    assert all(v.requires_grad for v in prompt.vectors.values())
    ids = {id(p) for p in km.model.parameters()}
    assert all(id(v) in ids for v in prompt.vectors.values())
    km.loss([TaskSource(SOURCES[0], "sentence")], targets(km)[:1]).backward()
    assert prompt.vectors["sentence"].grad.abs().sum() > 0 and prompt.vectors["document"].grad is None
    with pytest.raises(ValueError, match="no task"):
        km._encoder_inputs(SOURCES[:1])  # soft prompt, untagged source, no default task


def test_hybrid_prompt_has_vectors_then_words():
    km = tiny_keymodel()
    plain = km._encoder_inputs(SOURCES[:1])["input_ids"][0].tolist()
    prompt = TaskPrompt.create(km, "hybrid", length=3)
    prompt.attach(km, task="sentence")
    ids, _ = km._batch(SOURCES[:1])
    assert ids[0].tolist() == plain[:1] + words(km, "sentence") + plain[1:]
    embeds = km._encoder_inputs(SOURCES[:1])["inputs_embeds"][0]
    assert torch.equal(embeds[:3], prompt.vectors["sentence"])
    assert torch.equal(embeds[3:], encoder_embeddings(km).weight[ids[0]])


def test_soft_prompts_are_refused_on_a_causal_backbone():
    causal = types.SimpleNamespace(causal=True, backbone="smollm2-135m")
    with pytest.raises(ValueError, match="discrete"):
        TaskPrompt.create(causal, "soft")
    km = tiny_keymodel()
    prompt = TaskPrompt.create(km, "hybrid", length=2)
    km.causal = True  # the check KeyModel.set_prompt makes for SmolLM2
    with pytest.raises(ValueError, match="discrete"):
        km.set_prompt(prompt)
    for bad in ({"design": "fancy"}, {"design": "soft", "length": 0}, {"design": "soft", "init": "zeros"}):
        with pytest.raises(ValueError):
            TaskPrompt(**bad)
    with pytest.raises(ValueError, match="unknown granularity"):
        TaskSource("q", "chapter")


def test_without_a_prompt_the_key_model_is_the_plain_transformers_model():
    km = tiny_keymodel()
    assert km._encoder_inputs(SOURCES).keys() == {"input_ids", "attention_mask"}
    ids, mask = km._batch(SOURCES)
    tg = targets(km)
    logprobs, _ = km.target_logprobs(SOURCES, tg)
    # the reference: the model called with ids directly, as KeyModel did before prompts existed
    width = max(map(len, tg))
    target = torch.full((2, width), km.pad_id)
    for i, t in enumerate(tg):
        target[i, : len(t)] = torch.tensor(t)
    decoder_in = torch.cat([torch.full((2, 1), km.start_id), target[:, :-1]], 1)
    decoder_mask = torch.cat([torch.ones(2, 1, dtype=torch.long), (target != km.pad_id).long()[:, :-1]], 1)
    with torch.no_grad():
        logits = km.model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_in,
                          decoder_attention_mask=decoder_mask).logits
    reference = logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1) * (target != km.pad_id)
    assert torch.allclose(logprobs.detach(), reference, atol=1e-6)
    # a prompt set and removed again leaves every output as it was
    before = (km.first_token_logprobs(SOURCES[0]), km.continuation_logprobs(km.context(SOURCES), [0, 1], [[], [2003]]),
              km.generate(SOURCES, num_beams=3, max_new_tokens=3))
    TaskPrompt.create(km, "hybrid", length=2, tune_model=False).attach(km, task="sentence")
    assert not torch.allclose(km.target_logprobs(SOURCES, tg)[0], logprobs)
    km.set_prompt(None)
    assert all(p.requires_grad for p in km.model.parameters()) and "task_prompt" not in dict(km.model.named_children())
    assert torch.equal(km.target_logprobs(SOURCES, tg)[0], logprobs)
    after = (km.first_token_logprobs(SOURCES[0]), km.continuation_logprobs(km.context(SOURCES), [0, 1], [[], [2003]]),
             km.generate(SOURCES, num_beams=3, max_new_tokens=3))
    assert (before[0] == after[0]).all() and torch.equal(before[1], after[1]) and before[2] == after[2]


# ---------------------------------------------------------------- training and storage


def test_soft_prompts_train_with_the_model_or_alone_and_save_and_load_exactly(tmp_path):
    from training.keymodel_train import train_keymodel

    examples = [(TaskSource("what causes scurvy || body", "sentence"), "lack of vitamin c"),
                (TaskSource("what causes scurvy || body", "document"), "scurvy is caused by"),
                (TaskSource("insulin || title", "document"), "Insulin")]
    sources = [e[0] for e in examples]
    config = {"seed": 0, "device": "cpu", "max_target_tokens": 8, "batch_size": 3, "epochs": 8, "max_steps": None,
              "lr": 1e-2, "warmup": 0.0}

    def loss(km):  # deterministic: eval mode
        with torch.no_grad():
            return km.loss(sources, [km.tokens(e[1]) + [km.eos_id] for e in examples]).item()

    # UGR's default: the prompt vectors train together with the model
    km = tiny_keymodel()
    prompt = TaskPrompt.create(km, "soft", length=4)
    prompt.attach(km)
    initial = {t: v.detach().clone() for t, v in prompt.vectors.items()}
    before = loss(km)
    info = train_keymodel(km, examples, config, progress=False)
    assert loss(km) < before - 1.0 and info["steps"] == 8
    assert not torch.equal(prompt.vectors["sentence"], initial["sentence"])
    assert torch.equal(prompt.vectors["passage"], initial["passage"])  # no passage examples, no gradient

    # prompt tuning proper: the backbone frozen, only the vectors move (a random tiny model barely listens
    # to its encoder, so the loss only has to go down; dropout off to see that)
    alone = tiny_keymodel()
    for module in alone.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    TaskPrompt.create(alone, "soft", length=4, tune_model=False).attach(alone)
    backbone = {n: p.detach().clone() for n, p in alone.model.named_parameters() if "task_prompt" not in n}
    before = loss(alone)
    train_keymodel(alone, examples, {**config, "lr": 0.1, "epochs": 4}, progress=False)
    assert loss(alone) < before
    assert all(torch.equal(p, backbone[n]) for n, p in alone.model.named_parameters() if "task_prompt" not in n)

    km.save(tmp_path / "model")
    assert (tmp_path / "model" / "prompts.pt").is_file()
    assert json.loads((tmp_path / "model" / "prompts.json").read_text())["design"] == "soft"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as weights:
        assert not any("task_prompt" in k for k in weights.keys())  # the weights file is a plain model's
    from retrieval.generative.keymodel import KeyModel

    again = KeyModel.load(tmp_path / "model")
    assert again.prompt.design == "soft" and again.prompt.tune_model
    tg = [km.tokens(e[1]) + [km.eos_id] for e in examples]
    assert torch.equal(again.target_logprobs(sources, tg)[0], km.target_logprobs(sources, tg)[0])
    km.set_prompt(None)
    km.save(tmp_path / "model")  # re-saved without a prompt: the prompt files go
    assert not (tmp_path / "model" / "prompts.json").exists() and KeyModel.load(tmp_path / "model").prompt is None


# ---------------------------------------------------------------- generation and the retriever


@pytest.fixture(scope="module")
def tiny_ugr(tiny_beir_session):
    retriever = build_retriever("ugr", model="bert2bert", granularity="sentence", prompt="hybrid", prompt_length=3,
                                beam=4, length=4, title_length=6, fully_score=50, use_index_frequency=False)
    retriever._keymodel = tiny_keymodel()
    retriever.index(load_corpus(tiny_beir_session))
    return retriever


def test_constrained_generation_with_a_prompt_yields_corpus_ngrams_with_their_true_scores(tiny_ugr):
    km = tiny_ugr.keymodel
    assert km.prompt.design == "hybrid" and km.task == "sentence"
    sources = ["what causes scurvy || body", "hormone controlling blood sugar || body"]
    recorder = KeyRecorder(4, km.eos_id, km.pad_id)
    allowed = IndexConstraint(tiny_ugr.fm, km.eos_id, vocab_size=km.vocab_size)
    hyps = km.generate(sources, num_beams=4, max_new_tokens=4, allowed=allowed, recorder=recorder)
    for source, found, keys in zip(sources, hyps, recorder.keys):
        assert found and keys
        for seq, _ in found:
            assert tiny_ugr.fm.count(seq) > 0
        for key in keys:
            body = [t for t in key if t != km.eos_id]
            assert tiny_ugr.fm.count(body) > 0
        # the recorded log-probabilities are the prompted model's teacher-forced ones: generation saw the prompt
        sample = list(keys)[:5]
        for key, score in zip(sample, km.score_keys(source, [list(k) for k in sample])):
            assert keys[key] == pytest.approx(score, abs=1e-4)
    for keys in tiny_ugr.generate_keys(["what causes scurvy"]):
        assert keys and all(tiny_ugr.fm.count(list(k)) > 0 for k in keys)


def test_ugr_saves_reloads_in_a_new_process_and_returns_the_same_run(tiny_ugr, tiny_beir_session, tmp_path):
    queries = load_dataset(tiny_beir_session).queries
    run = tiny_ugr.search(queries, k=5)
    assert set(run) == set(queries) and all(run.values())
    tiny_ugr.save(tmp_path / "ugr")
    manifest = json.loads((tmp_path / "ugr" / "manifest.json").read_text())
    assert manifest["kind"] == "ugr" and manifest["prompt_design"] == "hybrid" and manifest["task"] == "sentence"
    assert (current_folder(tmp_path / "ugr") / "model" / "prompts.pt").is_file()
    code = (
        "import json\nfrom retrieval import load_retriever, load_dataset\n"
        f"r = load_retriever({str(tmp_path / 'ugr')!r})\n"
        "assert r.keymodel.prompt.design == 'hybrid' and r.keymodel.task == 'sentence'\n"
        f"print(json.dumps(r.search(load_dataset({str(tiny_beir_session)!r}).queries, k=5)))"
    )
    assert_same_run(run, json.loads(run_python(code).strip().splitlines()[-1]))


def test_ugr_options_are_checked():
    with pytest.raises(ValueError, match="granularity"):
        build_retriever("ugr", granularity="chapter")
    with pytest.raises(ValueError, match="prompt design"):
        build_retriever("ugr", prompt="loud")
    with pytest.raises(ValueError, match="unknown SEAL option"):
        build_retriever("ugr", beams=3)
    r = build_retriever("ugr", granularity="page", prompt="discrete")
    r._keymodel = tiny_keymodel()
    assert r.keymodel.task == "document" and r.keymodel.prompt.design == "discrete"


# ---------------------------------------------------------------- granularity corpora and examples


def test_granularity_corpora_counts_and_qrels():
    from training.ugr_data import granularity_corpus

    root = shared("squad-v1.1-dev").parent
    shared("scifact-claims")
    pages, paragraphs = granularity_corpus("page", root), granularity_corpus("paragraph", root)
    assert len(pages.corpus) == 48 and len(paragraphs.corpus) == 2067
    assert {p.split("#p")[0] for p in paragraphs.corpus.ids} == set(pages.corpus.ids)
    page_test, paragraph_test = pages.split("test"), paragraphs.split("test")
    for qid, relevant in paragraph_test.qrels.items():  # a question's page is its paragraph's page
        assert set(page_test.qrels[qid]) == {p.split("#p")[0] for p in relevant}

    documents, sentences = granularity_corpus("document", root), granularity_corpus("sentence", root)
    assert len(documents.corpus) == 5183 and len(sentences.corpus) == 45952
    assert {s.split("#s")[0] for s in sentences.corpus.ids} == set(documents.corpus.ids)
    one = sentences.corpus["13734012#s4"]
    assert one.text.startswith("RESULTS Of the 32,441 appendix samples 16 were positive")
    assert one.title == documents.corpus["13734012"].title
    for split, claims in (("train", 505), ("test", 188)):  # claims with rationale sentences (PROVENANCE.md)
        sentence_split, document_split = sentences.split(split), documents.split(split)
        assert len(sentence_split.qrels) == claims == len(sentence_split.queries)
        for qid, relevant in sentence_split.qrels.items():
            assert sentence_split.queries[qid] == document_split.queries[qid]  # BEIR ids are claim ids
            assert {s.split("#s")[0] for s in relevant} <= set(document_split.qrels[qid])
    # the shared index rests on this: a page is its paragraphs joined by a blank line, an abstract its sentences
    # joined by a space, and tokenising the parts gives the whole's tokens (checked on every page, 200 abstracts)
    km = tiny_keymodel()
    for parents, units, sep, sample in ((pages, paragraphs, "\n\n", None), (documents, sentences, " ", 200)):
        members: dict = {}
        for unit in units.corpus:
            members.setdefault(unit.id.rsplit("#", 1)[0], []).append(unit.text)
        assert all(sep.join(members[d.id]) == d.text for d in parents.corpus)
        for d in list(parents.corpus)[:sample]:
            assert [t for text in members[d.id] for t in km.tokens(text)] == km.tokens(d.text), d.id
    assert sentences.task == "sentence" and paragraphs.task == "passage" and pages.task == documents.task == "document"
    with pytest.raises(ValueError, match="no 'train' split"):
        pages.split("train")


def test_examples_are_seals_tagged_with_their_granularity_and_mixed(tiny_beir_session):
    from training.ugr_data import GranularityCorpus, granularity_examples, multitask_examples

    test = load_dataset(tiny_beir_session)
    units = {name: GranularityCorpus(name, test.corpus, {"train": (test.queries, test.qrels)})
             for name in ("document", "sentence")}
    examples = {name: granularity_examples(u, "train", {"supervised_spans": 2}, random.Random(0)) for name, u in units.items()}
    sentence = examples["sentence"]
    assert len(sentence) == len(test.qrels) * 3  # 2 spans + 1 title per relevant unit
    assert all(isinstance(s, TaskSource) and s.granularity == "sentence" for s, _ in sentence)
    assert ("what causes scurvy || title", "Scurvy") in [(str(s), t) for s, t in sentence]
    spans = [t for s, t in sentence if s.startswith("what causes scurvy || body")]
    assert all(t in test.corpus["d2"].text for t in spans)
    mixed = multitask_examples({"sentence": sentence, "document": examples["document"][:3]}, "uniform", random.Random(1))
    assert len(mixed) == 2 * len(sentence)
    assert sum(s.granularity == "document" for s, _ in mixed) == len(sentence)
    assert len(multitask_examples({"sentence": sentence, "document": examples["document"][:3]})) == len(sentence) + 3
    import pickle

    assert pickle.loads(pickle.dumps(sentence[0][0])).granularity == "sentence"


# ---------------------------------------------------------------- one FM-index shared by units and their parents

SENTENCES = [("scurvy#s0", "Scurvy", "Scurvy is a disease caused by a lack of vitamin C."),
             ("scurvy#s1", "Scurvy", "Sailors ate citrus fruit to prevent it."),
             ("insulin#s0", "Insulin", "Insulin is a hormone made by the pancreas."),
             ("insulin#s1", "Insulin", "It lowers blood sugar."),
             ("insulin#s2", "Insulin", "Diabetes follows when the pancreas makes too little insulin.")]
QUERIES = {"q1": "what causes scurvy", "q2": "hormone controlling blood sugar", "q3": "pancreas and diabetes"}
OPTIONS = dict(beam=4, length=4, title_length=6, use_index_frequency=False, unigram_scores=False)


def ugr_over(docs, **config):
    from retrieval.data import Corpus, Doc

    retriever = build_retriever("ugr", model="bert2bert", prompt="discrete", **OPTIONS, **config)
    retriever._keymodel = tiny_keymodel()
    retriever.index(Corpus([Doc(*d) for d in docs]))
    return retriever


@pytest.fixture(scope="module")
def shared_ugr():
    return ugr_over(SENTENCES, granularity="sentence", units="sentence", parents="document")


def test_a_shared_index_ranks_units_and_parents_as_their_own_indexes_would(shared_ugr):
    """Given the same keys, the shared index ranks sentences as an index of the sentences alone does, and
    abstracts as an index of the abstracts (their sentences joined) does; model-only weights, so that the
    shared text's counts do not enter."""
    units = ugr_over(SENTENCES, granularity="sentence")
    joined = {}
    for doc_id, title, text in SENTENCES:
        parent = doc_id.split("#")[0]
        joined[parent] = (parent, title, f"{joined[parent][2]} {text}" if parent in joined else text)
    parents = ugr_over(list(joined.values()), granularity="document")
    assert shared_ugr.fm.tokens.tolist() == parents.fm.tokens.tolist()  # one index: the abstracts' text
    km = shared_ugr.keymodel
    for unit, (_, title, text) in enumerate(SENTENCES):  # each unit: its parent's header (title, eos), then its own tokens
        assert shared_ugr.view.doc_tokens(unit).tolist() == km.tokens(title) + [km.eos_id] + km.tokens(text)
    keys = {tuple(km.tokens("vitamin c")): -1.0, tuple(km.tokens("pancreas")): -2.0, tuple(km.tokens("blood sugar")): -0.5,
            (-1, *km.tokens("Insulin"), km.eos_id): -3.0}  # the last: a title key
    for query in QUERIES.values():
        shared_ugr.set_search_options(granularity="sentence")
        assert shared_ugr.rank(query, keys, 5) == pytest.approx(units.rank(query, keys, 5))
        assert list(shared_ugr.rank(query, keys, 5)) == list(units.rank(query, keys, 5))
        shared_ugr.set_search_options(granularity="document")
        assert list(shared_ugr.rank(query, keys, 5)) == list(parents.rank(query, keys, 5))
        assert shared_ugr.rank(query, keys, 5) == pytest.approx(parents.rank(query, keys, 5))
    assert shared_ugr.keymodel.task == "document"
    shared_ugr.set_search_options(granularity="sentence")
    assert shared_ugr.keymodel.task == "sentence"


def test_a_shared_index_saves_and_reloads_in_a_new_process_at_both_granularities(shared_ugr, tmp_path):
    runs = {}
    for granularity in ("sentence", "document"):
        shared_ugr.set_search_options(granularity=granularity)
        runs[granularity] = shared_ugr.search(QUERIES, k=5)
        assert all(runs[granularity].values())
    assert all("#s" in d for ranked in runs["sentence"].values() for d in ranked)
    assert set(d for ranked in runs["document"].values() for d in ranked) <= {"scurvy", "insulin"}
    shared_ugr.save(tmp_path / "ugr")
    manifest = json.loads((tmp_path / "ugr" / "manifest.json").read_text())
    assert manifest["n_parents"] == 2 and manifest["doc_count"] == 5 and manifest["config"]["parents"] == "document"
    code = (
        "import json\nfrom retrieval import load_retriever\n"
        f"r = load_retriever({str(tmp_path / 'ugr')!r})\nruns = {{}}\n"
        "for g in ('sentence', 'document'):\n"
        "    r.set_search_options(granularity=g)\n"
        f"    runs[g] = r.search({QUERIES!r}, k=5)\n"
        "print(json.dumps(runs))"
    )
    there = json.loads(run_python(code).strip().splitlines()[-1])
    for granularity, run in runs.items():
        assert_same_run(run, there[granularity])


def test_shared_index_refusals(shared_ugr):
    with pytest.raises(ValueError, match="serves 'sentence' and 'document'"):
        shared_ugr.set_search_options(granularity="page")
    with pytest.raises(ValueError, match="'insulin#s1': the units of parent 'insulin' are not contiguous"):
        ugr_over(SENTENCES[2:3] + SENTENCES[:2] + SENTENCES[3:], granularity="sentence", parents="document")
    with pytest.raises(ValueError, match="unit 'scurvy': a unit id must be 'PARENT#suffix'"):
        ugr_over([("scurvy", "Scurvy", "text")], granularity="sentence", parents="document")
    with pytest.raises(ValueError, match="differs from its parent's"):
        ugr_over([SENTENCES[0], ("scurvy#s1", "Other", "text")], granularity="sentence", parents="document")
    with pytest.raises(ValueError, match="serves 'sentence'"):
        build_retriever("ugr", granularity="document", units="sentence")


@pytest.mark.slow
def test_recipe_trains_multitask_and_per_task_models_and_reloads(tmp_path):
    """`dengen train ugr` on the SQuAD granularities with two steps per model: one multi-task row and one
    per-task row per granularity, BM25 beside them, records per granularity, and the shared index reloaded in
    a new process gives the same run at both granularities."""
    import subprocess
    import sys

    from conftest import REPO

    config = tmp_path / "ugr.yaml"
    config.write_text(f"data: {shared('squad-v1.1-dev').parent}\ngranularities: [page, paragraph]\ntrain_queries: 4\n"
                      "designs: [soft]\nmax_steps: 2\nbatch_size: 4\ntest_sample: 4\nverify_queries: 4\n"
                      "dev_sample: 4\ndev_choices: [{}, {unigram_scores: false}]\n"
                      "search: {beam: 2, length: 3, title_length: 4}\nbaselines: [bm25]\n"
                      f"out: {tmp_path / 'out'}\nreport: {tmp_path / 'report'}\n")
    for flag in ([], ["--verify"]):
        subprocess.run([sys.executable, "-m", "retrieval.cli", "train", "ugr", "--config", str(config), *flag],
                       cwd=REPO, check=True)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = [(r["name"], r["granularity"]) for r in results["rows"]]
    assert rows == [("ugr-multitask-soft", "paragraph"), ("ugr-multitask-soft", "page"), ("ugr-single-page", "page"),
                    ("ugr-single-paragraph", "paragraph"), ("bm25", "page"), ("bm25", "paragraph")]
    assert all(r["ms_per_query"] > 0 and "ndcg@10" in r["metrics"] for r in results["rows"])
    for row in results["rows"][:4]:  # each UGR row chose its scoring options on 4 held-out training queries
        assert row["dev"]["queries"] == 4 and row["dev"]["chosen"] in ({}, {"unigram_scores": False})
        assert row["options"].items() >= row["dev"]["chosen"].items()
    training = results["training"]
    assert training["multitask-soft"]["steps"] == 2 and set(training["single-page"]) >= {"examples_page", "signature"}
    assert training["multitask-soft"]["examples"] == training["single-page"]["examples"] + training["single-paragraph"]["examples"]
    for g in ("page", "paragraph"):
        assert json.loads((tmp_path / "out" / f"verify-multitask-soft-{g}.json").read_text())["identical"] is True
        assert len(list((tmp_path / "report").glob(f"squad-v1.1-dev-ugr-{g}-*.json"))) == 3
    assert "| ugr-multitask-soft |" in (tmp_path / "out" / "designs.md").read_text()


def test_dev_queries_are_training_queries_that_did_not_train():
    from training.ugr import DEFAULTS, dev_sets, load_units, sampled_tests, training_examples

    config = {**DEFAULTS, "data": str(shared("squad-v1.1-dev").parent), "granularities": ["page", "paragraph"],
              "train_queries": 30, "dev_sample": 20, "dev_choices": [{}]}
    units = load_units(config)
    devs, tests = dev_sets(units, config), sampled_tests(units, config)
    examples = training_examples(units, config)
    for g, dev in devs.items():
        trained = {s.split(" || ")[0] for s, _ in examples[g]}  # the training queries' texts, as sources carry them
        assert len(trained) >= 25
        assert len(dev.queries) == 20 and dev.queries.keys() <= units[g].split("train").queries.keys()
        assert not set(dev.queries) & set(tests[g].queries)
        assert not {t for t in dev.queries.values()} & trained
    assert dev_sets(units, {**config, "dev_choices": []}) is None


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "training" / "configs").glob("ugr*.yaml")))
def test_shipped_configs_read(name):
    """Every shipped UGR recipe reads (unknown keys or bad types fail) and names only SEAL search options."""
    from retrieval.generative.seal import SEARCH_DEFAULTS
    from training.recipe import read_recipe
    from training.ugr import DEFAULTS

    config = read_recipe(REPO / "training" / "configs" / f"{name}.yaml", DEFAULTS)
    assert set(config["search"]) <= set(SEARCH_DEFAULTS) and config["out"] == f"results/{name}"
