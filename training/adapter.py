"""Train a low-rank residual adapter (Adapted Dense Retrieval, arXiv:2310.05380) on cached embeddings.

    e' = e + B (A e), re-normalised when the base vectors are unit length; B starts at zero.

Loss: InfoNCE / softmax cross-entropy of each (query, positive document) pair against the WHOLE corpus
(every cached document embedding is a negative, except the query's other judged positives, which are
masked out of the denominator). Only the adapter's A and B are trained; the embeddings are frozen and
cached, so training takes seconds on a CPU.

Command line (SciFact: train on the train split's qrels, evaluate on the test split):

    python -m training.adapter --config training/configs/adapter-scifact.yaml
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from retrieval.dense.adapter import AdaptedEncoder, ResidualAdapter
from retrieval.dense.cache import cached_embeddings
from training.recipe import read_recipe, write_results

DEFAULTS = {
    "data": "../shared/data/scifact",
    "model": "minilm",
    "ranks": [8, 32, 128],
    "epochs": 20,
    "lr": 1e-3,
    "temperature": 0.05,
    "batch_size": 64,
    "documents": False,
    "seed": 0,
    "threads": 1,
    "depth": 100,
    "cache": "results/cache",
    "out": "results/adapter-scifact",
}


# ---------------------------------------------------------------------------------------- training


def _unit_rows(vectors: np.ndarray, tol: float = 1e-3) -> bool:
    norms = np.linalg.norm(vectors, axis=1)
    return bool(len(norms)) and bool(np.all(np.abs(norms - 1.0) < tol))


def train_adapter(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    positives: list[tuple[int, int]],
    rank: int = 32,
    epochs: int = 20,
    lr: float = 1e-3,
    temperature: float = 0.05,
    batch_size: int = 64,
    documents: bool = False,
    seed: int = 0,
    normalize: bool | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> ResidualAdapter:
    """Fit A, B of e' = e + B·A·e by softmax cross-entropy over all documents.

    Args:
        query_vectors: (n_queries, d) frozen query embeddings.
        doc_vectors: (n_docs, d) frozen embeddings of the whole corpus: every row is a candidate.
        positives: (query row, doc row) pairs; one training example each. A query's other positives are
            masked out of its denominator, so they are never pushed down.
        rank: r, the adapter's rank.
        epochs, lr, batch_size: Adam over shuffled pairs.
        temperature: scores are cosine / temperature.
        documents: also adapt the document vectors (all of them, every step).
        seed: fixes A's initialisation and the batch order; the result is deterministic on CPU.
        normalize: re-normalise adapted vectors; default: whether the inputs are unit length.
        threads: torch CPU threads while training (restored after); None keeps torch's setting. The
            matrices are small, so 1 thread is often fastest on a shared machine.
    """
    import torch

    if not positives:
        raise ValueError("no (query, document) training pairs")
    query_vectors = np.asarray(query_vectors, dtype=np.float32)
    doc_vectors = np.asarray(doc_vectors, dtype=np.float32)
    dim = query_vectors.shape[1]
    if doc_vectors.shape[1] != dim:
        raise ValueError(f"query vectors have dimension {dim}, document vectors {doc_vectors.shape[1]}")
    if normalize is None:
        normalize = _unit_rows(query_vectors) and _unit_rows(doc_vectors)

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(torch, query_vectors, doc_vectors, positives, rank, epochs, lr, temperature, batch_size,
                      documents, seed, normalize, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(torch, query_vectors, doc_vectors, positives, rank, epochs, lr, temperature, batch_size, documents, seed,
           normalize, progress) -> ResidualAdapter:
    from tqdm import tqdm

    dim = query_vectors.shape[1]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    init = ResidualAdapter.identity(dim, rank, normalize=normalize, seed=seed, documents=documents)
    A = torch.nn.Parameter(torch.from_numpy(init.A.copy()))
    B = torch.nn.Parameter(torch.from_numpy(init.B.copy()))
    optimizer = torch.optim.Adam([A, B], lr=lr)

    Q = torch.from_numpy(query_vectors)
    D = torch.from_numpy(doc_vectors)
    pairs = torch.tensor(positives, dtype=torch.long)
    all_positives: dict[int, list[int]] = {}
    for q, d in positives:
        all_positives.setdefault(int(q), []).append(int(d))

    def adapt(x):
        out = x + (x @ A.T) @ B.T
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    steps_per_epoch = (len(pairs) + batch_size - 1) // batch_size
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"adapter r={rank}", disable=not progress, file=sys.stderr)
    for _epoch in range(epochs):
        order = torch.randperm(len(pairs), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(pairs), batch_size):
            batch = pairs[order[start : start + batch_size]]
            q_rows, d_rows = batch[:, 0], batch[:, 1]
            queries = adapt(Q[q_rows])
            docs = adapt(D) if documents else D
            scores = queries @ docs.T / temperature
            # mask the query's other judged positives: they are not negatives
            mask = torch.zeros_like(scores, dtype=torch.bool)
            for i, (q, d) in enumerate(zip(q_rows.tolist(), d_rows.tolist())):
                others = [p for p in all_positives[q] if p != d]
                if others:
                    mask[i, others] = True
            scores = scores.masked_fill(mask, float("-inf"))
            loss = torch.nn.functional.cross_entropy(scores, d_rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(batch)
            bar.update(1)
        losses.append(epoch_loss / len(pairs))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    seconds = time.perf_counter() - started

    info = {
        "paper": "Khatry et al. 2023, Augmented Embeddings for Custom Retrievals, arXiv:2310.05380",
        "epochs": epochs, "lr": lr, "temperature": temperature, "batch_size": batch_size, "seed": seed,
        "pairs": len(positives), "queries": len(all_positives), "negatives": "whole corpus",
        "corpus_size": int(len(doc_vectors)), "epoch_loss": [round(x, 6) for x in losses],
        "train_seconds": round(seconds, 3),
    }
    return ResidualAdapter(A.detach().numpy().copy(), B.detach().numpy().copy(), normalize=normalize, documents=documents, info=info)


# ---------------------------------------------------------------------------------------- embeddings


# ---------------------------------------------------------------------------------------- evaluation


def search_flat(query_vectors: np.ndarray, doc_vectors: np.ndarray, query_ids: list[str], doc_ids: list[str], depth: int = 100) -> dict:
    """Exact inner-product search (a faiss Flat index): a Run {qid: {docid: score}}."""
    from indexes.faiss_index import build_index, search_index
    from retrieval.run import Run

    scores, rows = search_index(build_index(doc_vectors, "Flat"), query_vectors, min(depth, len(doc_ids)))
    return Run({
        qid: {doc_ids[r]: float(s) for r, s in zip(row_ids, row_scores) if r >= 0}
        for qid, row_ids, row_scores in zip(query_ids, rows, scores)
    })


def positive_pairs(qrels: dict, query_ids: list[str], doc_ids: list[str]) -> list[tuple[int, int]]:
    """(query row, doc row) for every judged-relevant (grade > 0) pair."""
    q_row = {q: i for i, q in enumerate(query_ids)}
    d_row = {d: i for i, d in enumerate(doc_ids)}
    return [
        (q_row[q], d_row[d])
        for q in query_ids
        for d, grade in sorted(qrels.get(q, {}).items())
        if grade > 0 and d in d_row
    ]


# ---------------------------------------------------------------------------------------- command line


def load_config(path: str | Path) -> dict:
    return read_recipe(path, DEFAULTS)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="dengen train adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="yaml: data, model, ranks, epochs, lr, temperature, documents, out, ...")
    args = parser.parse_args(argv)
    config = load_config(args.config)

    from eval.metrics import evaluate_run, per_query
    from retrieval import load_dataset
    from retrieval.dense.encoder import SentenceEncoder

    out = Path(config["out"])
    train = load_dataset(config["data"], "train")
    test = load_dataset(config["data"], "test")
    if train.corpus.ids != test.corpus.ids:
        raise SystemExit("train and test splits do not share one corpus")
    doc_ids = train.corpus.ids
    encoder = SentenceEncoder(config["model"])

    started = time.perf_counter()
    doc_vectors, train_vectors, train_ids = cached_embeddings(encoder, train, config["cache"])
    _, test_vectors, test_ids = cached_embeddings(encoder, test, config["cache"])
    embed_seconds = time.perf_counter() - started
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise SystemExit(f"{len(overlap)} queries are in both train and test")

    pairs = positive_pairs(train.qrels, train_ids, doc_ids)  # TRAIN qrels only; test is never seen
    ks = (10, config["depth"])

    # Diagnostic: SciFact's test claims often cite documents that train claims cite too, so an adapter can
    # gain by learning *which documents get cited*. Report test queries with no relevant document among
    # the train positives separately: there only the query-document matching itself can help.
    train_docs = {doc for pos in train.qrels.values() for doc, grade in pos.items() if grade > 0}
    unseen = {q for q in test_ids if not any(d in train_docs for d, g in test.qrels[q].items() if g > 0)}

    def evaluate(queries: np.ndarray, docs: np.ndarray) -> dict:
        run = search_flat(queries, docs, test_ids, doc_ids, config["depth"])
        result = evaluate_run(test.qrels, run, ks=ks)
        ndcg = per_query(test.qrels, run, ks=ks)["ndcg@10"]
        result["ndcg@10_unseen_docs"] = float(np.mean([ndcg[q] for q in unseen])) if unseen else float("nan")
        result["ndcg@10_seen_docs"] = float(np.mean([ndcg[q] for q in test_ids if q not in unseen]))
        return result

    rows = [{"name": "base", "rank": 0, "train_seconds": 0.0, "test": evaluate(test_vectors, doc_vectors)}]
    for rank in config["ranks"]:
        adapter = train_adapter(
            train_vectors, doc_vectors, pairs, rank=rank, epochs=config["epochs"], lr=config["lr"],
            temperature=config["temperature"], batch_size=config["batch_size"], documents=config["documents"],
            seed=config["seed"], threads=config["threads"],
        )
        adapter.info.update({"model": config["model"], "model_sha256": encoder.fingerprint, "data": str(config["data"]),
                             "train_split": "train", "base": encoder.describe()})
        docs = adapter.apply(doc_vectors) if adapter.documents else doc_vectors
        result = evaluate(adapter.apply(test_vectors), docs)
        AdaptedEncoder(encoder, adapter).save(out / f"rank-{rank}")
        rows.append({"name": f"adapter r={rank}", "rank": rank, "train_seconds": adapter.info["train_seconds"],
                     "final_train_loss": adapter.info["epoch_loss"][-1], "test": result, "folder": str(out / f"rank-{rank}")})

    metric10, metric_depth = "ndcg@10", f"recall@{config['depth']}"
    print(f"\n{len(test_ids)} test queries; {len(unseen)} of them have no relevant document among the {len(train_docs)} train positives")
    print(f"{'':16} {metric10:>9} {metric_depth:>11} {'mrr@10':>8} {'nDCG@10 seen':>13} {'nDCG@10 unseen':>15} {'train s':>8}")
    for row in rows:
        t = row["test"]
        print(f"{row['name']:16} {t[metric10]:9.4f} {t[metric_depth]:11.4f} {t['mrr@10']:8.4f} "
              f"{t['ndcg@10_seen_docs']:13.4f} {t['ndcg@10_unseen_docs']:15.4f} {row['train_seconds']:8.1f}")

    report = {
        "command": "python -m training.adapter --config " + str(args.config),
        "config": config,
        "train": {"queries": len(train_ids), "pairs": len(pairs)},
        "test": {"queries": len(test_ids), "split": "test", "queries_with_unseen_docs_only": len(unseen)},
        "train_positive_docs": len(train_docs),
        "corpus_docs": len(doc_ids),
        "embed_seconds": round(embed_seconds, 1),
        "search": f"faiss IndexFlatIP, depth {config['depth']}",
        "results": rows,
    }
    write_results(out, report)
    return report


if __name__ == "__main__":
    main()
