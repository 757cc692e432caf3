"""Fine-tune an encoder with a LexSemBridge query gate (arXiv:2508.17858), and the same encoder without it.

For each variant in `methods` ("plain" = the baseline, then "slr", "llr", "clr"), from the same start model,
seed, data order, steps and encoder learning rate:

    q' = normalize(softmax(W s) * p)   (plain: q' = p)      d = p(document)        (documents unmodulated)
    loss = InfoNCE over in-batch documents: cross_entropy(q' . d^T / temperature, diagonal)

Training data: SciFact TRAIN queries and their qrels (a query's other positives in the batch are masked
out of its denominator). Evaluation: SciFact TEST (nDCG@10, recall@100) and the paper's fine-grained tasks
built from SciFact documents (keyword queries, part-of-passage queries; `fine_grained_tasks`), all against
one corpus encoding per model. Each trained model is saved, reloaded through `encoders.load_encoder`, and
the reloaded encoder is the one evaluated.

    python -m training.lexsembridge --config training/configs/lexsembridge-scifact.yaml
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from indexes.manifest import atomic_write
from training.contrastive import in_batch_infonce, optimise
from training.recipe import read_recipe, saved_row

DEFAULTS = {
    "data": "../shared/data/scifact",
    "model": "minilm",
    "methods": ["plain", "slr", "llr", "clr"],  # "plain": the baseline, same fine-tuning without the bridge
    "epochs": 1,
    "max_steps": None,  # stop early (tests); None = full epochs
    "batch_size": 16,
    "lr": 2e-5,  # encoder (and, unless bridge_lr is set, bridge) learning rate
    "bridge_lr": None,  # the bridge's own learning rate; None = lr (the reference uses one lr)
    "temperature": 0.02,  # the reference README
    "query_max_length": 64,  # the reference README
    "doc_max_length": 256,  # the reference README (passage_max_len); also the saved model's max_seq_length
    "scale": 1.0,  # SLR's initial scale (reference default)
    "documents": False,  # the reference's vocab_weight_fusion_p False
    "seed": 0,
    "threads": 1,
    "depth": 100,
    "encode_batch_size": 32,
    "base_row": True,  # also evaluate the un-tuned start model
    "tasks": {"docs": 300, "keywords": 5, "pop_words": [16, 64], "seed": 0},
    "cache": "results/cache",
    "out": "results/lexsembridge",
}
VARIANTS = ("plain", "slr", "llr", "clr")
TASK_KEYS = {"docs", "keywords", "pop_words", "seed"}


# ---------------------------------------------------------------------------------------- config


def load_config(path: str | Path) -> dict:
    """DEFAULTS updated by the yaml file; unknown keys or bad values name the file and the key."""
    config = read_recipe(path, DEFAULTS)
    config["tasks"] = {**DEFAULTS["tasks"], **(config["tasks"] or {})}
    bad_tasks = sorted(set(config["tasks"]) - TASK_KEYS)
    if bad_tasks:
        raise SystemExit(f"{path}: unknown key(s) under 'tasks': {bad_tasks}; known: {sorted(TASK_KEYS)}")
    methods = config["methods"]
    if not isinstance(methods, list) or not methods or any(m not in VARIANTS for m in methods):
        raise SystemExit(f"{path}: key 'methods' must be a non-empty list from {list(VARIANTS)}, got {methods!r}")
    for key in ("epochs", "batch_size", "query_max_length", "doc_max_length", "threads", "depth", "encode_batch_size"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise SystemExit(f"{path}: key {key!r} must be a positive integer, got {config[key]!r}")
    for key in ("lr", "temperature"):
        if not isinstance(config[key], (int, float)) or config[key] <= 0:
            raise SystemExit(f"{path}: key {key!r} must be a positive number, got {config[key]!r}")
    if config["bridge_lr"] is not None and (not isinstance(config["bridge_lr"], (int, float)) or config["bridge_lr"] <= 0):
        raise SystemExit(f"{path}: key 'bridge_lr' must be a positive number or null, got {config['bridge_lr']!r}")
    if config["max_steps"] is not None and (not isinstance(config["max_steps"], int) or config["max_steps"] < 1):
        raise SystemExit(f"{path}: key 'max_steps' must be a positive integer or null, got {config['max_steps']!r}")
    return config


# ---------------------------------------------------------------------------------------- fine-grained tasks

_WORD = re.compile(r"[a-z][a-z0-9\-]{2,}")
_STOP = set("""the and for are was were with that this from have has had not but its their there these those which
while who whom what when where than then them they been being also into onto over under such may might can could
would should will our out all any each both more most other some only very between among within without after
before during about above below via per using used use based however whether""".split())


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def fine_grained_tasks(corpus, exclude: set[str], docs: int = 300, keywords: int = 5, pop_words=(16, 64), seed: int = 0) -> dict:
    """{task: (queries {qid: text}, qrels {qid: {doc_id: 1}})} built from documents of `corpus`.

    A fixed seeded sample of `docs` documents, none in `exclude` (the train queries' positives), each with
    at least 2 x max(pop_words) words of body text. The relevant document of every query is its source.
      keyword:  the document's `keywords` highest tf-idf terms (tf in the document, idf over the corpus,
                lower-cased words of >= 3 characters, stop words removed), best first, joined by spaces.
      pop<N>:   a contiguous fragment of N whitespace words of the body text from a seeded random start
                (the reference's part-of-passage "pop16 ... pop256" tasks).
    """
    texts = {doc.id: doc.full_text for doc in corpus}
    bodies = {doc.id: doc.text for doc in corpus}
    df = Counter()
    for text in texts.values():
        df.update(set(_terms(text)))
    n = len(texts)
    longest = max(pop_words) if pop_words else 0
    candidates = sorted(d for d in texts if d not in exclude and len(bodies[d].split()) >= 2 * longest)
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=min(docs, len(candidates)), replace=False))]
    tasks = {}
    queries = {}
    for d in chosen:
        tf = Counter(_terms(texts[d]))
        ranked = sorted(tf, key=lambda t: (-tf[t] * math.log(n / df[t]), t))
        queries[f"kw-{d}"] = " ".join(ranked[:keywords])
    tasks["keyword"] = (queries, {q: {q[3:]: 1} for q in queries})
    for words in pop_words:
        queries = {}
        for d in chosen:
            body = bodies[d].split()
            start = int(rng.integers(0, len(body) - words + 1))
            queries[f"pop{words}-{d}"] = " ".join(body[start : start + words])
        tasks[f"pop{words}"] = (queries, {q: {q.split("-", 1)[1]: 1} for q in queries})
    return tasks


# ---------------------------------------------------------------------------------------- training


def training_pairs(dataset) -> tuple[list[tuple[str, str]], dict[str, set[str]]]:
    """(query id, doc id) for every positive train judgement, and each query's set of positives."""
    positives = {q: {d for d, g in dataset.qrels.get(q, {}).items() if g > 0 and d in dataset.corpus} for q in dataset.queries}
    pairs = [(q, d) for q in dataset.queries for d in sorted(positives[q])]
    return pairs, positives


def fine_tune(variant: str, config: dict, dataset, progress: bool = True):
    """Fine-tune a fresh copy of `config['model']` (+ a bridge unless variant == 'plain') with InfoNCE.

    Returns (sentence-transformers model, bridge or None, info dict).
    """
    import torch
    from tqdm import tqdm

    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.lexsembridge import (
        bridged_queries,
        make_bridge,
        to_device,
        tokenize,
    )

    torch.manual_seed(config["seed"])
    st = SentenceEncoder(config["model"], device="cpu").model
    bridge = None if variant == "plain" else make_bridge(st, variant, scale=config["scale"], seed=config["seed"])
    groups = [{"params": list(st.parameters()), "lr": config["lr"]}]
    if bridge is not None:
        groups.append({"params": list(bridge.parameters()), "lr": config["bridge_lr"] or config["lr"]})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)  # HF Trainer's default optimiser, as the reference

    pairs, positives = training_pairs(dataset)
    if not pairs:
        raise SystemExit("no (query, document) training pairs")
    generator = torch.Generator().manual_seed(config["seed"])
    batch = config["batch_size"]
    steps_per_epoch = len(pairs) // batch  # drop_last, as the reference (dataloader_drop_last True)
    total = steps_per_epoch * config["epochs"]
    if config["max_steps"]:
        total = min(total, config["max_steps"])
    if total < 1:
        raise SystemExit(f"{len(pairs)} training pairs make no batch of {batch}")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))  # HF linear decay

    st.train()
    if bridge is not None:
        bridge.train()
    losses, step = [], 0
    started = time.perf_counter()
    bar = tqdm(total=total, desc=f"lexsembridge {variant}", disable=not progress, file=sys.stderr)
    while step < total:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, steps_per_epoch * batch, batch):
            if step >= total:
                break
            chunk = [pairs[i] for i in order[start : start + batch]]
            st.max_seq_length = config["query_max_length"]
            q_features = to_device(tokenize(st, [dataset.queries[q] for q, _ in chunk]), "cpu")
            st.max_seq_length = config["doc_max_length"]
            d_features = to_device(tokenize(st, [dataset.corpus[d].full_text for _, d in chunk]), "cpu")
            q = bridged_queries(st, bridge, q_features) if bridge is not None else st(q_features)["sentence_embedding"]
            d = st(d_features)["sentence_embedding"]
            loss = in_batch_infonce(q @ d.T, config["temperature"], [x for x, _ in chunk], [y for _, y in chunk], positives)
            optimise(loss, optimizer, schedule, losses, bar)
            step += 1
    bar.close()
    st.max_seq_length = config["doc_max_length"]
    st.eval()
    info = {
        "paper": "Zhan et al. 2025, LexSemBridge, arXiv:2508.17858", "variant": variant, "steps": step,
        "pairs": len(pairs), "batch_size": batch, "lr": config["lr"], "bridge_lr": config["bridge_lr"] or config["lr"],
        "temperature": config["temperature"], "seed": config["seed"], "start_model": config["model"],
        "loss_first10": round(float(np.mean(losses[:10])), 4), "loss_last10": round(float(np.mean(losses[-10:])), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return st, (bridge.eval() if bridge is not None else None), info


def save_variant(st, bridge, info: dict, folder: Path, documents: bool = False) -> None:
    """plain: a sentence-transformers folder; a bridge: a LexSemBridge module folder (model/ + bridge)."""
    import secrets
    import shutil
    import tempfile

    from indexes.manifest import IndexSaveError
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.lexsembridge import LexSemBridgeEncoder

    if bridge is None:
        if folder.exists() and not (folder / "lexsembridge-info.json").is_file():  # not a plain variant of ours
            raise IndexSaveError(f"{folder}: exists and is not a model this recipe wrote; it is never replaced")
        token = secrets.token_hex(4)
        tmp, old = folder.with_name(f".{folder.name}.partial-{token}"), folder.with_name(f".{folder.name}.old-{token}")
        tmp.mkdir(parents=True)  # mode from the umask
        try:
            st.save(str(tmp))
            (tmp / "lexsembridge-info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.st-", dir=folder.parent))
    try:  # wrap the trained weights as a SentenceEncoder, then save the whole module atomically
        st.save(str(tmp))
        base = SentenceEncoder(str(tmp), device="cpu")
        base.model = st
        LexSemBridgeEncoder(base, bridge, documents=documents, info=info).save(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------- evaluation


def evaluate_model(encoder, test, tasks: dict, config: dict) -> dict:
    """SciFact test + fine-grained tasks against one corpus encoding (cached under config['cache'])."""
    from eval.metrics import evaluate_run
    from retrieval.dense.cache import cached_embeddings
    from training.adapter import search_flat

    ks = (1, 10, config["depth"])
    started = time.perf_counter()
    docs, test_vectors, test_ids = cached_embeddings(encoder, test, config["cache"])
    encode_seconds = time.perf_counter() - started
    doc_ids = test.corpus.ids
    out = {"scifact-test": evaluate_run(test.qrels, search_flat(test_vectors, docs, test_ids, doc_ids, config["depth"]), ks=ks)}
    for name, (queries, qrels) in tasks.items():
        ids = list(queries)
        vectors = encoder.encode_queries([queries[q] for q in ids], progress=False)
        out[name] = evaluate_run(qrels, search_flat(vectors, docs, ids, doc_ids, config["depth"]), ks=ks)
    out["corpus_encode_seconds"] = round(encode_seconds, 1)
    return out


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="dengen train lexsembridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="yaml: data, model, methods, epochs, lr, bridge_lr, temperature, out, ...")
    parser.add_argument("--verify", metavar="VARIANT", help="no training: reload out/VARIANT in this (new) process, "
                        "re-encode every query and compare the scores with results.json")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.verify:
        return verify_reload(config, args.verify)

    import torch

    from retrieval import load_dataset
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import load_encoder

    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(config["data"], "train")
    test = load_dataset(config["data"], "test")
    overlap = set(train.queries) & set(test.queries)
    if overlap:
        raise SystemExit(f"{len(overlap)} queries are in both train and test")
    train_docs = {d for q in train.qrels for d, g in train.qrels[q].items() if g > 0}
    tasks = fine_grained_tasks(test.corpus, exclude=train_docs, **config["tasks"])
    _write_json(out / "tasks.json", {name: {"queries": q, "qrels": r} for name, (q, r) in tasks.items()})

    report = {"command": f"python -m training.lexsembridge --config {args.config}", "config": config,
              "train": {"queries": len(train.queries), "pairs": len(training_pairs(train)[0])},
              "test_queries": len(test.queries), "tasks": {k: len(v[0]) for k, v in tasks.items()}, "rows": []}
    options = {"batch_size": config["encode_batch_size"], "device": "cpu"}
    for variant in config["methods"]:
        st, bridge, info = fine_tune(variant, config, train)
        folder = out / variant
        save_variant(st, bridge, info, folder, documents=config["documents"])
        del st, bridge
        encoder = load_encoder(folder, **options)  # evaluate what was saved, reloaded
        row = {"name": "plain fine-tuned" if variant == "plain" else f"LexSemBridge-{variant.upper()}",
               "folder": str(folder), "train": info, "results": evaluate_model(encoder, test, tasks, config)}
        report["rows"].append(row)
        _write_json(out / "results.json", report)
        print(json.dumps({row["name"]: {k: v.get("ndcg@10") if isinstance(v, dict) else v for k, v in row["results"].items()}}),
              file=sys.stderr)

    if config["base_row"]:  # last: the fine-tuned rows matter more if a run is cut short
        base = SentenceEncoder(config["model"], max_length=config["doc_max_length"], **options)
        report["rows"].insert(0, {"name": f"base {config['model']}", "results": evaluate_model(base, test, tasks, config)})
        _write_json(out / "results.json", report)
    print_table(report)
    return report


def verify_reload(config: dict, variant: str) -> dict:
    """Reload a saved variant in this process; every query re-encoded, documents from the cache (which
    `cached_embeddings` spot-checks by re-encoding the first documents with the reloaded encoder)."""
    import torch

    from eval.metrics import evaluate_run, per_query
    from retrieval import load_dataset
    from retrieval.dense.cache import cached_embeddings
    from retrieval.dense.encoders import load_encoder
    from training.adapter import search_flat

    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    row = saved_row(out, out / variant)
    tasks = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    test = load_dataset(config["data"], "test")
    tasks["scifact-test"] = {"queries": test.queries, "qrels": test.qrels}
    started = time.perf_counter()
    encoder = load_encoder(out / variant, batch_size=config["encode_batch_size"], device="cpu")
    docs, _, _ = cached_embeddings(encoder, test, config["cache"])
    ks = (1, 10, config["depth"])
    checks = {}
    for name, task in tasks.items():
        ids = list(task["queries"])
        vectors = encoder.encode_queries([task["queries"][q] for q in ids])
        run = search_flat(vectors, docs, ids, test.corpus.ids, config["depth"])
        now = evaluate_run(task["qrels"], run, ks=ks)
        before = row["results"][name]
        checks[name] = {"ndcg@10": now["ndcg@10"], "saved_run_ndcg@10": before["ndcg@10"],
                        "max_abs_diff": max(abs(now[k] - before[k]) for k in before),
                        "per_query_ndcg@10": per_query(task["qrels"], run, ks=ks)["ndcg@10"]}  # for paired tests
    result = {"variant": variant, "checks": checks, "seconds": round(time.perf_counter() - started, 1),
              "same": all(c["max_abs_diff"] < 1e-6 for c in checks.values())}
    print(json.dumps({k: v for k, v in result.items() if k != "checks"} | {"checks": {
        n: {k: v for k, v in c.items() if k != "per_query_ndcg@10"} for n, c in checks.items()}}, indent=2))
    _write_json(out / f"verify-{variant}.json", result)
    if not result["same"]:
        raise SystemExit(f"{out / variant}: reloaded scores differ from results.json")
    return result


def print_table(report: dict) -> None:
    names = [k for k in report["rows"][0]["results"] if k != "corpus_encode_seconds"]
    print(f"{'':22}" + "".join(f"{n + ' nDCG@10':>20}" for n in names) + f"{'test R@100':>12}")
    for row in report["rows"]:
        r = row["results"]
        print(f"{row['name']:22}" + "".join(f"{r[n]['ndcg@10']:20.4f}" for n in names) + f"{r['scifact-test']['recall@100']:12.4f}")


if __name__ == "__main__":
    main()


def write_small_scifact(source: str | Path, target: str | Path, train_queries: int = 48, test_queries: int = 24,
                        extra_docs: int = 150, seed: int = 0) -> Path:
    """A small BEIR folder cut from SciFact for quick recipe runs (the slow test): the first train / test
    queries, the documents they cite, and `extra_docs` seeded random other documents."""
    import gzip

    from retrieval import load_dataset

    source, target = Path(source), Path(target)
    train, test = load_dataset(source, "train"), load_dataset(source, "test")
    keep_train = list(train.queries)[:train_queries]
    keep_test = list(test.queries)[:test_queries]
    docs = {d for q in keep_train for d in train.qrels[q]} | {d for q in keep_test for d in test.qrels[q]}
    others = sorted(set(test.corpus.ids) - docs)
    rng = np.random.default_rng(seed)
    docs |= {others[i] for i in rng.choice(len(others), size=min(extra_docs, len(others)), replace=False)}
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    with gzip.open(target / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for doc in test.corpus:
            if doc.id in docs:
                f.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    for split, ds, keep, name in (("train", train, keep_train, "queries-train.jsonl"), ("test", test, keep_test, "queries.jsonl")):
        with open(target / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"_id": q, "text": ds.queries[q]}) + "\n" for q in keep)
        with open(target / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{g}\n" for q in keep for d, g in sorted(ds.qrels[q].items()))
    return target
