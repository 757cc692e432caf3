"""Distilled Sentence Embedding (Barkan et al., AAAI 2020, arXiv:1908.05161) on STS-B, from MiniLM.

Stages (each a plain torch loop; `accelerate` is not installed, so no HF / ST Trainer):
  1. teacher: MiniLM with a one-output head (AutoModelForSequenceClassification, num_labels=1) fine-tuned
     as a cross-encoder on STS-B train, MSE to score / 5; saved to <out>/teacher (reused when present).
  2. the teacher's raw outputs for the student's training pairs (STS-B train; no extra unlabeled pairs).
  3. student: the MiniLM bi-encoder trained with the DSE loss, alpha = 0.5 (see retrieval/dense/dse.py).
  4. baseline: the same bi-encoder, same seed / steps / lr, trained with the task loss only (alpha = 0).
Evaluation on STS-B test (never used for training or selection): base MiniLM, teacher, student, baseline.
The student is saved as a module (<out>/student) and re-scored in a NEW process to check the reload.

    python -m training.dse --config training/configs/dse-stsb.yaml
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from retrieval.dense.dse import CrossEncoderScorer, DSEEncoder, DSEHead, dse_loss
from training.contrastive import optimise
from training.recipe import read_recipe, write_results

DEFAULTS = {
    "data": None,              # STS-B folder; None: the shared copy
    "model": "minilm",
    "alpha": 0.5,              # weight of the distillation term (the reference's distillation_coeff)
    "similarity": "cosine",
    "affine": False,           # learn s = scale * cos + shift (scale > 0) on top of the cosine
    "teacher_epochs": 3,
    "teacher_lr": 2e-5,
    "student_epochs": 2,
    "student_lr": 2e-5,
    "batch_size": 16,
    "warmup": 0.1,             # fraction of steps with a linear warm-up, then linear decay
    "max_length": 128,
    "seed": 0,
    "threads": 1,
    "train_limit": None,       # first N train pairs only (quick runs / tests)
    "test_limit": None,        # first N test pairs only (quick runs / tests)
    "reuse_teacher": True,     # keep <out>/teacher when it exists
    "reload_check": True,      # re-score the saved student in a new process
    "baseline": True,          # also train the no-distillation bi-encoder (alpha = 0)
    "out": "results/dse",
}
TYPES = {"alpha": float, "teacher_epochs": int, "student_epochs": int, "batch_size": int, "teacher_lr": float,
         "student_lr": float, "warmup": float, "max_length": int, "seed": int, "threads": int}


# ---------------------------------------------------------------------------------------- loops


def _scheduler(torch, optimizer, steps: int, warmup: float):
    warm = max(1, int(round(warmup * steps)))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warm, max(0.0, (steps - step) / max(1, steps - warm))))


def _batches(torch, n: int, batch_size: int, epochs: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def _fit(torch, batch_loss, params, n: int, desc: str, epochs: int, lr: float, batch_size: int, warmup: float, seed: int,
         progress: bool) -> dict:
    """AdamW with linear warm-up and decay over shuffled batches of `n` rows; `batch_loss(rows)` gives each loss.

    Returns what both stages record: steps, first loss, mean of the last 50 losses, seconds.
    """
    from tqdm import tqdm

    steps = epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = _scheduler(torch, optimizer, steps, warmup)
    losses, started = [], time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress, file=sys.stderr)
    for rows in _batches(torch, n, batch_size, epochs, seed):
        optimise(batch_loss(rows), optimizer, schedule, losses, bar)
    bar.close()
    return {"steps": steps, "first_loss": losses[0], "last_loss_mean50": float(np.mean(losses[-50:])),
            "train_seconds": round(time.perf_counter() - started, 1)}


def train_teacher(teacher: CrossEncoderScorer, first, second, labels, epochs=3, lr=2e-5, batch_size=16,
                  warmup=0.1, seed=0, progress=True) -> dict:
    """Fine-tune the cross-encoder in place: MSE of its single output to `labels` (STS-B: score / 5)."""
    import torch

    torch.manual_seed(seed)
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))

    def batch_loss(rows):
        out = teacher.logits([first[i] for i in rows], [second[i] for i in rows])
        return torch.nn.functional.mse_loss(out, labels[rows])

    teacher.model.train()
    fitted = _fit(torch, batch_loss, teacher.model.parameters(), len(labels), "teacher", epochs, lr, batch_size,
                  warmup, seed, progress)
    teacher.model.eval()
    return {"steps": fitted["steps"], "epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup": warmup,
            "seed": seed, "pairs": len(labels), **{k: v for k, v in fitted.items() if k != "steps"}}


def train_student(model, first, second, labels, teacher_scores=None, alpha=0.5, head: DSEHead | None = None,
                  affine=False, epochs=2, lr=2e-5, batch_size=16, warmup=0.1, seed=0, progress=True):
    """Train a SentenceTransformer bi-encoder in place on the DSE loss; returns (head, info).

    Both sentences of a pair go through the same encoder; scores come from `head` (with a learned positive
    affine map when `affine`). alpha = 0 trains on the labels alone (the no-distillation baseline).
    """
    import torch

    head = head or DSEHead()
    torch.manual_seed(seed)
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    teacher = None if teacher_scores is None else torch.as_tensor(np.asarray(teacher_scores, dtype=np.float32))
    params = list(model.parameters())
    log_scale = torch.nn.Parameter(torch.tensor(math.log(head.scale)))
    shift = torch.nn.Parameter(torch.tensor(head.shift))
    if affine:
        params += [log_scale, shift]  # exp keeps the scale positive, so the ranking stays the cosine's
    device = model.device

    def batch_loss(rows):
        texts = [first[i] for i in rows] + [second[i] for i in rows]
        features = {k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(texts).items()}
        vectors = model(features)["sentence_embedding"]
        u, v = vectors[: len(rows)], vectors[len(rows) :]
        scores = head.torch_score(u, v, scale=log_scale.exp() if affine else None, shift=shift if affine else None)
        return dse_loss(scores, labels[rows], None if teacher is None else teacher[rows], alpha=alpha)

    model.train()
    fitted = _fit(torch, batch_loss, params, len(labels), f"student alpha={alpha}", epochs, lr, batch_size, warmup,
                  seed, progress)
    model.eval()
    if affine:
        head = DSEHead(head.similarity, float(log_scale.detach().exp()), float(shift.detach()))
    info = {"alpha": alpha, "steps": fitted["steps"], "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "warmup": warmup, "seed": seed, "pairs": len(labels), "affine": affine,
            **{k: v for k, v in fitted.items() if k != "steps"}}
    return head, info


# ---------------------------------------------------------------------------------------- evaluation


def teacher_correlations(teacher: CrossEncoderScorer, pairs) -> dict:
    from eval.sts import correlations

    scores = teacher.score([p.sentence1 for p in pairs], [p.sentence2 for p in pairs], progress=True)
    return correlations([p.score for p in pairs], scores)


def encoder_correlations(encoder, pairs) -> dict:
    """Cosine Spearman / Pearson exactly as eval.sts.evaluate_sts scores an encoder (on these pairs)."""
    from eval.sts import correlations, cosine_scores

    unique = list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))
    vectors = np.asarray(encoder.encode_queries(unique))
    row = {s: i for i, s in enumerate(unique)}
    sims = cosine_scores(vectors[[row[p.sentence1] for p in pairs]], vectors[[row[p.sentence2] for p in pairs]])
    return correlations([p.score for p in pairs], sims)


RELOAD_CODE = """
import json, sys
from eval.sts import load_sts_pairs
from retrieval.dense.encoders import load_encoder
from training.dse import encoder_correlations
pairs = load_sts_pairs("stsbenchmark", "test", {folder!r})[:{limit!r}]
print(json.dumps(encoder_correlations(load_encoder({student!r}), pairs)))
"""


def reload_in_new_process(student: Path, data, limit) -> dict:
    code = RELOAD_CODE.format(folder=None if data is None else str(data), limit=limit, student=str(student))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"reloading {student} in a new process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- command line


def load_config(path: str | Path) -> dict:
    config = read_recipe(path, DEFAULTS)
    for key, kind in TYPES.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise SystemExit(f"{path}: key {key!r} must be a {kind.__name__}, got {value!r}")
    for key in ("affine", "reuse_teacher", "reload_check", "baseline"):
        if not isinstance(config[key], bool):
            raise SystemExit(f"{path}: key {key!r} must be true or false, got {config[key]!r}")
    if not 0.0 <= config["alpha"] <= 1.0:
        raise SystemExit(f"{path}: key 'alpha' must be in [0, 1], got {config['alpha']}")
    if config["similarity"] not in ("cosine", "dot"):
        raise SystemExit(f"{path}: key 'similarity' must be 'cosine' or 'dot', got {config['similarity']!r}")
    for key in ("teacher_epochs", "student_epochs", "batch_size"):
        if config[key] < 1:
            raise SystemExit(f"{path}: key {key!r} must be at least 1, got {config[key]}")
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="dengen train dse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="yaml: alpha, teacher_epochs, student_epochs, out, ...")
    args = parser.parse_args(argv)
    config = load_config(args.config)

    import torch

    from eval.sts import load_sts_pairs
    from retrieval.dense.encoder import SentenceEncoder

    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    data = config["data"]
    train = load_sts_pairs("stsbenchmark", "train", data)[: config["train_limit"]]
    test = load_sts_pairs("stsbenchmark", "test", data)[: config["test_limit"]]
    first, second = [p.sentence1 for p in train], [p.sentence2 for p in train]
    labels = np.array([p.score / 5.0 for p in train], dtype=np.float32)  # STS-B 0-5 -> [0, 1]
    rows, timings = [], {}

    def record(name, metrics, seconds=None, **extra):
        rows.append({"name": name, "spearman": metrics["cosine_spearman"] if "cosine_spearman" in metrics else None,
                     "metrics": metrics, "train_seconds": seconds, **extra})
        print(f"{name:34} Spearman {100 * metrics['cosine_spearman']:6.2f}  Pearson {100 * metrics['cosine_pearson']:6.2f}")

    started = time.perf_counter()
    record("MiniLM (no training)", encoder_correlations(SentenceEncoder(config["model"]), test))
    timings["base_eval"] = round(time.perf_counter() - started, 1)

    # 1. teacher
    teacher_dir = out / "teacher"
    if config["reuse_teacher"] and (teacher_dir / "manifest.json").is_file():
        teacher = CrossEncoderScorer.load(teacher_dir)
        teacher_info = {**teacher.info, "reused": str(teacher_dir)}
        print(f"reusing the teacher in {teacher_dir} (trained {teacher_info.get('train_seconds')} s)")
    else:
        teacher = CrossEncoderScorer(config["model"], max_length=config["max_length"])
        teacher_info = train_teacher(teacher, first, second, labels, epochs=config["teacher_epochs"], lr=config["teacher_lr"],
                                     batch_size=config["batch_size"], warmup=config["warmup"], seed=config["seed"])
        teacher_info.update({"model": config["model"], "data": "stsbenchmark train", "loss": "MSE to score/5"})
        teacher.save(teacher_dir, info=teacher_info)
    started = time.perf_counter()
    record("teacher (cross-encoder)", teacher_correlations(teacher, test), teacher_info.get("train_seconds"))
    timings["teacher_eval"] = round(time.perf_counter() - started, 1)

    # 2. teacher outputs for the student's training pairs
    started = time.perf_counter()
    teacher_train = teacher.score(first, second, progress=True)
    timings["teacher_train_scores"] = round(time.perf_counter() - started, 1)
    del teacher

    # 3-4. student (alpha) and the no-distillation baseline (alpha = 0): same seed, steps, lr
    results = {}
    runs = [("student", config["alpha"])] + ([("no-distillation", 0.0)] if config["baseline"] else [])
    for name, alpha in runs:
        encoder = SentenceEncoder(config["model"], normalize=config["similarity"] == "cosine", max_length=config["max_length"])
        head, info = train_student(encoder.model, first, second, labels, teacher_train if alpha > 0 else None, alpha=alpha,
                                   head=DSEHead(config["similarity"]), affine=config["affine"], epochs=config["student_epochs"],
                                   lr=config["student_lr"], batch_size=config["batch_size"], warmup=config["warmup"],
                                   seed=config["seed"])
        info.update({"paper": "Barkan et al. 2020, arXiv:1908.05161", "model": config["model"],
                     "data": "stsbenchmark train", "teacher": str(teacher_dir)})
        module = DSEEncoder(encoder, head, info=info)
        module.save(out / name)
        started = time.perf_counter()
        metrics = encoder_correlations(module, test)
        timings[f"{name}_eval"] = round(time.perf_counter() - started, 1)
        results[name] = metrics
        record(f"{name} (alpha={alpha})", metrics, info["train_seconds"], folder=str(out / name))

    teacher_s, student_s = rows[1]["spearman"], results["student"]["cosine_spearman"]
    degradation = (teacher_s - student_s) / teacher_s
    print(f"\nrelative degradation of the student vs the teacher (Spearman): {100 * degradation:.1f}% (paper: 4.6% over GLUE)")
    gain = student_s - results["no-distillation"]["cosine_spearman"] if config["baseline"] else None
    if gain is not None:
        print(f"student - no-distillation (Spearman x100): {100 * gain:+.2f}")

    reload = None
    if config["reload_check"]:
        started = time.perf_counter()
        again = reload_in_new_process(out / "student", data, config["test_limit"])
        reload = {"metrics": again, "same": all(abs(again[k] - results["student"][k]) < 1e-6 for k in again),
                  "seconds": round(time.perf_counter() - started, 1)}
        print(f"student reloaded in a new process: Spearman {100 * again['cosine_spearman']:.4f} "
              f"({'same' if reload['same'] else 'DIFFERENT'})")

    report = {
        "command": "python -m training.dse --config " + str(args.config),
        "config": config,
        "train_pairs": len(train),
        "test_pairs": len(test),
        "results": rows,
        "teacher": teacher_info,
        "relative_degradation": degradation,
        "student_minus_baseline_spearman": gain,
        "reload": reload,
        "timings": timings,
        "threads": config["threads"],
    }
    write_results(out, report)
    return report


if __name__ == "__main__":
    main()
