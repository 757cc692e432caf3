#!/usr/bin/env python
"""Can a fresh key model learn to condition on its source? A copy task, before spending a SEAL training run.

Source: a SciFact corpus sentence (8-30 words). Target: 4 consecutive words of it, then eos. A model
that reads its source puts its first generated token inside the source and its loss falls towards the
ambiguity of where the span starts (about log 20); a model that ignores it stays at language-model loss
and gives every source the same first token. Every `--probe` steps this prints the batch loss, the share
of 40 held-out sentences whose most likely first token is one of their own tokens, and how many distinct
first tokens those 40 get. Plain AdamW at a constant learning rate, gradient norm clipped at 1.

    .venv/bin/python scripts/check_conditioning.py                        # bert2bert, 400 steps: ~8 min on 2 cores
    .venv/bin/python scripts/check_conditioning.py --backbone smollm2-135m --layout copy --lora 8 --lr 1e-3 --batch-size 8
    .venv/bin/python scripts/check_conditioning.py --steps 5000 --lr 1e-4  # on a GPU (used when there is one)

`--layout copy` lays the sentence out as issue 19's one-shot prompt ("Sentence: ...\nFour consecutive words
from the sentence:"); `--lora R` trains LoRA adapters of rank R on the attention's q and v projections.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from retrieval.data import load_corpus, shared_data
from retrieval.generative.keymodel import KeyModel
from bench_common import machine_info, write_json


COPY_LAYOUT = {"*": "Sentence: the cat sat on the mat next to the door\nFour consecutive words from the sentence: "
                    "on the mat next\n\nSentence: {source}\nFour consecutive words from the sentence:"}


def sentences(seed: int) -> list[list[str]]:
    found = [words for doc in load_corpus(shared_data("scifact")) for s in doc.text.split(". ")
             if 8 <= len(words := s.split()) <= 30]
    random.Random(seed).shuffle(found)
    return found


def probe(keymodel: KeyModel, held_out: list[list[str]]) -> dict:
    """Share of held-out sources whose top first token is one of their own tokens; distinct top tokens."""
    keymodel.model.eval()
    tops = [int(keymodel.first_token_logprobs(" ".join(w)).argmax()) for w in held_out]
    inside = sum(top in set(keymodel.tokens(" ".join(w))) for top, w in zip(tops, held_out))
    keymodel.model.train()
    return {"first_token_in_source": inside / len(held_out), "distinct_first_tokens": len(set(tops))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="bert2bert", help="bert2bert, a registry name or a Hugging Face folder")
    parser.add_argument("--layout", default="plain", choices=("plain", "copy"))
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probe", type=int, default=50, help="probe every this many steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/check_conditioning.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = random.Random(args.seed)
    found = sentences(args.seed)
    held_out, train = found[:40], found[40:]
    keymodel = KeyModel.create(args.backbone, seed=args.seed, layout=COPY_LAYOUT if args.layout == "copy" else "plain")
    if args.lora:
        keymodel.add_lora(r=args.lora, alpha=2 * args.lora)
    keymodel.model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in keymodel.model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    machine = machine_info(("torch", "transformers"))
    history = [{"step": 0, "loss": None, **probe(keymodel, held_out)}]
    print(history[0], flush=True)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        pairs = []
        for words in (rng.choice(train) for _ in range(args.batch_size)):
            i = rng.randrange(len(words) - 4)
            pairs.append((" ".join(words), keymodel.tokens(" ".join(words[i : i + 4])) + [keymodel.eos_id]))
        loss = keymodel.loss([s for s, _ in pairs], [t for _, t in pairs])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(keymodel.model.parameters(), 1.0)
        optimizer.step()
        if step % args.probe == 0 or step == args.steps:
            history.append({"step": step, "loss": round(loss.item(), 4), **probe(keymodel, held_out),
                            "seconds": round(time.perf_counter() - started, 1)})
            print(history[-1], flush=True)
            # rewritten at every probe, so an interrupted run keeps what it measured
            write_json(Path(args.out), {"task": "copy 4 words of a SciFact sentence", "args": vars(args), "device": device,
                                        "history": history, "machine": machine})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
