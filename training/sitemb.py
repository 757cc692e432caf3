"""Train a SitEmb situated encoder (arXiv:2508.01959) and a chunk-only control; compare them on a chunk task.

Both models start from the same base (MiniLM), see the same (query, relevant chunk) pairs in the same order
for the same steps, batch, learning rate and temperature; the loss is InfoNCE over in-batch chunks (another
pair's chunk that is also relevant to this query is masked out of the denominator):

    situated (residual learning, only Θs trained, Θb frozen):
        score = <q_s, s(c | context)> + factor * <q_b, b(c)>
    chunk-only control (one model, the chunk alone):
        score = <q, e(c)>
    loss = cross_entropy(score / temperature, diagonal)

Tasks (eval/situated.py): "scifact" (claims -> evidence sentences; train on train claims, test on dev
claims) and "qmsum" (queries -> turns inside their spans; train / dev / test as QMSum splits them). Rows on
the test pool: chunk-only MiniLM, chunk-only fine-tuned, whole-document MiniLM (each chunk scored by its
document's vector), situated untrained (MiniLM as Θs and Θb), situated trained; plus the residual factor
changed at query time (0, 0.5, 1) for both situated rows. The trained situated model is saved, indexed by
`SituatedRetriever`, the index saved, and reloaded and searched in a new process (`--verify`).

    python -m training.sitemb --config training/configs/sitemb-scifact.yaml
    dengen train sitemb --config training/configs/sitemb-qmsum.yaml
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.contrastive import in_batch_infonce, optimise
from training.recipe import read_recipe, write_results

DEFAULTS = {
    "task": "scifact",  # "scifact" (claims -> evidence sentences) or "qmsum" (queries -> turns)
    "data": "../shared/data/scifact-claims",
    "train_split": "train",
    "test_split": "dev",  # scifact: dev claims (BEIR's test); qmsum: "test"
    "pool_docs": 400,  # test documents: all judged ones + seeded distractors (scifact) / seeded meetings (qmsum); null = all
    "pool_seed": 0,
    "model": "minilm",  # start of Θs and of the chunk-only control
    "baseline": "minilm",  # Θb, frozen
    "residual_factor": 0.5,  # the model cards' residual_factor
    "context_tokens": 128,  # context window budget (chunk included), Θs's tokens
    "max_length": 256,  # tokens of one situated input
    "query_max_length": 64,
    "chunk_max_length": 256,  # tokens of a chunk alone (MiniLM's own limit)
    "steps": 100,
    "batch_size": 16,
    "lr": 2.0e-5,
    "temperature": 0.05,  # MiniLM's own training scale 20
    "positives_per_query": None,  # at most this many relevant chunks per training query (seeded); null = all
    "min_chunk_words": 0,  # skip training chunks with fewer words (QMSum has many "Yeah." turns)
    "seed": 0,
    "threads": 1,
    "encode_batch_size": 32,
    "train_control": True,  # also fine-tune the chunk-only control (off for ablations that reuse a run's control)
    "factors": [0.0, 0.5, 1.0],  # residual factors tried at query time on the situated rows
    "depth": 100,
    "verify_reload": True,
    "cache": "results/cache",
    "out": "results/sitemb/scifact",
}
TASKS = ("scifact", "qmsum")


def load_config(path: str | Path) -> dict:
    """DEFAULTS updated by the yaml file; unknown keys or bad values name the file and the key."""
    config = read_recipe(path, DEFAULTS)
    if config["task"] not in TASKS:
        raise SystemExit(f"{path}: key 'task' must be one of {list(TASKS)}, got {config['task']!r}")
    for key in ("context_tokens", "max_length", "query_max_length", "chunk_max_length", "steps", "batch_size", "threads",
                "encode_batch_size", "depth"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise SystemExit(f"{path}: key {key!r} must be a positive integer, got {config[key]!r}")
    for key in ("lr", "temperature"):
        if not isinstance(config[key], (int, float)) or config[key] <= 0:
            raise SystemExit(f"{path}: key {key!r} must be a positive number, got {config[key]!r}")
    if not isinstance(config["residual_factor"], (int, float)) or config["residual_factor"] < 0:
        raise SystemExit(f"{path}: key 'residual_factor' must be a number >= 0, got {config['residual_factor']!r}")
    for key in ("pool_docs", "positives_per_query"):
        if config[key] is not None and (not isinstance(config[key], int) or config[key] < 1):
            raise SystemExit(f"{path}: key {key!r} must be a positive integer or null, got {config[key]!r}")
    if not isinstance(config["train_control"], bool):
        raise SystemExit(f"{path}: key 'train_control' must be true or false, got {config['train_control']!r}")
    if not isinstance(config["factors"], list) or any(not isinstance(f, (int, float)) or f < 0 for f in config["factors"]):
        raise SystemExit(f"{path}: key 'factors' must be a list of numbers >= 0, got {config['factors']!r}")
    if config["batch_size"] < 2:
        raise SystemExit(f"{path}: key 'batch_size' must be at least 2 (in-batch negatives), got {config['batch_size']}")
    return config


# ---------------------------------------------------------------------------------------- data


def situated_texts(task, tokenizer, context_tokens: int, progress: bool = True):
    """(chunks, chunk texts, context texts) of a task's corpus: one chunk per line, as the qrels number them."""
    from retrieval.dense.sitemb import situate_corpus

    chunks = situate_corpus(task.corpus, tokenizer, "lines", 1, 1, context_tokens, progress=progress)
    texts = {d.id: d.text for d in task.corpus}
    return (chunks, [texts[c.doc_id][c.start : c.end] for c in chunks],
            [texts[c.doc_id][c.context_start : c.context_end] for c in chunks])


def training_pairs(task, tokenizer, config: dict) -> tuple[list[dict], dict[str, set[str]]]:
    """(query, relevant chunk in its context) pairs from the training split; positives per query for masking."""
    from retrieval.data import Corpus

    needed = {d for docs in task.doc_qrels.values() for d in docs}
    task = task._replace(corpus=Corpus((d for d in task.corpus if d.id in needed), source=task.corpus.source))
    chunks, texts, contexts = situated_texts(task, tokenizer, config["context_tokens"])
    where = {c.id: i for i, c in enumerate(chunks)}
    rng = random.Random(config["seed"])
    pairs = []
    for qid in sorted(task.queries):
        relevant = sorted(c for c in task.qrels[qid] if c in where and len(texts[where[c]].split()) >= config["min_chunk_words"])
        if config["positives_per_query"] and len(relevant) > config["positives_per_query"]:
            relevant = sorted(rng.sample(relevant, config["positives_per_query"]))
        for c in relevant:
            i = where[c]
            pairs.append({"qid": qid, "query": task.queries[qid], "chunk_id": c, "chunk": texts[i], "context": contexts[i]})
    positives = {q: set(r) for q, r in task.qrels.items()}
    return pairs, positives


# ---------------------------------------------------------------------------------------- training


def _tokens(st, texts: list[str], max_length: int) -> dict:
    return dict(st.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))


def fine_tune(mode: str, config: dict, pairs: list[dict], positives: dict[str, set[str]], progress: bool = True):
    """Fine-tune a fresh copy of config['model']: mode "situated" (Θs, with frozen Θb's residual score) or
    "chunk" (the chunk-only control). Returns (sentence-transformers model, info)."""
    import torch
    from tqdm import tqdm

    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.sitemb import pooled, situated_features

    if len(pairs) < config["batch_size"]:
        raise SystemExit(f"{len(pairs)} training pairs make no batch of {config['batch_size']}")
    torch.manual_seed(config["seed"])
    st = SentenceEncoder(config["model"], device="cpu").model
    factor = config["residual_factor"]
    residual = None
    if mode == "situated" and factor > 0:  # Θb is frozen: its query and chunk vectors are computed once
        baseline = SentenceEncoder(config["baseline"], device="cpu", batch_size=config["encode_batch_size"],
                                   max_length=config["chunk_max_length"])
        residual = (torch.from_numpy(baseline.encode_queries([p["query"] for p in pairs])),
                    torch.from_numpy(baseline.encode_documents([p["chunk"] for p in pairs], progress=progress)))
        del baseline
    optimizer = torch.optim.AdamW(st.parameters(), lr=config["lr"], weight_decay=0.0)
    total = config["steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    generator = torch.Generator().manual_seed(config["seed"])  # the same order for both modes
    batch = config["batch_size"]
    st.train()
    losses, step, order = [], 0, []
    started = time.perf_counter()
    bar = tqdm(total=total, desc=f"sitemb {mode}", disable=not progress, file=sys.stderr)
    while step < total:
        if len(order) < batch:
            order = torch.randperm(len(pairs), generator=generator).tolist()
        rows, order = order[:batch], order[batch:]
        group = [pairs[i] for i in rows]
        q = pooled(st, _tokens(st, [p["query"] for p in group], config["query_max_length"]))
        if mode == "situated":
            c = pooled(st, situated_features(st, [p["chunk"] for p in group], [p["context"] for p in group], config["max_length"]))
        else:
            c = pooled(st, _tokens(st, [p["chunk"] for p in group], config["chunk_max_length"]))
        scores = q @ c.T
        if residual is not None:
            index = torch.tensor(rows)
            scores = scores + factor * (residual[0][index] @ residual[1][index].T)
        loss = in_batch_infonce(scores, config["temperature"], [p["qid"] for p in group], [p["chunk_id"] for p in group],
                                positives)
        optimise(loss, optimizer, schedule, losses, bar)
        step += 1
    bar.close()
    st.eval()
    info = {"paper": "Wu et al. 2025, SitEmb-v1.5, arXiv:2508.01959", "mode": mode, "steps": step, "pairs": len(pairs),
            "batch_size": batch, "lr": config["lr"], "temperature": config["temperature"], "seed": config["seed"],
            "start_model": config["model"], "residual_factor": factor if mode == "situated" else None,
            "loss_first10": round(float(np.mean(losses[:10])), 4), "loss_last10": round(float(np.mean(losses[-10:])), 4),
            "train_seconds": round(time.perf_counter() - started, 1)}
    return st, info


# ---------------------------------------------------------------------------------------- evaluation


def top_run(scores: np.ndarray, qids: list[str], chunk_ids: list[str], k: int) -> dict[str, dict[str, float]]:
    """The top-k chunks of each query row of a (queries x chunks) score matrix."""
    k = min(k, scores.shape[1])
    run = {}
    for row, qid in zip(scores, qids):
        top = np.argpartition(-row, k - 1)[:k]
        top = top[np.argsort(-row[top], kind="stable")]
        run[qid] = {chunk_ids[i]: float(row[i]) for i in top}
    return run


def whole_document_run(doc_scores: np.ndarray, qids: list[str], doc_ids: list[str], chunks_of: dict[str, list[str]],
                       k: int) -> dict[str, dict[str, float]]:
    """Every chunk scored by its document's score: the best documents' chunks until k chunks (ties within a document)."""
    run = {}
    for row, qid in zip(doc_scores, qids):
        out: dict[str, float] = {}
        for d in np.argsort(-row, kind="stable"):
            for c in chunks_of[doc_ids[d]]:
                out[c] = float(row[d])
            if len(out) >= k:
                break
        run[qid] = out
    return run


def score(task, run: dict[str, dict[str, float]]) -> dict:
    """Chunk-level nDCG / recall (pytrec_eval) and document hits: the gold document owns the top chunk (@1) / a top-10 chunk."""
    from eval.metrics import evaluate_run
    from retrieval.longdoc import parent_id

    metrics = evaluate_run(task.qrels, run, ks=(10, 100))
    out = {m: round(metrics[m], 4) for m in ("ndcg@10", "recall@10", "recall@100", "mrr@10")}
    for depth in (1, 10):
        hits = []
        for qid, gold in task.doc_qrels.items():
            ranked = sorted(run.get(qid, {}).items(), key=lambda x: -x[1])[:depth]
            hits.append(any(parent_id(c) in gold for c, _ in ranked))
        out[f"doc_hit@{depth}"] = round(float(np.mean(hits)), 4)
    return out


def cached(cache: Path, name: str, texts: list[str], encode) -> tuple[np.ndarray, float]:
    """Vectors of `texts` by `encode`, cached under `cache` by name + a hash of the texts; (vectors, seconds spent)."""
    from retrieval.dense.cache import save_npy

    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]
    path = cache / f"sitemb-{name}-{len(texts)}-{digest}.npy"
    if path.is_file():
        return np.load(path), 0.0
    started = time.perf_counter()
    vectors = encode(texts)
    save_npy(path, vectors)
    return vectors, round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="dengen train sitemb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="yaml: task, data, pool_docs, steps, residual_factor, out, ...")
    parser.add_argument("--verify", action="store_true", help="no training: load out/index-situated in this (new) "
                        "process, search the test queries and compare with out/run-situated.json")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.verify:
        return verify_reload(config)

    import torch

    from eval.situated import load_chunk_task
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.sitemb import SituatedEncoder, SituatedRetriever

    torch.set_num_threads(config["threads"])
    out, cache = Path(config["out"]), Path(config["cache"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train = load_chunk_task(config["task"], config["data"], config["train_split"])
    test = load_chunk_task(config["task"], config["data"], config["test_split"], config["pool_docs"], config["pool_seed"])
    if set(train.queries) & set(test.queries):
        raise SystemExit("train and test share queries")
    base = SentenceEncoder(config["model"], device="cpu", batch_size=config["encode_batch_size"],
                           max_length=config["chunk_max_length"])
    pairs, positives = training_pairs(train, base.model.tokenizer, config)
    chunks, texts, contexts = situated_texts(test, base.model.tokenizer, config["context_tokens"])
    chunk_ids = [c.id for c in chunks]
    qids = sorted(test.queries)
    query_texts = [test.queries[q] for q in qids]
    pool = f"{config['task']}-{config['test_split']}-pool{config['pool_docs']}s{config['pool_seed']}"
    report = {"command": f"python -m training.sitemb --config {args.config}", "config": config,
              "train": {**train.describe(), "pairs": len(pairs)}, "test": test.describe(), "rows": [], "ablation": [],
              "seconds": {}}

    def add(name: str, run: dict, **extra) -> None:
        report["rows"].append({"name": name, **score(test, run), **extra})
        write_results(out, report)
        print(json.dumps(report["rows"][-1]), file=sys.stderr)

    # chunk-only and whole-document MiniLM (cached vectors)
    tag = base.fingerprint[:12]
    q0 = base.encode_queries(query_texts)
    b0, seconds = cached(cache, f"{pool}-chunks-{tag}", texts, lambda t: base.encode_documents(t, progress=True))
    add(f"chunk-only {config['model']}", top_run(q0 @ b0.T, qids, chunk_ids, config["depth"]), encode_seconds=seconds)
    doc_ids = test.corpus.ids
    docs, seconds = cached(cache, f"{pool}-docs-{tag}", [d.full_text for d in test.corpus],
                           lambda t: SentenceEncoder(config["model"], device="cpu", batch_size=config["encode_batch_size"])
                           .encode_documents(t, progress=True))
    chunks_of: dict[str, list[str]] = {}
    for c in chunks:
        chunks_of.setdefault(c.doc_id, []).append(c.id)
    add(f"whole-document {config['model']}", whole_document_run(q0 @ docs.T, qids, doc_ids, chunks_of, config["depth"]),
        encode_seconds=seconds)

    # situated, untrained: MiniLM as both Θs and Θb
    untrained = SituatedEncoder(base, base, config["residual_factor"], config["max_length"])
    s0, seconds = cached(cache, f"{pool}-situated{config['context_tokens']}-{tag}", texts,
                         lambda t: untrained.encode_situated_only(t, contexts, progress=True))
    for f in config["factors"]:
        report["ablation"].append({"name": f"situated untrained, factor {f}", "residual_factor": f,
                                   **score(test, top_run(q0 @ s0.T + f * (q0 @ b0.T), qids, chunk_ids, config["depth"]))})
    add(f"situated untrained {config['model']} (factor {config['residual_factor']})",
        top_run(q0 @ s0.T + config["residual_factor"] * (q0 @ b0.T), qids, chunk_ids, config["depth"]), encode_seconds=seconds)
    report["seconds"]["setup_and_baselines"] = round(time.perf_counter() - started, 1)

    if config["train_control"]:  # chunk-only control, fine-tuned
        st, info = fine_tune("chunk", config, pairs, positives)
        st.save(str(out / "chunk-only"))
        control = SentenceEncoder(str(out / "chunk-only"), device="cpu", batch_size=config["encode_batch_size"],
                                  max_length=config["chunk_max_length"])
        t0 = time.perf_counter()
        b1 = control.encode_documents(texts, progress=True)
        seconds = round(time.perf_counter() - t0, 1)
        add("chunk-only fine-tuned", top_run(control.encode_queries(query_texts) @ b1.T, qids, chunk_ids, config["depth"]),
            train=info, encode_seconds=seconds)
        del st, control

    # situated, trained (Θs fine-tuned, Θb frozen), saved, indexed by the retriever, index saved
    st, info = fine_tune("situated", config, pairs, positives)
    theta_s = SentenceEncoder(config["model"], device="cpu", batch_size=config["encode_batch_size"])
    theta_s.model = st
    baseline = base if config["baseline"] == config["model"] else SentenceEncoder(
        config["baseline"], device="cpu", batch_size=config["encode_batch_size"], max_length=config["chunk_max_length"])
    SituatedEncoder(theta_s, baseline, config["residual_factor"], config["max_length"], tuned=True, info=info).save(out / "situated")
    del st, theta_s
    retriever = SituatedRetriever(model=str(out / "situated"), unit="lines", window=1, context_tokens=config["context_tokens"],
                                  batch_size=config["encode_batch_size"])
    t0 = time.perf_counter()
    retriever.index(test.corpus)
    seconds = round(time.perf_counter() - t0, 1)
    if [c.id for c in retriever.chunks] != chunk_ids:
        raise SystemExit("the retriever's chunks differ from the evaluation's")
    run = retriever.search(test.queries, config["depth"])
    (out / "run-situated.json").write_text(json.dumps(run), encoding="utf-8")
    retriever.save(out / "index-situated", overwrite=True)  # the recipe's own output
    add(f"situated trained (factor {config['residual_factor']})", run, train=info, encode_seconds=seconds)

    # the residual factor at query time, on the trained model's stored vectors [s ; b]
    encoder = retriever.encoder
    vectors = retriever._faiss.reconstruct_n(0, retriever._faiss.ntotal)
    s1, b = vectors[:, : encoder.base.dim], vectors[:, encoder.base.dim :]
    q_s, q_b = encoder.base.encode_queries(query_texts), encoder.baseline.encode_queries(query_texts)
    for f in config["factors"]:
        report["ablation"].append({"name": f"situated trained, factor {f}", "residual_factor": f,
                                   **score(test, top_run(q_s @ s1.T + f * (q_b @ b.T), qids, chunk_ids, config["depth"]))})
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    write_results(out, report)

    if config["verify_reload"]:
        done = subprocess.run([sys.executable, "-m", "training.sitemb", "--config", args.config, "--verify"],
                              capture_output=True, text=True, check=False)
        report["verify_reload"] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
            "ok": False, "error": done.stderr[-2000:]}
        write_results(out, report)
    print_table(report)
    return report


def verify_reload(config: dict) -> dict:
    """Load the saved index (and through it the saved module) in this process, search, compare with the saved run."""
    import torch

    from eval.situated import load_chunk_task
    from retrieval import load_retriever

    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    test = load_chunk_task(config["task"], config["data"], config["test_split"], config["pool_docs"], config["pool_seed"])
    saved = json.loads((out / "run-situated.json").read_text(encoding="utf-8"))
    run = load_retriever(out / "index-situated", trust_paths=True).search(test.queries, config["depth"])  # our model folder
    worst, same_ids = 0.0, True
    for qid, ranked in saved.items():
        same_ids &= list(run[qid]) == list(ranked)
        worst = max([worst] + [abs(run[qid].get(c, -1e9) - s) for c, s in ranked.items()])
    result = {"ok": bool(same_ids and worst < 1e-5), "same_ids": same_ids, "max_abs_score_diff": worst,
              "queries": len(saved), **score(test, run)}
    print(json.dumps(result))
    return result


def print_table(report: dict) -> None:
    print(f"\n{'row':58s} nDCG@10  R@10   R@100  docHit@1")
    for row in report["rows"] + report["ablation"]:
        print(f"{row['name']:58s} {row['ndcg@10']:.4f}  {row['recall@10']:.4f} {row['recall@100']:.4f} {row['doc_hit@1']:.4f}")


if __name__ == "__main__":
    main()
