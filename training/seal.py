"""Train SEAL's key model and evaluate the SEAL retriever against BM25 and dense, with ablations.

Training data as facebookresearch/SEAL's scripts build it (`scripts/training/make_supervised_dpr_dataset.py`,
`make_unsupervised_dataset.py`):
- supervised (a query and a relevant document): `span_samples` spans of 10 words from the document,
  each starting at a position drawn with probability softmax(overlap / temperature), the overlap being
  the summed fuzzy ratio (difflib, what fuzzywuzzy's ratio computes) between the query's word 3-grams and
  the document's 3-grams starting at non-stopwords: "q || body" -> span; and "q || title" -> title;
- unsupervised, from the corpus alone: "document || title" -> title (`full_doc`), `title_samples` of
  either "random span || title" -> title or "title || body" -> span (a fair coin), and `span_samples`
  of "random span || body" -> another span; 10% of sources lowercased.
Every target ends with the model's eos (the title terminator in the index stream).

    dengen train seal --config training/configs/seal-scifact.yaml
    dengen train seal --config training/configs/seal-scifact.yaml --verify   # reload the saved index in a new process
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import random
import time
from pathlib import Path

from retrieval.errors import SpecError
from retrieval.generative.seal import stopwords
from training.generative_eval import (config_signature, recipe_args, evaluate_baselines, load_run, print_table, run_digest, rewrite_records,
                                       sample_queries, save_run, timed_search, verify_reload, write_records)
from training.keymodel_train import start_keymodel, train_or_reuse
from training.recipe import read_recipe, write_results

DEFAULTS = {
    "data": "../shared/data/scifact",
    "train_split": "train",  # null: corpus spans only; "rest": the test split's queries outside query_sample
    "test_split": "test",
    "backbone": "smollm2-135m",  # any key model: "smollm2-135m", "bert2bert", or a Hugging Face folder
    "layout": "oneshot",  # how sources are laid out (retrieval.generative.keymodel.LAYOUTS), e.g. "oneshot"
    "lora": None,  # {r, alpha, dropout, targets}: LoRA adapters through peft instead of full fine-tuning
    "span_words": 10,
    "supervised_spans": 3,
    "temperature": 1.0,
    "full_doc": 1,
    "title_samples": 1,
    "span_samples": 2,
    "input_words": [1, 15],  # random source spans for unsupervised examples (min, max words)
    "epochs": 1,
    "max_steps": None,
    "batch_size": 16,
    "lr": 1e-4,  # bert2bert's cross-attention starts from scratch; SEAL used 3e-5 on a pretrained BART
    "warmup": 0.05,
    "max_target_tokens": 32,
    "seed": 0,
    "threads": 2,
    "device": "auto",  # where the key model trains: "auto" takes CUDA when there is one (evaluation stays on CPU)
    "search": {},  # SEAL search options (retrieval.generative.seal.SEARCH_DEFAULTS)
    "ablations": ["no_constraints", "single_key", "lm_weights"],
    "baselines": ["bm25", "dense:model=minilm,index=Flat"],
    "query_sample": None,  # evaluate on a seeded sample of this many test queries (null: all)
    # search options chosen on held-out queries, never on the test queries: a seeded `dev_sample` of
    # `dev_split`'s queries ("rest": the test split's queries outside query_sample), kept out of training,
    # are searched with each of `dev_choices` (scoring options over the `search` ones; {}: those alone)
    # and the best by main_metric is saved with the index (ties: the first listed)
    "dev_split": None,
    "dev_sample": 50,
    "dev_choices": [],
    "verify_queries": 64,  # --verify re-searches the first this-many evaluated queries in a new process
    # (a multiple of the search batch size: batches pad queries together, so other batches round differently)
    "depth": 100,
    "ks": [1, 2, 10, 100],
    "main_metric": "ndcg@10",  # the leaderboard column (LIMIT-small: recall@2, as eval/limit.py reads it)
    "out": "results/seal-scifact",
    "report": "results/seal-report",  # leaderboard records (dengen report FOLDER) go to FOLDER/<dataset>-*.json
}
ABLATIONS = {  # name -> search options that differ from the full model
    "no_constraints": {"constrained": False},
    "single_key": {"single_key": 1.0},
    "lm_weights": {"use_index_frequency": False},
    "subword_keys": {"whole_words": False},  # for recipes that search with whole_words (the reference's keys)
    "no_unigrams": {"unigram_scores": False},
    "stopword_keys": {"content_keys": False},  # for recipes that search with content_keys
}
ABLATION_OPTIONS = sorted({k for options in ABLATIONS.values() for k in options})
# options that change only how keys score, so one generation of keys serves every choice
SCORING_OPTIONS = {"unigram_scores", "single_key", "use_index_frequency", "whole_words", "content_keys", "alpha", "beta",
                   "smoothing", "max_hits", "fully_score", "title_keys"}  # title_keys: false ranks without the title keys


# ---------------------------------------------------------------------------------------- data


def overlap_weights(query: str, passage_words: list[str], banned: frozenset[str]) -> dict[int, float]:
    """{start position: summed fuzzy ratio of the query's word 3-grams with the 3-gram starting there}."""
    query_words = [w.lower() for w in query.split()]
    lower = [w.lower() for w in passage_words]
    starts = [i for i, w in enumerate(lower) if w not in banned]
    matcher = difflib.SequenceMatcher(autojunk=False)
    weights = dict.fromkeys(starts, 0.0)
    for i in range(len(query_words)):
        matcher.set_seq2(" ".join(query_words[i : i + 3]))
        for j in starts:
            matcher.set_seq1(" ".join(lower[j : j + 3]))
            weights[j] += matcher.ratio()
    return weights


def sample_spans(query: str, passage: str, n: int, words: int, temperature: float, rng: random.Random,
                 banned: frozenset[str]) -> list[str]:
    """`n` spans of `words` words from `passage`, starts drawn by softmax(overlap with the query / temperature)."""
    tokens = passage.split()
    weights = overlap_weights(query, tokens, banned)
    if not weights or sum(weights.values()) == 0.0:
        starts = [0] * n
    else:
        positions = list(weights)
        top = max(weights.values())
        probabilities = [math.exp((weights[p] - top) / temperature) for p in positions]
        starts = rng.choices(positions, weights=probabilities, k=n)
    return [" ".join(tokens[s : s + words]) for s in starts]


def supervised_examples(dataset, config: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(source, target) pairs from a split's queries and their relevant documents."""
    banned = stopwords()
    examples = []
    for qid, relevant in dataset.qrels.items():
        query = dataset.queries[qid].strip()
        for doc_id, grade in relevant.items():
            if grade <= 0 or doc_id not in dataset.corpus:
                continue
            doc = dataset.corpus[doc_id]
            for span in sample_spans(query, doc.text, config["supervised_spans"], config["span_words"],
                                     config["temperature"], rng, banned):
                examples.append((f"{query} || body", span))
            if doc.title.strip():
                examples.append((f"{query} || title", doc.title.strip()))
    return examples


def _good_start(word: str) -> bool:
    """The reference's filter for a span's first word: not an article/pronoun, no final or opening punctuation."""
    return word.lower() not in {"the", "to", "a", "an", "he", "his", "him", "he's", "she", "her", "she's", "it", "its",
                                "it's", "and", "or", "this", "that", "those", "these", '"', "'", "''"} \
        and word[-1] not in "?.!" and word[0] not in "(["


def unsupervised_examples(corpus, config: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(source, target) pairs from the corpus alone: title and span prediction from random spans."""
    low, high = config["input_words"]
    size = config["span_words"]
    examples = []
    for doc in corpus:
        title, tokens = doc.title.strip(), doc.text.split()
        if not tokens:
            continue
        if title and title != doc.text:
            examples += [(f"{doc.text} || title", title)] * config["full_doc"]
            for _ in range(config["title_samples"]):
                if rng.random() > 0.5:
                    n = rng.randint(low, high)
                    i = rng.randint(0, max(0, len(tokens) - n))
                    examples.append((" ".join(tokens[i : i + n]) + " || title", title))
                else:
                    for _attempt in range(10):
                        j = rng.randint(0, max(0, len(tokens) - size))
                        if _good_start(tokens[j]):
                            examples.append((f"{title} || body", " ".join(tokens[j : j + size])))
                            break
        sampled = failures = 0
        while sampled < config["span_samples"] and failures < 10:
            n = rng.randint(low, high)
            i, j = rng.randint(0, max(0, len(tokens) - n)), rng.randint(0, max(0, len(tokens) - size))
            if i == j or not _good_start(tokens[j]):
                failures += 1
                continue
            examples.append((" ".join(tokens[i : i + n]) + " || body", " ".join(tokens[j : j + size])))
            sampled += 1
    return [((s.lower() if rng.random() < 0.1 else s), t) for s, t in examples]


# ---------------------------------------------------------------------------------------- training


# ---------------------------------------------------------------------------------------- evaluation


def rank_keys(retriever, queries: dict[str, str], keys: dict, depth: int) -> dict:
    """The run of `queries` from keys generated once ({qid: keys}), scored with the retriever's current options."""
    return {qid: retriever.rank(queries[qid], query_keys, depth) for qid, query_keys in keys.items()}


def dev_dataset(config: dict, test_queries: dict[str, str]):
    """The held-out queries search options are chosen on (None without `dev_split`): never a test query."""
    if not config["dev_split"]:
        return None
    from retrieval import load_dataset

    split = config["test_split"] if config["dev_split"] == "rest" else config["dev_split"]
    full = load_dataset(config["data"], split)
    pool = {q: t for q, t in full.queries.items()
            if full.qrels.get(q) and not (split == config["test_split"] and q in test_queries)}
    chosen = sample_queries(pool, config["dev_sample"], config["seed"] + 1)
    return dataclasses.replace(full, queries=chosen, qrels={q: full.qrels[q] for q in chosen})


def recipe_queries(folder: Path) -> tuple[dict, object, dict[str, str], object]:
    """What a folder written by `dengen train seal` was run on: (config, test Dataset, the recipe's test sample,
    the dev Dataset or None). A folder without results.json is a SpecError naming it."""
    import json

    from retrieval import load_dataset

    results = Path(folder) / "results.json"
    if not results.is_file():
        raise SpecError(f"{folder}: no results.json here, so it is not a folder written by `dengen train seal`")
    written = json.loads(results.read_text(encoding="utf-8"))["config"]
    if "granularities" in written:  # a UGR recipe's folder: its indexes and queries are per granularity
        raise SpecError(f"{folder}: written by `dengen train ugr`, not `dengen train seal`")
    config = {**DEFAULTS, **written}
    test = load_dataset(config["data"], config["test_split"])
    sample = sample_queries(test.queries, config["query_sample"], config["seed"])
    return config, test, sample, dev_dataset(config, sample)


def check_dev_choices(config: dict, where: str = "recipe") -> None:
    """Refuse, before any training, a dev choice that is not a scoring option (`where`: the config file)."""
    for choice in config["dev_choices"]:
        if not isinstance(choice, dict) or not set(choice) <= SCORING_OPTIONS:
            raise SpecError(f"{where}: dev_choices: {choice!r} must be a mapping of scoring options ({', '.join(sorted(SCORING_OPTIONS))})")
    if config["dev_choices"] and not config["dev_split"]:
        raise SpecError(f"{where}: dev_choices need dev_split (held-out queries to choose on)")


def choose_on_dev(retriever, dev, config: dict) -> dict:
    """Search `dev` with each of `dev_choices`, keep the best by main_metric in the retriever; the record."""
    from eval.metrics import evaluate_run

    metric = config["main_metric"]
    base = {k: retriever.config[k] for k in SCORING_OPTIONS}
    keys = dict(zip(dev.queries, retriever.generate_keys(list(dev.queries.values()))))
    rows = []
    for choice in config["dev_choices"]:
        retriever.set_search_options(**{**base, **choice})
        run = rank_keys(retriever, dev.queries, keys, config["depth"])
        rows.append({"options": choice, "metrics": evaluate_run(dev.qrels, run, ks=config["ks"])})
    best = max(rows, key=lambda row: row["metrics"][metric])  # max keeps the first of equals
    retriever.set_search_options(**{**base, **best["options"]})
    for row in rows:
        print(f"dev ({len(dev.queries)} queries) {metric} {row['metrics'][metric]:.4f}  {row['options'] or 'search options'}")
    return {"split": config["dev_split"], "queries": len(dev.queries), "choices": rows, "chosen": best["options"]}



def evaluate_seal(index_folder: Path, test, config: dict, queries: dict[str, str]) -> list[dict]:
    """The saved SEAL index (loaded, as a user would), then each ablation; generation is shared by the
    ablations that only change the scoring."""
    from eval.metrics import evaluate_run
    from indexes.manifest import current_folder, folder_bytes
    from retrieval import load_retriever

    retriever = load_retriever(index_folder)
    model_bytes = folder_bytes(current_folder(index_folder) / "model")
    rows = []
    run, latency = timed_search(retriever, queries, config["depth"])
    save_run(run, index_folder.parent / "runs" / "seal")
    rows.append({"name": "seal", "metrics": evaluate_run(test.qrels, run, ks=config["ks"]), "ms_per_query": round(latency, 1),
                 "index_bytes": folder_bytes(index_folder) - model_bytes, "model_bytes": model_bytes})
    base = {k: retriever.config[k] for k in ABLATION_OPTIONS}
    keys = None  # generated once, shared by the ablations that only change the scoring
    for name in config["ablations"]:
        options = ABLATIONS[name]
        started = time.perf_counter()
        if "constrained" in options:
            retriever.set_search_options(**options)
            ablation_run = retriever.search(queries, k=config["depth"])
        else:
            if keys is None:
                keys = dict(zip(queries, retriever.generate_keys(list(queries.values()))))
            retriever.set_search_options(**options)
            ablation_run = rank_keys(retriever, queries, keys, config["depth"])
        retriever.set_search_options(**base)
        rows.append({"name": f"seal-{name}", "options": options, "metrics": evaluate_run(test.qrels, ablation_run, ks=config["ks"]),
                     "seconds": round(time.perf_counter() - started, 1)})
    return rows


# ---------------------------------------------------------------------------------------- recipe


def training_signature(config: dict) -> str:
    keys = ["data", "train_split", "test_split", "query_sample", "dev_split", "dev_sample", "backbone", "layout", "lora", "span_words", "supervised_spans", "temperature", "full_doc",
            "title_samples", "span_samples", "input_words", "epochs", "max_steps", "batch_size", "lr", "warmup",
            "max_target_tokens", "seed"]
    return config_signature(config, keys)


def main(argv: list[str] | None = None) -> dict:
    args = recipe_args("seal", __doc__, argv)
    config = read_recipe(args.config, DEFAULTS)
    if args.records:
        return rewrite_records(Path(config["out"]), "seal", DEFAULTS)

    import torch

    from retrieval import build_retriever, load_dataset
    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    test = load_dataset(config["data"], config["test_split"])
    queries = sample_queries(test.queries, config["query_sample"], config["seed"])
    test = dataclasses.replace(test, queries=queries, qrels={q: test.qrels[q] for q in queries if q in test.qrels})
    if args.verify:
        return verify_reload(out, out / "index", out / "runs" / "seal.json", queries, config)
    check_dev_choices(config, str(args.config))
    dev = dev_dataset(config, queries)
    held_out = set(dev.queries) if dev is not None else set()

    model_folder = out / "model"
    counts: dict = {}

    def examples() -> list[tuple[str, str]]:
        rng = random.Random(config["seed"])
        pairs = []
        if config["train_split"] == "rest":  # e.g. LIMIT: the queries that are not evaluated train
            full = load_dataset(config["data"], config["test_split"])
            rest = {q: t for q, t in full.queries.items() if q not in queries and q not in held_out}
            pairs += supervised_examples(dataclasses.replace(full, queries=rest, qrels={q: full.qrels[q] for q in rest if q in full.qrels}),
                                         config, rng)
        elif config["train_split"]:
            train = load_dataset(config["data"], config["train_split"])
            if config["dev_split"] == config["train_split"]:
                train = dataclasses.replace(train, qrels={q: r for q, r in train.qrels.items() if q not in held_out})
            pairs += supervised_examples(train, config, rng)
        counts["supervised_examples"] = len(pairs)
        pairs += unsupervised_examples(test.corpus, config, rng)
        counts["unsupervised_examples"] = len(pairs) - counts["supervised_examples"]
        return pairs

    info = train_or_reuse(model_folder, training_signature(config), lambda: start_keymodel(config),
                          examples, config, desc="seal train", extra=counts)

    seal = build_retriever("seal", model=str(model_folder), **config["search"])
    seal.index(test.corpus)
    dev_record = choose_on_dev(seal, dev, config) if config["dev_choices"] else None
    index_folder = out / "index"
    seal.save(index_folder, overwrite=True)  # the recipe's own output
    rows = evaluate_seal(index_folder, test, config, queries)
    rows[0]["build_seconds"] = round(seal.build_seconds, 1)
    rows += evaluate_baselines(test, config, queries, out / "baselines")
    report = {"config": config, "training": info, "dev": dev_record, "queries": len(queries), "rows": rows,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "run_sha256": run_digest(load_run(out / "runs" / "seal.json"))}
    write_results(out, report)
    write_records(report, "seal")
    print_table(report)
    return report


if __name__ == "__main__":
    main()
