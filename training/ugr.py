"""Train UGR's key models (one multi-task model per prompt design, and one model per task) and evaluate
them at four granularities against BM25 and dense.

1. Units and splits (`training.ugr_data`): SQuAD v1.1 dev pages and paragraphs, SciFact abstracts and
   abstract sentences. SQuAD questions have no training split: a seeded `squad_train_fraction` of them
   trains and the rest tests, the same questions at both SQuAD granularities. SciFact uses its own
   train and test (dev) claims.
2. Training examples: SEAL's supervised ones per granularity, from a seeded sample of `train_queries`
   training queries, every source tagged with its task.
3. Models, each trained for `epochs` over its examples:
   - one multi-task model per design in `designs` ("discrete", "soft", "hybrid"): all four
     granularities' examples mixed (`mix`), each source carrying its task's prompt;
   - with `per_task: true`, one prompt-less model per granularity on that granularity's examples only,
     so that each task's examples are seen as often as in a multi-task model.
4. Indexes: one UGR index per corpus and model, shared by the two granularities of the corpus (SQuAD:
   paragraphs and their pages; SciFact: sentences and their abstracts), one FM-index each.
5. Evaluation on a seeded `test_sample` of each granularity's test queries: every model at every
   granularity it was trained for, BM25 and dense on the same units; metrics from pytrec_eval, latency
   per query; runs, results.json, a prompt-design table and leaderboard records. With `dev_choices`,
   each granularity first chooses its scoring options (as SEAL's recipe does) on a seeded `dev_sample`
   of its training queries that did not train (never a test query).

    dengen train ugr --config training/configs/ugr.yaml
    dengen train ugr --config training/configs/ugr.yaml --verify   # reload the saved indexes in a new process
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

from training.generative_eval import (config_signature, recipe_args, evaluate_baselines, load_run, run_digest, rewrite_records, sample_queries,
                                       save_run, split_queries, timed_search, verify_reload, write_records)
from training.keymodel_train import start_keymodel, train_or_reuse
from training.seal import check_dev_choices
from training.recipe import read_recipe, write_results

DEFAULTS = {
    "data": "../shared/data",  # the shared data folder (squad-v1.1-dev, scifact, scifact-claims)
    "granularities": ["page", "paragraph", "document", "sentence"],
    "squad_train_fraction": 0.5,
    "train_queries": 200,  # per granularity, a seeded sample of its training queries
    "designs": ["discrete", "soft", "hybrid"],
    "prompt_length": 10,
    "per_task": True,
    "mix": "proportional",  # "proportional": the union (each task as its data); "uniform": each task resampled to the largest
    "backbone": "bert2bert",  # any key model: "bert2bert", "smollm2-135m", or a Hugging Face folder
    "layout": "plain",  # how sources are laid out (retrieval.generative.keymodel.LAYOUTS), e.g. "oneshot"
    "lora": None,  # {r, alpha, dropout, targets}: LoRA adapters through peft instead of full fine-tuning
    "span_words": 10,  # SEAL's supervised examples (training/seal.py)
    "supervised_spans": 3,
    "temperature": 1.0,
    "epochs": 1,
    "max_steps": None,
    "batch_size": 16,
    "lr": 1e-4,
    "warmup": 0.05,
    "max_target_tokens": 32,
    "seed": 0,
    "threads": 2,
    "device": "auto",
    "search": {},  # SEAL search options for every UGR index (retrieval.generative.seal.SEARCH_DEFAULTS)
    "test_sample": 50,  # per granularity (null: every test query)
    "dev_sample": 50,  # per granularity: held-out training queries that choose among dev_choices
    "dev_choices": [],  # scoring options over `search` (training.seal.SCORING_OPTIONS), chosen per granularity
    "baselines": ["bm25", "dense:model=minilm,index=Flat"],
    "verify_queries": 16,  # a multiple of the search batch size (batches pad queries together)
    "depth": 100,
    "ks": [1, 5, 10, 100],
    "main_metric": "ndcg@10",
    "out": "results/ugr",
    "report": "results/ugr-report",
}
CORPORA = {"squad": ("paragraph", "page"), "scifact": ("sentence", "document")}  # name -> (units, parents)
DATASET = {"page": "squad-v1.1-dev", "paragraph": "squad-v1.1-dev", "document": "scifact", "sentence": "scifact-claims"}
TRAINING_KEYS = ["data", "squad_train_fraction", "train_queries", "prompt_length", "mix", "backbone", "layout", "lora", "span_words",
                 "supervised_spans", "temperature", "epochs", "max_steps", "batch_size", "lr", "warmup",
                 "max_target_tokens", "seed"]


def corpus_of(granularity: str) -> str:
    return next(name for name, pair in CORPORA.items() if granularity in pair)


def load_units(config: dict) -> dict:
    """{granularity: GranularityCorpus} with "train" and "test" splits; SQuAD's questions split seeded."""
    from training.ugr_data import granularity_corpus

    units = {g: granularity_corpus(g, config["data"]) for g in config["granularities"]}
    squad = [g for g in ("page", "paragraph") if g in units]
    if squad:  # SQuAD has test questions only: the same seeded share trains at both granularities
        ids = set.intersection(*(set(units[g].splits["test"][0]) for g in squad))
        parts = dict(zip(("train", "test"), split_queries(ids, config["squad_train_fraction"], config["seed"])))
        for g in squad:
            queries, qrels = units[g].splits["test"]
            units[g].splits = {split: ({q: queries[q] for q in part}, {q: qrels[q] for q in part}) for split, part in parts.items()}
    return units


def training_queries(unit, config: dict) -> dict[str, str]:
    """The seeded sample of `train_queries` training queries a granularity trains on (the rest may be dev queries)."""
    return sample_queries(unit.splits["train"][0], config["train_queries"], config["seed"])


def training_examples(units: dict, config: dict) -> dict[str, list]:
    """{granularity: tagged (source, target) pairs} from a seeded sample of `train_queries` training queries."""
    from training.ugr_data import granularity_examples

    examples = {}
    for g, unit in units.items():
        qrels = unit.splits["train"][1]
        chosen = training_queries(unit, config)
        sampled = dataclasses.replace(unit, splits={"train": (chosen, {q: qrels[q] for q in chosen})})
        examples[g] = granularity_examples(sampled, "train", config, random.Random(config["seed"]))
    return examples


def train_models(out: Path, units: dict, config: dict) -> dict[str, dict]:
    """Train (or reuse) every model; {model name: {"folder", "granularities", "design", "training"}}."""
    from retrieval.generative.prompts import TaskPrompt
    from training.ugr_data import multitask_examples

    cache: dict = {}

    def examples() -> dict[str, list]:  # built once, only if some model needs training
        if not cache:
            cache.update(training_examples(units, config))
        return cache

    def create(design: str):
        def start():
            km = start_keymodel(config)
            if design != "none":
                TaskPrompt.create(km, design, length=config["prompt_length"]).attach(km)
            return km
        return start

    plans = {f"multitask-{d}": (d, list(units)) for d in config["designs"]}
    if config["per_task"]:
        plans.update({f"single-{g}": ("none", [g]) for g in units})
    models = {}
    for name, (design, granularities) in plans.items():
        folder = out / "models" / name
        wanted = config_signature({**config, "design": design, "tasks": granularities}, TRAINING_KEYS + ["design", "tasks"])
        counts: dict = {}

        def mixed(granularities=granularities, counts=counts) -> list:
            per_task = {g: examples()[g] for g in granularities}
            counts.update({f"examples_{g}": len(e) for g, e in per_task.items()})
            return multitask_examples(per_task, config["mix"], random.Random(config["seed"]))

        info = train_or_reuse(folder, wanted, create(design), mixed, config, desc=f"ugr {name}", extra=counts)
        models[name] = {"folder": folder, "design": design, "granularities": granularities, "training": info}
    return models


def evaluate(out: Path, units: dict, models: dict, tests: dict, config: dict, devs: dict | None = None) -> list[dict]:
    """Rows: every model at each granularity it was trained for, then the baselines per granularity.
    `tests`: {granularity: the sampled test Dataset}; `devs`: {granularity: held-out training queries}
    that choose each granularity's scoring options among `dev_choices` (None: the `search` options)."""
    from eval.metrics import evaluate_run
    from indexes.manifest import folder_bytes
    from retrieval import build_retriever, load_retriever
    from training.seal import SCORING_OPTIONS, choose_on_dev

    rows = []
    for name, model in models.items():
        for corpus, (unit_name, parent_name) in CORPORA.items():
            wanted = [g for g in (unit_name, parent_name) if g in model["granularities"]]
            if not wanted:
                continue
            built = build_retriever("ugr", model=str(model["folder"]), granularity=wanted[0], units=unit_name,
                                    parents=parent_name if parent_name in units else None, **config["search"])
            built.index(units[unit_name].corpus)
            index = out / "indexes" / f"{name}-{corpus}"
            built.save(index, overwrite=True)  # the recipe's own output
            retriever = load_retriever(index)  # searched as a user would, from the saved folder
            model_bytes = folder_bytes(retriever.path / "model")  # the generation it loaded
            scoring = {k: retriever.config[k] for k in SCORING_OPTIONS}  # the recipe's, before any granularity's choice
            for g in wanted:
                retriever.set_search_options(granularity=g, **scoring)
                dev = choose_on_dev(retriever, devs[g], config) if devs else None
                run, latency = timed_search(retriever, tests[g].queries, config["depth"])
                save_run(run, run_stem(out, name, g))
                rows.append({"name": f"ugr-{name}", "dataset": DATASET[g], "split": f"ugr-{g}", "granularity": g,
                             "queries": len(tests[g].queries), "options": {"granularity": g, "prompt": model["design"], "model": name,
                                                                          **(dev["chosen"] if dev else {})},
                             **({"dev": dev} if dev else {}),
                             "metrics": evaluate_run(tests[g].qrels, run, ks=config["ks"]),
                             "ms_per_query": round(latency, 1), "index_bytes": folder_bytes(index) - model_bytes,
                             "model_bytes": model_bytes, "build_seconds": round(built.build_seconds, 1)})
    for g, test in tests.items():
        for row in evaluate_baselines(test, config, test.queries, out / "baselines" / g):
            rows.append({**row, "dataset": DATASET[g], "split": f"ugr-{g}", "granularity": g, "queries": len(test.queries)})
    return rows


def sampled_tests(units: dict, config: dict) -> dict:
    """{granularity: its test Dataset cut to a seeded sample of `test_sample` queries}."""
    tests = {}
    for g, unit in units.items():
        test = unit.split("test")
        queries = sample_queries(test.queries, config["test_sample"], config["seed"])
        tests[g] = dataclasses.replace(test, queries=queries, qrels={q: test.qrels[q] for q in queries})
    return tests


def dev_sets(units: dict, config: dict) -> dict | None:
    """{granularity: a seeded `dev_sample` of its training queries outside the training sample} (None
    without `dev_choices`)."""
    if not config["dev_choices"]:
        return None
    devs = {}
    for g, unit in units.items():
        train, trained = unit.split("train"), training_queries(unit, config)
        pool = {q: text for q, text in train.queries.items() if q not in trained and train.qrels.get(q)}
        chosen = sample_queries(pool, config["dev_sample"], config["seed"] + 1)
        devs[g] = dataclasses.replace(train, queries=chosen, qrels={q: train.qrels[q] for q in chosen})
    return devs


def dev_chosen(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """{(model, granularity): the scoring options its dev queries chose}, from a results.json's rows."""
    return {(r["options"]["model"], r["granularity"]): r["dev"]["chosen"] for r in rows if "dev" in r}


def recipe_queries(folder: Path, granularity: str) -> tuple[dict, object, dict[str, str], object, Path, dict]:
    """What a folder written by `dengen train ugr` searched at one granularity: (config, the full test Dataset,
    the recipe's test sample, the dev Dataset or None, the first multi-task model's index, the search options
    the granularity chose on its dev queries). A folder not written by the UGR recipe is a SpecError naming it."""
    from retrieval.errors import SpecError

    results = Path(folder) / "results.json"
    report = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    if "granularities" not in report.get("config", {}):  # the UGR recipe writes its whole config; SEAL's has no granularities
        raise SpecError(f"{folder}: no UGR results.json here, so it is not a folder written by `dengen train ugr`")
    config = {**DEFAULTS, **report["config"]}
    if granularity not in config["granularities"]:
        raise SpecError(f"{folder}: the recipe has no {granularity!r} granularity (it has {', '.join(config['granularities'])})")
    if not config["designs"]:
        raise SpecError(f"{folder}: the recipe trained no multi-task model (designs: [])")
    model = f"multitask-{config['designs'][0]}"
    unit = load_units(config)[granularity]
    devs = dev_sets({granularity: unit}, config)
    return (config, unit.split("test"), sampled_tests({granularity: unit}, config)[granularity].queries,
            devs[granularity] if devs else None, Path(folder) / "indexes" / f"{model}-{corpus_of(granularity)}",
            dev_chosen(report["rows"]).get((model, granularity), {}))


def run_stem(out: Path, model: str, granularity: str) -> Path:
    return out / "runs" / f"{model}-{granularity}"


def design_table(report: dict) -> str:
    """Markdown: the main metric and latency of every model and baseline at every granularity."""
    config = report["config"]
    metric, grans = config["main_metric"], config["granularities"]
    cells: dict = {}
    for row in report["rows"]:
        cells.setdefault(row["name"], {})[row["granularity"]] = row
    lines = ["| retriever | " + " | ".join(f"{g} {metric}" for g in grans) + " | " + " | ".join(f"{g} ms/q" for g in grans) + " |",
             "|---|" + "---:|" * (2 * len(grans))]
    for name, by_g in cells.items():
        scores = [f"{by_g[g]['metrics'][metric]:.4f}" if g in by_g else "" for g in grans]
        latency = [f"{by_g[g]['ms_per_query']:.1f}" if g in by_g else "" for g in grans]
        lines.append(f"| {name} | " + " | ".join(scores) + " | " + " | ".join(latency) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = recipe_args("ugr", __doc__, argv)
    config = read_recipe(args.config, DEFAULTS)
    config["test_split"], config["dev_split"] = "test", "train"  # UGR's splits; dev queries: training ones that did not train
    out = Path(config["out"])
    if args.records:
        return rewrite_records(out, "ugr", DEFAULTS)

    import torch

    torch.set_num_threads(config["threads"])
    units = load_units(config)
    tests = sampled_tests(units, config)
    if args.verify:  # the first multi-task model (or per-task models), every granularity, from its saved index
        verdicts, chosen = {}, {}
        if (out / "results.json").is_file():  # the scoring options each granularity chose on its dev queries
            chosen = dev_chosen(json.loads((out / "results.json").read_text())["rows"])
        for name in ([f"multitask-{config['designs'][0]}"] if config["designs"] else [f"single-{g}" for g in units]):
            for g in units:
                index, saved = out / "indexes" / f"{name}-{corpus_of(g)}", run_stem(out, name, g).with_suffix(".json")
                if index.is_dir() and saved.is_file():
                    verdicts[f"{name}-{g}"] = verify_reload(out, index, saved, tests[g].queries, config,
                                                            options={"granularity": g, **chosen.get((name, g), {})},
                                                            name=f"verify-{name}-{g}")
        return verdicts

    check_dev_choices(config, str(args.config))
    models = train_models(out, units, config)
    rows = evaluate(out, units, models, tests, config, dev_sets(units, config))
    report = {"config": config, "training": {n: m["training"] for n, m in models.items()},
              "queries": {g: len(t.queries) for g, t in tests.items()}, "rows": rows,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "run_sha256": {f"{r['name']}-{r['granularity']}":
                             run_digest(load_run(run_stem(out, r["options"]["model"], r["granularity"]).with_suffix(".json")))
                             for r in rows if r["name"].startswith("ugr-")}}
    write_results(out, report)
    write_records(report, "ugr")
    table = design_table(report)
    (out / "designs.md").write_text(table, encoding="utf-8")
    print(table)
    return report


if __name__ == "__main__":
    main()
