"""The one trainer of generative key models (SEAL, CorpusBrain, UGR): source text in, target tokens out."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from training.contrastive import linear_warmup, optimise


def train_keymodel(keymodel, examples: list[tuple[str, str]], config: dict, *, progress: bool = True,
                   desc: str = "train") -> dict:
    """Teacher-forced cross-entropy on (source, target + eos); AdamW, linear warm-up and decay.

    `config` keys: seed, device ("auto": CUDA when there is one), max_target_tokens, batch_size, epochs,
    max_steps (None: no cap), lr, warmup (a fraction of the steps), label_smoothing (0: plain cross-entropy). Only
    trainable parameters are optimised (LoRA adapters alone after `KeyModel.add_lora`). The model is back on the CPU after."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(config["seed"])
    device = config["device"] if config["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = keymodel.model.to(device).train()
    targets = [keymodel.tokens(t)[: config["max_target_tokens"] - 1] + [keymodel.eos_id] for _, t in examples]
    batch = config["batch_size"]
    total = math.ceil(len(examples) / batch) * config["epochs"]
    if config["max_steps"] is not None:  # 0: no training (a zero-shot key model, saved as a reference)
        total = min(total, config["max_steps"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"], weight_decay=0.01)
    schedule = linear_warmup(optimizer, total, config["warmup"])
    rng = np.random.default_rng(config["seed"])
    losses, step, started = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr)
    while step < total:
        order = rng.permutation(len(examples))
        for start in range(0, len(order), batch):
            if step >= total:
                break
            rows = order[start : start + batch]
            loss = keymodel.loss([examples[i][0] for i in rows], [targets[i] for i in rows],
                                 label_smoothing=config.get("label_smoothing", 0.0))
            optimise(loss, optimizer, schedule, losses, bar, clip=1.0)
            step += 1
    bar.close()
    model.eval().cpu()
    if step and keymodel.lora is None:
        keymodel.owns_weights = True  # fully trained: its own weights now
    seconds = time.perf_counter() - started
    return {"examples": len(examples), "device": device, "steps": step,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad), "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / max(1, step), 3),
            "loss_first20": round(float(np.mean(losses[:20])), 4) if losses else None,
            "loss_last20": round(float(np.mean(losses[-20:])), 4) if losses else None}


def start_keymodel(config: dict, **create):
    """A new key model for a recipe: `backbone` (any model KeyModel.create takes), `layout`, and LoRA
    adapters when `lora` is set ({r, alpha, dropout, targets}; null: full fine-tuning)."""
    from retrieval.generative.keymodel import KeyModel

    keymodel = KeyModel.create(config["backbone"], seed=config["seed"], layout=config.get("layout", "plain"), **create)
    if config.get("lora"):
        keymodel.add_lora(**config["lora"])
    return keymodel


def train_or_reuse(folder: Path, signature: str, start: Callable, examples: Callable[[], list], config: dict, *,
                   desc: str, extra: dict | None = None) -> dict:
    """Train `start()` (a new KeyModel) on `examples()` into `folder`, unless a model trained with this recipe
    `signature` is there already (then it is reused). Returns the training record (keymodel-train.json):
    the signature, `extra` (filled in by `examples()` if it likes) and `train_keymodel`'s numbers."""
    info_path = Path(folder) / "keymodel-train.json"
    if info_path.is_file() and json.loads(info_path.read_text())["signature"] == signature:
        print(f"{folder}: trained with this recipe already, reusing it")
        return json.loads(info_path.read_text())
    keymodel = start()
    pairs = examples()
    info = {"signature": signature, **(extra or {}), **train_keymodel(keymodel, pairs, config, desc=desc)}
    keymodel.save(folder)
    info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")  # written last: the done marker
    return info
