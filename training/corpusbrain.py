"""Pre-train (and fine-tune) CorpusBrain's title generator, then evaluate it against BM25 and dense.

1. Pre-training on the corpus alone: ISS / LPS / HIP pseudo-queries -> titles (`training.corpusbrain_data`,
   built as ict-bigdatalab/CorpusBrain's preprocessing builds them).
2. Fine-tuning (when `finetune_fraction` > 0): the queries are shuffled (seeded) and that fraction of them
   trains the pre-trained model on (query -> title of each relevant document); the rest are the test set.
   Without fine-tuning (LIMIT: no training queries) every query is a test query.
3. Evaluation on the test queries: CorpusBrain after pre-training only, after fine-tuning, BM25 and dense;
   metrics from pytrec_eval and, with `kilt: true`, KILT-format predictions scored by KILT's page-level
   R-precision (`eval.kilt`), the gold file written beside them.

    dengen train corpusbrain --config training/configs/corpusbrain-squad.yaml
    dengen train corpusbrain --config training/configs/corpusbrain-squad.yaml --verify   # reload in a new process
"""
from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

from training.generative_eval import (config_signature, recipe_args, evaluate_baselines, load_run, print_table, run_digest, rewrite_records,
                                       sample_queries, save_run, split_queries, timed_search, verify_reload, write_records)
from training.keymodel_train import start_keymodel, train_or_reuse
from training.recipe import read_recipe, write_results

DEFAULTS = {
    "data": "../shared/data/squad-v1.1-dev",
    "corpus_file": "pages.jsonl.gz",  # inside `data` (null: the folder's corpus)
    "split": "test-page",  # queries and qrels of this split
    "identifier": "auto",  # "title", "id" (LIMIT: documents are named by their ids) or "auto"
    "backbone": "bert2bert",  # any key model: "bert2bert", "smollm2-135m", or a Hugging Face folder
    "layout": "plain",  # how sources are laid out (retrieval.generative.keymodel.LAYOUTS), e.g. "oneshot"
    "lora": None,  # {r, alpha, dropout, targets}: LoRA adapters through peft instead of full fine-tuning
    "max_source_tokens": 64,  # sources are cut to this many tokens (the reference: BART's 1024 positions)
    "min_title_chars": 4,  # CorpusBrain's page filter (utils/filter_corpus.py)
    "min_doc_words": 128,
    "iss_per_doc": 12,  # ISS sentences per page (the reference's 12; a small corpus can afford all of them)
    "pretrain_epochs": 10,
    "finetune_fraction": 0.5,  # share of the queries that fine-tunes (0: pre-training only, all queries test)
    "finetune_epochs": 1,
    "finetune_replay": 0.0,  # share of the pre-training examples mixed into fine-tuning (seeded), so it does not forget the pages
    "batch_size": 16,
    "lr": 1e-4,
    "warmup": 0.05,
    "label_smoothing": 0.0,  # fairseq's label-smoothed cross-entropy, both stages (the reference trains with 0.1)
    "max_steps": None,  # a cap per training stage (tests)
    "max_target_tokens": 32,
    "seed": 0,
    "threads": 2,
    "device": "auto",
    "search": {},  # CorpusBrain search options (retrieval.generative.corpusbrain.SEARCH_DEFAULTS)
    "test_sample": None,  # evaluate on a seeded sample of this many test queries (null: all)
    "evaluate_pretrained": True,  # search the test queries with the pre-trained model too (false: the fine-tuned one only)
    "baselines": ["bm25", "dense:model=minilm,index=Flat"],
    "kilt": True,  # write KILT-format predictions and score page-level R-precision
    "verify_queries": 64,
    "depth": 100,
    "ks": [1, 2, 5, 10, 100],
    "main_metric": "r-precision",
    "out": "results/corpusbrain-squad",
    "report": "results/corpusbrain-report",
}
STAGE_KEYS = {  # the config keys each stage's model depends on (a saved model with the same signature is reused)
    "pretrained": ["data", "corpus_file", "identifier", "backbone", "layout", "lora", "max_source_tokens", "min_title_chars", "min_doc_words",
                   "pretrain_epochs", "batch_size", "lr", "warmup", "max_steps", "max_target_tokens", "seed"],
    "finetuned": ["split", "finetune_fraction", "finetune_epochs"],
}
ADDED_KEYS = {"pretrained": ["iss_per_doc", "label_smoothing"],  # keys added after models were saved (config_signature's `added`)
              "finetuned": ["finetune_replay"]}


def load_data(config: dict):
    """The dataset (corpus from `corpus_file` when given) and its queries split into (train, test)."""
    from retrieval import load_dataset
    from retrieval.data import Dataset, load_corpus, load_qrels, load_queries

    folder = Path(config["data"])
    if config["corpus_file"]:
        corpus = load_corpus(folder / config["corpus_file"])
        queries = load_queries(folder, config["split"])
        qrels = load_qrels(folder, config["split"], corpus=corpus, queries=queries)
        dataset = Dataset(corpus=corpus, queries={q: queries[q] for q in queries if q in qrels}, qrels=qrels,
                          name=folder.name, split=config["split"])
    else:
        dataset = load_dataset(folder, config["split"])
    train, test = split_queries(dataset.queries, config["finetune_fraction"], config["seed"])
    test = sample_queries({q: dataset.queries[q] for q in test}, config["test_sample"], config["seed"])
    return dataset, {q: dataset.queries[q] for q in train}, test


def signature(config: dict, stage: str) -> str:
    stages = ["pretrained"] + (["finetuned"] if stage == "finetuned" else [])
    keys = [k for s in stages for k in STAGE_KEYS[s]]
    return config_signature(config, keys, added={k: DEFAULTS[k] for s in stages for k in ADDED_KEYS[s]})


def train_stage(folder: Path, stage: str, config: dict, start, examples: list[tuple[str, str]], epochs: int) -> dict:
    """Train `start()` (a KeyModel) on `examples` into `folder`, unless a model with this stage's signature is there."""
    return train_or_reuse(folder, signature(config, stage), start, lambda: examples, {**config, "epochs": epochs},
                          desc=f"corpusbrain {stage}", extra={"stage": stage})


def kilt_gold(dataset, queries: dict[str, str]) -> list[dict]:
    """KILT gold records: each test query with its relevant documents as provenance pages."""
    titles = {d.id: d.title or d.id for d in dataset.corpus}
    return [{"id": q, "input": text, "output": [{"provenance": [{"wikipedia_id": doc, "title": titles[doc]}
                                                                for doc, grade in sorted(dataset.qrels[q].items()) if grade > 0]}]}
            for q, text in queries.items()]


def kilt_scores(run: dict, dataset, queries: dict[str, str], gold: list[dict], path: Path, ks) -> dict[str, float]:
    """Write the run as KILT predictions at `path` and score it against `gold` (R-precision, recall@k, ...)."""
    from eval.kilt import corpus_pages, kilt_retrieval_scores, run_to_kilt, write_kilt

    pages = corpus_pages(dataset.corpus, page_id=lambda doc: doc.id)
    guess = run_to_kilt(run, queries, pages, k=max(ks))
    write_kilt(guess, path)
    return kilt_retrieval_scores(gold, guess, ks=[k for k in ks if k > 1])


def evaluate(out: Path, dataset, test: dict[str, str], config: dict, stages: list[str]) -> list[dict]:
    from eval.metrics import evaluate_run
    from indexes.manifest import current_folder, folder_bytes
    from retrieval import build_retriever, load_retriever

    test_set = dataclasses.replace(dataset, queries=test, qrels={q: dataset.qrels[q] for q in test})
    gold = kilt_gold(dataset, test)
    if config["kilt"]:
        from eval.kilt import write_kilt

        write_kilt(gold, out / "kilt" / "gold.jsonl")
    rows = []
    for stage in stages:
        name = "corpusbrain" if stage == "finetuned" else "corpusbrain-pretrained"
        built = build_retriever("corpusbrain", model=str(out / stage), identifier=config["identifier"], **config["search"])
        built.index(dataset.corpus)
        index = out / f"index-{stage}"
        built.save(index, overwrite=True)  # the recipe's own output
        retriever = load_retriever(index)  # searched as a user would, from the saved folder
        run, latency = timed_search(retriever, test, config["depth"])
        save_run(run, out / "runs" / name)
        model_bytes = folder_bytes(current_folder(index) / "model")
        row = {"name": name, "options": {"stage": stage}, "metrics": evaluate_run(test_set.qrels, run, ks=config["ks"]),
               "ms_per_query": round(latency, 1), "index_bytes": folder_bytes(index) - model_bytes,
               "model_bytes": model_bytes, "build_seconds": round(built.build_seconds, 1)}
        rows.append(row)
    rows += evaluate_baselines(test_set, config, test, out / "baselines")
    if config["kilt"]:
        for row in rows:
            run = load_run(out / "runs" / f"{row['name']}.json") if row["name"].startswith("corpusbrain") else None
            if run is None:  # baselines: search again from the saved index (fast)
                run = load_retriever(out / "baselines" / row["name"].split(":")[0]).search(test, k=config["depth"])
            row["metrics"].update(kilt_scores(run, dataset, test, gold, out / "kilt" / f"{row['name'].split(':')[0]}.jsonl",
                                              config["ks"]))
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = recipe_args("corpusbrain", __doc__, argv)
    config = read_recipe(args.config, DEFAULTS)
    if not isinstance(config["label_smoothing"], (int, float)) or not 0 <= config["label_smoothing"] < 1:
        raise SystemExit(f"{args.config}: label_smoothing must be a number in [0, 1), got {config['label_smoothing']!r}")
    if not isinstance(config["finetune_replay"], (int, float)) or not 0 <= config["finetune_replay"] <= 1:
        raise SystemExit(f"{args.config}: finetune_replay must be a number in [0, 1], got {config['finetune_replay']!r}")
    if not isinstance(config["evaluate_pretrained"], bool):
        raise SystemExit(f"{args.config}: evaluate_pretrained must be true or false, got {config['evaluate_pretrained']!r}")
    config["test_split"] = config["split"]  # the records' split
    out = Path(config["out"])
    if args.records:
        return rewrite_records(out, "corpusbrain", DEFAULTS)

    import torch

    from retrieval.generative.keymodel import KeyModel
    from training.corpusbrain_data import pretraining_examples

    torch.set_num_threads(config["threads"])
    dataset, train_queries, test = load_data(config)
    stage = "finetuned" if train_queries else "pretrained"
    if args.verify:
        return verify_reload(out, out / f"index-{stage}", out / "runs" / f"{'corpusbrain' if train_queries else 'corpusbrain-pretrained'}.json",
                             test, config)

    identifiers = dict(zip(dataset.corpus.ids, _identifier_texts(dataset.corpus, config["identifier"])))
    pages = [d._replace(title=identifiers[d.id]) for d in dataset.corpus]
    pretraining = pretraining_examples(pages, random.Random(config["seed"]), min_title_chars=config["min_title_chars"],
                                       min_doc_words=config["min_doc_words"], iss_per_doc=config["iss_per_doc"])
    info = {"pretraining_examples": pretraining.counts, "pretraining_stats": pretraining.stats}
    info["pretrained"] = train_stage(out / "pretrained", "pretrained", config,
                                     lambda: start_keymodel(config, max_source_tokens=config["max_source_tokens"]),
                                     [(e.source, e.target) for e in pretraining.examples], config["pretrain_epochs"])
    stages = ["pretrained"]
    if train_queries:
        pairs = question_pairs(dataset, train_queries, identifiers)
        replay = replay_examples(pretraining.examples, config["finetune_replay"], config["seed"])
        info["finetune_replay_examples"] = len(replay)
        pairs += replay
        info["finetuned"] = train_stage(out / "finetuned", "finetuned", config, lambda: KeyModel.load(out / "pretrained", trainable=True),
                                        pairs, config["finetune_epochs"])
        info["finetune_queries"] = len(train_queries)
        stages.append("finetuned")
    if not config["evaluate_pretrained"] and len(stages) > 1:
        stages = stages[1:]  # a pre-trained model searched for nothing: a slow key model's test search saved
    rows = evaluate(out, dataset, test, config, stages)
    report = {"config": config, "training": info, "queries": len(test), "rows": rows,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "run_sha256": run_digest(load_run(out / "runs" / f"{rows[len(stages) - 1]['name']}.json"))}
    write_results(out, report)
    write_records(report, "corpusbrain")
    print_table(report)
    return report


def question_pairs(dataset, queries: dict[str, str], identifiers: dict[str, str]) -> list[tuple[str, str]]:
    """Fine-tuning pairs: (question, identifier of each relevant document)."""
    return [(text, identifiers[doc]) for q, text in queries.items() for doc, grade in sorted(dataset.qrels[q].items()) if grade > 0]


def replay_examples(examples: list, share: float, seed: int) -> list[tuple[str, str]]:
    """A seeded `share` of the pre-training examples, as (source, target), to train beside the queries."""
    picked = random.Random(seed).sample(examples, round(share * len(examples)))
    return [(e.source, e.target) for e in picked]


def _identifier_texts(corpus, identifier: str) -> list[str]:
    from retrieval.generative.corpusbrain import CorpusBrainRetriever

    return CorpusBrainRetriever(identifier=identifier).identifier_texts(corpus)


if __name__ == "__main__":
    main()
