#!/usr/bin/env python
"""Does SmolLM2's tiktoken twin (retrieval/generative/tiktoken_bpe.py) give the Hugging Face tokenizer's ids?
And which way of threading it is fastest?

1. Equality: every string field of every .jsonl(.gz) file and every line of the other data files under the
   shared data folder, plus 20,000 random Unicode strings (seeded: Latin, Greek, Cyrillic, CJK, emoji,
   odd spaces, contractions, digits), each with SEAL's leading space, tokenised both ways; any text whose
   ids differ is counted and the first few printed. Exit status 1 when one differs.
2. Speed on SciFact's texts and titles (as SEAL tokenises them), interleaved, best of --rounds: the Hugging
   Face `encode_batch_fast`, tiktoken's own `encode_ordinary_batch` (a future per text), one thread, and
   one thread per core over interleaved texts (what `TiktokenBPE.encode_batch` does).

    .venv/bin/python scripts/check_tiktoken_twin.py --out results/check_tiktoken_twin.json   # ~2 min on 2 cores
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from bench_common import machine_info, timed, write_json
from retrieval.data import load_corpus, shared_data


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def data_texts(root: Path) -> list[str]:
    texts = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix == ".md":
            continue
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if ".jsonl" in path.name:
                    try:
                        texts.extend(s for s in strings(json.loads(line)) if s)
                        continue
                    except json.JSONDecodeError:
                        pass
                texts.append(line)
    return texts


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    codes = [*range(32, 0x250), *range(0x370, 0x3FF), *range(0x400, 0x4FF), *range(0x4E00, 0x4E80), *range(0x1F600, 0x1F650),
             0x200B, 0x3000, 0xA0, 0x2028, 0x85, 0xFEFF]
    alphabet = [chr(c) for c in codes] + [" ", "  ", "\n", "\t", "'s", "'ll", "'S", "123", "  \n "]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=shared_data(), help="folder of data files (default: %(default)s)")
    parser.add_argument("--random", type=int, default=20_000, help="random Unicode strings added (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, best kept (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/check_tiktoken_twin.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from retrieval.generative.tiktoken_bpe import TiktokenBPE
    from retrieval.models import smollm2_folder

    backend = AutoTokenizer.from_pretrained(str(smollm2_folder())).backend_tokenizer
    twin = TiktokenBPE.for_tokenizer(backend)
    hf = lambda texts: [e.ids for s in range(0, len(texts), 1024)
                        for e in backend.encode_batch_fast(texts[s : s + 1024], add_special_tokens=False)]

    texts = [" " + t.strip() for t in data_texts(args.data) + random_texts(args.random, seed=0)]  # as KeyModel does
    expected, got = hf(texts), twin.encode_batch(texts)
    differ = [i for i, (a, b) in enumerate(zip(expected, got)) if a != b]
    for i in differ[:5]:
        print(f"differs: {texts[i][:120]!r}\n  hf       {expected[i][:20]}\n  tiktoken {got[i][:20]}")
    equality = {"texts": len(texts), "characters": sum(map(len, texts)), "tokens": sum(map(len, expected)),
                "differing": len(differ), "random_strings": args.random, "data": str(args.data)}
    print(f"{equality['texts']} texts, {equality['characters']} characters, {equality['tokens']} tokens: "
          f"{equality['differing']} differ")

    corpus = load_corpus(shared_data("scifact"))
    sample = [" " + d.title.strip() for d in corpus] + [" " + d.text.strip() for d in corpus]
    encode, k = twin.encoding.encode_ordinary, twin.threads

    def interleaved():
        with ThreadPoolExecutor(k) as pool:
            return list(pool.map(lambda j: [encode(t) for t in sample[j::k]], range(k)))

    ways = {"huggingface_encode_batch_fast": lambda: hf(sample),
            "tiktoken_encode_ordinary_batch": lambda: twin.encoding.encode_ordinary_batch(sample, num_threads=k),
            "tiktoken_one_thread": lambda: [encode(t) for t in sample],
            "tiktoken_thread_per_core_interleaved": interleaved}
    times = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved rounds: load changes hit every way alike
        for name, fn in ways.items():
            times[name].append(timed(fn)[1])
    speed = {name: {"best_s": min(t), "rounds_s": t} for name, t in times.items()}
    for name, s in speed.items():
        print(f"{name}: {s['best_s']:.3f} s (rounds {' / '.join(f'{x:.2f}' for x in s['rounds_s'])})")
    write_json(args.out, {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(("tiktoken", "tokenizers")),
                          "threads": k, "equality": equality, "scifact_titles_and_texts": speed})
    print(f"wrote {args.out}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
