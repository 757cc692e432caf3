"""Fine-tune a sentence-transformers model with 2D Matryoshka Sentence Embeddings (2DMSE, arXiv:2402.14776).

Loss: sentence-transformers' `Matryoshka2dLoss` (AdaptiveLayerLoss over MatryoshkaLoss), called directly from a
plain torch loop (the SentenceTransformerTrainer needs `accelerate`, which is not installed). Per step:

    loss = w_last * sum_d  L(pool(h_L)[:d])                                   (last layer, matryoshka dims d)
         + w_prior * sum_d L(pool(h_i)[:d])                                   (one random shallower layer i)
         + w_kl * T * KL( softmax(pool(h_L)/T) || softmax(pool(h_i)/T) )     (align layer i with the last)

with L = CoSENT on STS-B train pairs and MultipleNegativesRanking (in-batch negatives) on SciFact *train*
query-positive pairs, alternating batches. See docs/matryoshka2d.md for how this differs from the paper.

After training, the model and the untrained base are scored on the grid layers x dims (STSb test Spearman,
SciFact test nDCG@10), all layers from one forward pass per text (`all_layer_embeddings`), cached per model.

    python -m training.matryoshka2d --config training/configs/matryoshka2d-minilm.yaml
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

from training.recipe import read_recipe, write_results

DEFAULTS = {
    "model": "minilm",
    "data": "../shared/data/scifact",
    "sts": "stsbenchmark",
    "dims": [384, 256, 128, 64, 32],
    "epochs": 1,
    "batch_size": 32,
    "lr": 2e-5,
    "warmup": 0.1,
    "train_max_length": 128,
    "sts_loss": "cosent",
    "formulation": "st",
    "use_sts": True,
    "use_scifact": True,
    "limit_pairs": None,
    "n_layers_per_step": 1,
    "n_dims_per_step": -1,
    "last_layer_weight": 1.0,
    "prior_layers_weight": 1.0,
    "kl_div_weight": 1.0,
    "kl_temperature": 0.3,
    "seed": 0,
    "threads": 1,
    "evaluate": True,
    "grid_layers": [1, 2, 3, 4, 5, 6],
    "grid_dims": [384, 256, 128, 64, 32],
    "grid_tasks": ["sts", "scifact"],
    "cache": "results/matryoshka2d/cache",
    "out": "results/matryoshka2d",
}
STS_LOSSES = ("cosent", "cosine")
FORMULATIONS = ("st", "paper")


# ---------------------------------------------------------------------------------------- data


def sts_pairs(name: str = "stsbenchmark") -> list[tuple[str, str, float]]:
    """STS-B *train* pairs with scores scaled to 0-1 (CoSENT only uses their order)."""
    from eval.sts import STS_SETS, load_sts_pairs, sts_set

    top = STS_SETS[sts_set(name)][3][1]
    return [(p.sentence1, p.sentence2, p.score / top) for p in load_sts_pairs(name, "train")]


def scifact_pairs(data: str | Path) -> list[tuple[str, str]]:
    """(query, relevant document text) for every judged-relevant pair of the *train* split."""
    from retrieval import load_dataset

    train = load_dataset(data, "train")
    return [
        (train.queries[q], train.corpus[d].full_text)
        for q in sorted(train.qrels)
        for d, grade in sorted(train.qrels[q].items())
        if grade > 0 and d in train.corpus and q in train.queries
    ]


def batches(items: list, batch_size: int, rng: random.Random) -> list[list]:
    order = list(items)
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def interleave(a: list, b: list) -> list:
    """a0 b0 a1 b1 ... then the rest of the longer list, spread evenly: alternating batches of two tasks."""
    if len(a) < len(b):
        a, b = b, a
    out, step = [], len(a) / max(len(b), 1)
    j = 0
    for i, item in enumerate(a):
        out.append(item)
        if j < len(b) and i + 1 >= (j + 1) * step - 1e-9:
            out.append(b[j])
            j += 1
    out.extend(b[j:])
    return out


# ---------------------------------------------------------------------------------------- training


class Paper2dmseLoss:
    """The paper's per-step objective (2DMSE v1, arXiv:2402.14776 Sec. 3), over any sentence-transformers loss:

        i ~ U{1..L-1} (a transformer layer below the last), d' ~ U(dims below the full size)
        loss = l(X_L) + l(X_L[:d']) + l(X_i) + l(X_i[:d']) + w_kl * T * KL(softmax(X_L/T) || softmax(X_i/T))

    with X_k the pooled output after k layers (one forward pass; every X_k comes from the hidden states), l the
    base loss on those embeddings (`compute_loss_from_embeddings`; cosine similarity there makes a prefix
    comparison the Matryoshka one), and the last layer the detached teacher of the KL term.
    """

    def __init__(self, st_model, loss, dims: list[int], kl_div_weight: float = 1.0, kl_temperature: float = 0.3):
        self.model, self.loss, self.dims = st_model, loss, list(dims)
        self.kl_div_weight, self.kl_temperature = kl_div_weight, kl_temperature

    def __call__(self, sentence_features: list[dict], labels):
        import torch.nn.functional as F

        from retrieval.dense.matryoshka2d import pool_layer

        transformer = self.model[0]
        config = transformer.auto_model.config
        saved = config.output_hidden_states
        config.output_hidden_states = True
        try:
            outputs = [transformer(dict(f)) for f in sentence_features]
        finally:
            config.output_hidden_states = saved
        top = len(outputs[0]["all_layer_embeddings"]) - 1
        shallow = random.randint(1, top - 1) if top > 1 else top
        small = random.choice(self.dims[1:]) if len(self.dims) > 1 else self.dims[0]
        last = [pool_layer(self.model, o, top) for o in outputs]
        mid = [pool_layer(self.model, o, shallow) for o in outputs]
        loss = 0.0
        for embeddings in (last, mid):
            loss = loss + self.loss.compute_loss_from_embeddings(embeddings, labels)
            loss = loss + self.loss.compute_loss_from_embeddings([e[:, :small] for e in embeddings], labels)
        if self.kl_temperature > 0 and shallow != top:
            t = self.kl_temperature
            teacher = F.softmax(torch_cat(last) / t, dim=-1).detach()
            loss = loss + self.kl_div_weight * t * F.kl_div(F.log_softmax(torch_cat(mid) / t, dim=-1), teacher,
                                                            reduction="batchmean")
        return loss


def torch_cat(tensors):
    import torch

    return torch.cat(tensors, dim=0)


def make_losses(st_model, config: dict) -> dict:
    """{"sts": 2D loss over CoSENT, "pairs": 2D loss over MNRL}: ST's Matryoshka2dLoss or `Paper2dmseLoss`."""
    from sentence_transformers.sentence_transformer import losses

    if config["formulation"] == "paper":
        sts_base = losses.CoSENTLoss(st_model) if config["sts_loss"] == "cosent" else losses.CosineSimilarityLoss(st_model)
        extra = dict(kl_div_weight=config["kl_div_weight"], kl_temperature=config["kl_temperature"])
        return {"sts": Paper2dmseLoss(st_model, sts_base, config["dims"], **extra),
                "pairs": Paper2dmseLoss(st_model, losses.MultipleNegativesRankingLoss(st_model), config["dims"], **extra)}
    kwargs = dict(
        matryoshka_dims=list(config["dims"]),
        n_layers_per_step=config["n_layers_per_step"],
        n_dims_per_step=config["n_dims_per_step"],
        last_layer_weight=config["last_layer_weight"],
        prior_layers_weight=config["prior_layers_weight"],
        kl_div_weight=config["kl_div_weight"],
        kl_temperature=config["kl_temperature"],
    )
    sts_base = losses.CoSENTLoss(st_model) if config["sts_loss"] == "cosent" else losses.CosineSimilarityLoss(st_model)
    return {
        "sts": losses.Matryoshka2dLoss(st_model, sts_base, **kwargs),
        "pairs": losses.Matryoshka2dLoss(st_model, losses.MultipleNegativesRankingLoss(st_model), **kwargs),
    }


def train_steps(st_model, steps: list[tuple[str, list]], config: dict, progress: bool = True) -> dict:
    """Run AdamW (linear warm-up then decay) over `steps`: ("sts", [(s1, s2, score)]) or ("pairs", [(q, d)]).

    Returns {"losses": [per-step loss], "seconds": wall time}; `st_model` is trained in place.
    """
    import torch
    from tqdm import tqdm

    losses = make_losses(st_model, config)
    optimizer = torch.optim.AdamW(st_model.parameters(), lr=config["lr"])
    total = max(len(steps), 1)
    warm = max(1, int(config["warmup"] * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    device = st_model.device

    def features(texts):
        batch = st_model.preprocess(texts)
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}

    st_model.train()
    history, started = [], time.perf_counter()
    bar = tqdm(steps, desc="2DMSE training", disable=not progress, file=sys.stderr)
    for task, batch in bar:
        if task == "sts":
            inputs = [features([b[0] for b in batch]), features([b[1] for b in batch])]
            labels = torch.tensor([b[2] for b in batch], dtype=torch.float32, device=device)
        else:
            inputs = [features([b[0] for b in batch]), features([b[1] for b in batch])]
            labels = None
        loss = losses[task](inputs, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(st_model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append((task, float(loss.item())))
        bar.set_postfix(task=task, loss=f"{history[-1][1]:.3f}")
    st_model.eval()
    return {"losses": history, "seconds": time.perf_counter() - started}


def build_steps(config: dict, rng: random.Random) -> list[tuple[str, list]]:
    sts = sts_pairs(config["sts"]) if config["use_sts"] else []
    pairs = scifact_pairs(config["data"]) if config["use_scifact"] else []
    if config["limit_pairs"]:
        sts, pairs = sts[: config["limit_pairs"]], pairs[: config["limit_pairs"]]
    steps = []
    for _ in range(config["epochs"]):
        steps += interleave([("sts", b) for b in batches(sts, config["batch_size"], rng)],
                            [("pairs", b) for b in batches(pairs, config["batch_size"], rng)])
    return steps


# ---------------------------------------------------------------------------------------- grid evaluation


def cached_layer_embeddings(st_model, fingerprint: str, name: str, texts: list[str], cache: str | Path,
                            progress: bool = True) -> np.ndarray:
    """`all_layer_embeddings` of `texts`, cached as `{cache}/{name}-{fingerprint[:12]}-{n}.npy`."""
    from retrieval.dense.cache import save_npy
    from retrieval.dense.matryoshka2d import all_layer_embeddings

    path = Path(cache) / f"{name}-{fingerprint[:12]}-{len(texts)}.npy"
    if path.is_file():
        return np.load(path)
    vectors = all_layer_embeddings(st_model, texts, progress=progress)
    save_npy(path, vectors)
    return vectors


def grid_scores(st_model, fingerprint: str, config: dict, progress: bool = True) -> dict:
    """{"sts": {layers: {dim: spearman}}, "scifact": {layers: {dim: ndcg@10}}, "seconds": ...} on the TEST splits."""
    from eval.metrics import evaluate_run
    from eval.sts import correlations, cosine_scores, load_sts_pairs
    from retrieval import load_dataset
    from retrieval.dense.matryoshka2d import truncate_normalise
    from training.adapter import search_flat

    started = time.perf_counter()
    cache, tasks = config["cache"], config["grid_tasks"]
    grid = {task: {} for task in tasks}
    if "sts" in tasks:
        pairs = load_sts_pairs(config["sts"], "test")
        unique = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
        row = {s: i for i, s in enumerate(unique)}
        left, right = [row[p.sentence1] for p in pairs], [row[p.sentence2] for p in pairs]
        sts_vectors = cached_layer_embeddings(st_model, fingerprint, "stsb-test", unique, cache, progress)
        for layers in config["grid_layers"]:
            for dim in config["grid_dims"]:
                s = truncate_normalise(sts_vectors[layers - 1], dim)
                grid["sts"].setdefault(str(layers), {})[str(dim)] = correlations(
                    [p.score for p in pairs], cosine_scores(s[left], s[right]))["cosine_spearman"]
    if "scifact" in tasks:
        test = load_dataset(config["data"], "test")
        qids = list(test.queries)
        doc_vectors = cached_layer_embeddings(st_model, fingerprint, "scifact-corpus",
                                              [d.full_text for d in test.corpus], cache, progress)
        query_vectors = cached_layer_embeddings(st_model, fingerprint, "scifact-test-queries",
                                                [test.queries[q] for q in qids], cache, progress)
        for layers in config["grid_layers"]:
            for dim in config["grid_dims"]:
                run = search_flat(truncate_normalise(query_vectors[layers - 1], dim),
                                  truncate_normalise(doc_vectors[layers - 1], dim), qids, test.corpus.ids, 100)
                grid["scifact"].setdefault(str(layers), {})[str(dim)] = evaluate_run(test.qrels, run, ks=(10,))["ndcg@10"]
    grid["seconds"] = round(time.perf_counter() - started, 1)
    return grid


def grid_table(grid: dict, task: str, base: dict | None = None) -> str:
    """Markdown table layers x dims; with `base`, each cell also shows the change against it."""
    dims = list(next(iter(grid[task].values())))
    lines = ["| layers | " + " | ".join(f"d={d}" for d in dims) + " |", "|---|" + "---|" * len(dims)]
    for layers, cells in grid[task].items():
        values = []
        for d in dims:
            v = cells[d]
            values.append(f"{v:.4f}" if base is None else f"{v:.4f} ({v - base[task][layers][d]:+.4f})")
        lines.append(f"| {layers} | " + " | ".join(values) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command line


def load_config(path: str | Path) -> dict:
    config = read_recipe(path, DEFAULTS)
    if config["sts_loss"] not in STS_LOSSES:
        raise SystemExit(f"{path}: sts_loss={config['sts_loss']!r}: choose one of {STS_LOSSES}")
    if config["formulation"] not in FORMULATIONS:
        raise SystemExit(f"{path}: formulation={config['formulation']!r}: choose one of {FORMULATIONS}")
    for key in ("dims", "grid_dims", "grid_layers"):
        value = config[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
            raise SystemExit(f"{path}: {key}={value!r}: expected a non-empty list of positive integers")
    if config["dims"] != sorted(config["dims"], reverse=True):
        raise SystemExit(f"{path}: dims={config['dims']!r}: list them largest first")
    for key in ("epochs", "batch_size", "threads", "train_max_length"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise SystemExit(f"{path}: {key}={config[key]!r}: expected a positive integer")
    if not set(config["grid_tasks"]) <= {"sts", "scifact"}:
        raise SystemExit(f"{path}: grid_tasks={config['grid_tasks']!r}: choose from ['sts', 'scifact']")
    if not config["use_sts"] and not config["use_scifact"]:
        raise SystemExit(f"{path}: use_sts and use_scifact are both false: nothing to train on")
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="dengen train matryoshka2d", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="yaml: model, dims, epochs, batch_size, lr, loss weights, out, ...")
    args = parser.parse_args(argv)
    config = load_config(args.config)

    import torch

    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import load_encoder
    from retrieval.dense.matryoshka2d import Matryoshka2dEncoder

    torch.set_num_threads(config["threads"])
    random.seed(config["seed"])  # Matryoshka2dLoss samples its layers with `random`
    torch.manual_seed(config["seed"])
    out = Path(config["out"])

    encoder = SentenceEncoder(config["model"], device="cpu")
    for name, value in (("dims", max(config["dims"])), ("grid_dims", max(config["grid_dims"]))):
        if value > encoder.dim:
            raise SystemExit(f"{args.config}: {name} has {value} > the model's {encoder.dim} dimensions")
    report = {"command": f"python -m training.matryoshka2d --config {args.config}", "config": config}
    if config["evaluate"]:
        report["base_grid"] = grid_scores(encoder.model, encoder.fingerprint, config)

    steps = build_steps(config, random.Random(config["seed"]))
    # shorter inputs while training only (CPU cost); the saved model keeps its own max_seq_length
    own_length = encoder.model.max_seq_length
    encoder.model.max_seq_length = min(own_length, config["train_max_length"])
    try:
        trained = train_steps(encoder.model, steps, config)
    finally:
        encoder.model.max_seq_length = own_length
    history = trained["losses"]
    info = {
        "paper": "Li et al. 2024, 2D Matryoshka Sentence Embeddings, arXiv:2402.14776",
        "loss": "sentence-transformers Matryoshka2dLoss", "start": config["model"], "base_sha256": encoder.fingerprint,
        "steps": len(steps), "sts_steps": sum(t == "sts" for t, _ in steps), "pair_steps": sum(t == "pairs" for t, _ in steps),
        "train_seconds": round(trained["seconds"], 1), "config": config,
    }
    folder = out / "model"
    Matryoshka2dEncoder(encoder).save(folder, info=info)
    report["train"] = {**{k: v for k, v in info.items() if k != "config"},
                       "first_losses": history[:10], "last_losses": history[-10:], "folder": str(folder)}
    print(f"trained {len(steps)} steps in {trained['seconds']:.0f} s; saved {folder}")

    if config["evaluate"]:
        saved = load_encoder(folder, device="cpu")  # score what was saved, not the object in memory
        report["trained_grid"] = grid_scores(saved.model, saved.fingerprint, config)
        for task, label in (("sts", "STSb test Spearman"), ("scifact", "SciFact test nDCG@10")):
            if task not in config["grid_tasks"]:
                continue
            print(f"\n{label}, base:\n{grid_table(report['base_grid'], task)}")
            print(f"\n{label}, 2DMSE (change vs base):\n{grid_table(report['trained_grid'], task, report['base_grid'])}")
    write_results(out, report)
    return report


if __name__ == "__main__":
    main()
