"""Byte-level BPE through tiktoken: the ids a Hugging Face byte-level BPE tokenizer gives, in less time.

Building SEAL's index tokenises the whole corpus with the key model's tokenizer, and tokenising, not the
FM-index, was the slower half (docs/fmindex.md). For a tokenizer laid out as GPT-2's (ByteLevel pre-tokenizer
with its regex, no normaliser, a BPE model without dropout or word affixes: SmolLM2, GPT-2), tiktoken's
Rust BPE applies the same merges. The two agree on every text when

1. merge k makes a token whose id grows with k, each token made by one merge: tiktoken ranks a pair by the
   id of the token it makes, Hugging Face by the merge's index, so both take the same merge first; and
2. each merged token it keeps, run through the Hugging Face model alone, comes out as itself. tiktoken joins
   any adjacent pair whose concatenation is a token, Hugging Face only listed merges; if an unlisted split
   (x, y) of a token t ever stood side by side inside a word, Hugging Face on t's bytes alone would reach
   (x, y) too (nothing crosses t's span before then) and stop there. Tokens that fail are left out of
   tiktoken's ranks: Hugging Face never outputs them either.

Both are checked when the tokenizer is first used (0.3 s for SmolLM2's 49k tokens). Texts holding
an added token (Hugging Face splits those out first) or a byte the vocabulary lacks (Hugging Face drops it,
then may merge across the gap) go through Hugging Face. Equality on 602,025 texts of ../shared/data and
random Unicode: scripts/check_tiktoken_twin.py, tests/test_tiktoken_bpe.py, docs/fmindex.md.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

# the regex of Hugging Face's ByteLevel pre-tokenizer (use_regex=True), GPT-2's
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (as Hugging Face's ByteLevel maps them) -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


class TiktokenBPE:
    """Encode texts with tiktoken as the Hugging Face fast tokenizer `backend` would (no special tokens)."""

    def __init__(self, backend, encoding, unknown_bytes: bytes, added: list[str]):
        self.backend = backend
        self.encoding = encoding
        self._odd_bytes = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in unknown_bytes) + b"]") if unknown_bytes else None
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    @classmethod
    def for_tokenizer(cls, backend) -> "TiktokenBPE | None":
        """The tiktoken twin of a `tokenizers.Tokenizer`, or None when its layout is not GPT-2's byte-level BPE."""
        try:
            import tiktoken
        except ImportError:
            return None
        spec = json.loads(backend.to_str())
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if (spec.get("normalizer") is not None or model.get("type") != "BPE" or model.get("dropout")
                or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("byte_fallback")
                or model.get("ignore_merges") or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True)
                or pre.get("add_prefix_space")):
            return None
        vocab = model["vocab"]
        merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
        made = [vocab.get(a + b) for a, b in merges]
        if None in made or any(later <= earlier for earlier, later in zip(made, made[1:])):
            return None  # condition 1
        alphabet = byte_alphabet()
        ranks = {bytes([alphabet[ch]]): i for ch, i in vocab.items() if len(ch) == 1 and ch in alphabet}
        for (a, b), i in zip(merges, made):
            token = a + b
            if [t.id for t in backend.model.tokenize(token)] == [i]:  # condition 2
                ranks[bytes(alphabet[ch] for ch in token)] = i
        unknown = bytes(b for b in range(256) if bytes([b]) not in ranks)
        for n, b in enumerate(unknown):  # tiktoken needs every byte; texts holding these go to Hugging Face
            ranks[bytes([b])] = len(vocab) + n
        encoding = tiktoken.Encoding("dengen-byte-level-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
        added = sorted(token.content for token in backend.get_added_tokens_decoder().values())
        return cls(backend, encoding, unknown, added)

    def _needs_backend(self, text: str) -> bool:
        if self._added is not None and self._added.search(text):
            return True
        return self._odd_bytes is not None and self._odd_bytes.search(text.encode("utf-8", "surrogatepass")) is not None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # one thread per core, each over every k-th text (long and short texts spread evenly); tiktoken's own
        # encode_ordinary_batch (a future per text) was erratic and slower (scripts/check_tiktoken_twin.py)
        k = max(1, min(self.threads, len(texts)))
        encode = self.encoding.encode_ordinary
        if k == 1:
            ids = [encode(text) for text in texts]
        else:
            ids = [None] * len(texts)
            with ThreadPoolExecutor(k) as pool:
                for j, part in enumerate(pool.map(lambda j: [encode(text) for text in texts[j::k]], range(k))):
                    ids[j::k] = part
        for i, text in enumerate(texts):
            if self._needs_backend(text):
                ids[i] = self.backend.encode(text, add_special_tokens=False).ids
        return ids
