"""SEAL's scoring: n-gram weights from the model and the FM-index, and their aggregation into documents.

Bevilacqua et al., "Autoregressive Search Engines: Generating Substrings as Document Identifiers"
(NeurIPS 2022), §3.3-3.4; facebookresearch/SEAL `seal/keys.py` (`aggregate_evidence`), whose defaults
and order of operations are followed here:

- weight of an n-gram n with model probability P(n|q) and smoothed corpus frequency
  F(n) = (count(n) + s) / (tokens + s):
      w(n) = max(0, log[P(n|q) (1 - F(n))] - log[F(n) (1 - P(n|q))]) ** alpha      (alpha 2, s 5)
- unigram scores from the first decoding step's distribution: the same log-odds, without the exponent
  (as the reference computes them), for the top 5000 tokens not already keys;
- first stage: every key occurring at most `max_hits` times is located; a document collects each key
  once, only where the key covers corpus positions no higher-weighted key has covered, and each
  contribution is discounted by the coverage rule
      w'(n) = w(n) * (1 - beta + beta * |tokens(n) - covered| / |tokens(n)|)          (beta 0.8)
  in order of decreasing weight;
- full scoring of the `fully_score` best documents: every key (rare or frequent) is matched in the
  document, occurrences are taken greedily by weight without overlaps, repeated occurrences of one key
  add nothing, each new key is discounted by the coverage rule, and unigram scores are added for the
  tokens left uncovered.

`single_key` interpolates towards the score of the single best key (1.0 = no intersective scoring,
the paper's ablation). With `use_index_frequency=False` weights come from the model alone ("LM"
scoring): w(n) = max(0, log P(n|q) - cutoff) ** alpha, cutoff just below the lowest key score.
"""
from __future__ import annotations

import heapq
import math
import re
from collections import defaultdict
from itertools import product
from typing import Callable, Sequence

import numpy as np

from indexes.fmindex import FMIndex

Key = tuple[int, ...]


def log_odds_weight(logprob: float, count: int, n_tokens: int, smoothing: float = 5.0) -> float:
    """log[P (1 - F)] - log[F (1 - P)] with P = exp(logprob), F = (count + s) / (n_tokens + s); not clipped."""
    logprob = min(logprob - 1e-10, -1e-10)  # the reference subtracts 1e-10 so that 1 - P > 0
    log_f = math.log((count + smoothing) / (n_tokens + smoothing))
    return (logprob + math.log1p(-math.exp(log_f))) - (log_f + math.log1p(-math.exp(logprob)))


def ngram_weight(logprob: float, count: int, n_tokens: int, alpha: float = 2.0, smoothing: float = 5.0) -> float:
    """SEAL's w(n): the clipped log-odds of the n-gram under the model versus the corpus, to the power alpha."""
    if count == 0:
        return 0.0
    return max(log_odds_weight(logprob, count, n_tokens, smoothing), 0.0) ** alpha


def coverage_discount(ngram: Sequence[int], weight: float, covered: set[int], beta: float) -> float:
    """The weight left once the tokens already covered by earlier keys are discounted."""
    if not covered:
        return weight
    tokens = set(ngram)
    return weight * (1.0 - beta + beta * len(tokens - covered) / len(tokens))


def query_ngrams(query: str, tokenize: Callable[[str], list[int]], max_words: int = 3) -> list[list[int]]:
    """Word n-grams of the query up to `max_words` long, each in every capitalisation of its words'
    first letters (SEAL's `decompose_query_into_keys`), as token ids; duplicates dropped."""
    words = re.findall(r"\w+|[^\w\s]", query)
    seen: set[Key] = set()
    keys = []
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + max_words) + 1):
            span = words[i:j]
            for upper in product((True, False), repeat=len(span)):
                text = " ".join(w[0].upper() + w[1:] if u else w for u, w in zip(upper, span))
                ids = tuple(tokenize(text))
                if ids and ids not in seen:
                    seen.add(ids)
                    keys.append(list(ids))
    return keys


def unigram_weights(first_logprobs: np.ndarray, index: FMIndex, keys: dict[Key, float], top_k: int = 5000,
                     smoothing: float = 5.0) -> dict[int, float]:
    """{token: weight} for the `top_k` likeliest first tokens that are not keys of length one (reference:
    log-odds clipped at 0, no exponent)."""
    taken = {k[0] for k in keys if len(k) == 1}
    best = np.argsort(-first_logprobs)[:top_k]
    weights = {}
    for token in best.tolist():
        if token in taken:
            continue
        count = index.count([token])
        if count:
            w = max(log_odds_weight(float(first_logprobs[token]), count, index.n_tokens, smoothing), 0.0)
            if w > 0.0:
                weights[token] = w
    return weights


def weigh_keys(keys: dict[Key, float], index: FMIndex, *, alpha: float = 2.0, smoothing: float = 5.0,
               use_index_frequency: bool = True) -> dict[Key, float]:
    """{key: w(key)} for {key: log P(key | query)}; keys absent from the corpus get 0."""
    cutoff = (min(keys.values()) - 0.1) if keys and not use_index_frequency else 0.0
    weights = {}
    for key, logprob in keys.items():
        count = index.count(list(key))
        if count == 0:
            weights[key] = 0.0
        elif use_index_frequency:
            weights[key] = ngram_weight(logprob, count, index.n_tokens, alpha, smoothing)
        else:
            weights[key] = max(logprob - cutoff, 0.0) ** alpha
    return weights


def first_stage(weights: dict[Key, float], index: FMIndex, *, max_hits: int = 1500, beta: float = 0.8
                ) -> dict[int, tuple[float, float]]:
    """{doc: (coverage-discounted score, best single key weight)} from the keys occurring <= max_hits times."""
    rare = sorted(((k, w) for k, w in weights.items() if w > 0.0 and index.count(list(k)) <= max_hits),
                  key=lambda kw: -kw[1])
    covered_positions: set[int] = set()
    found: dict[int, list[tuple[Key, float]]] = defaultdict(list)
    best: dict[int, float] = defaultdict(float)
    for key, weight in rare:
        done: set[int] = set()
        for doc, offset in index.locate(list(key), limit=max_hits):
            # a position in the separated stream, so a title key's boundary is a position of its own
            start = int(index.doc_starts[doc]) + doc + 1 + offset - (1 if key[0] == FMIndex.BOUNDARY else 0)
            span = range(start, start + len(key))
            best[doc] = max(best[doc], weight)
            if any(p in covered_positions for p in span):
                continue
            covered_positions.update(span)
            if doc not in done:
                done.add(doc)
                found[doc].append((key, weight))
    scores = {}
    for doc, items in found.items():
        covered: set[int] = set()
        total = 0.0
        for key, weight in items:
            total += coverage_discount(key, weight, covered, beta)
            covered |= set(key)
        scores[doc] = (total, best[doc])
    for doc in best.keys() - scores.keys():
        scores[doc] = (0.0, best[doc])
    return scores


def locate_in_documents(docs: Sequence[Sequence[int]], weights: dict[Key, float]) -> list[dict[Key, tuple[float, list[tuple[int, int]]]]]:
    """Per document, {key: (weight, [(start, end) of each occurrence])} for the keys of positive weight:
    every key found with array operations over all documents at once (one sort of their tokens), which the
    full scoring of `fully_score` documents needs for every key, rare or frequent."""
    found: list[dict] = [{} for _ in docs]
    keys = [(key, w) for key, w in weights.items() if w > 0.0]
    if not keys or not docs:
        return found
    longest = max(len(k) for k, _ in keys)
    sentinel = np.iinfo(np.int64).min  # between documents and after the last: no key spans two
    lengths = np.array([len(d) for d in docs])
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    flat = np.full(int(lengths.sum() + len(docs) + longest), sentinel, dtype=np.int64)
    for doc_start, tokens in zip(starts, docs):
        flat[doc_start : doc_start + len(tokens)] = tokens
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    for key, weight in keys:
        lo, hi = np.searchsorted(ordered, key[0], side="left"), np.searchsorted(ordered, key[0], side="right")
        at = order[lo:hi]
        for j in range(1, len(key)):
            at = at[flat[at + j] == key[j]]
        if not len(at):
            continue
        doc_of = np.searchsorted(starts, at, side="right") - 1
        for doc, position in zip(doc_of.tolist(), (at - starts[doc_of]).tolist()):
            found[doc].setdefault(key, (weight, []))[1].append((position, position + len(key)))
    return found


def full_score(doc_tokens: Sequence[int], matches: dict[Key, tuple[float, list[tuple[int, int]]]], unigrams: dict[int, float],
               *, beta: float = 0.8, single_key: float = 0.0) -> float:
    """The reference's full re-scoring of one document (tokens prefixed with FMIndex.BOUNDARY), given where
    each key occurs in it (`locate_in_documents`)."""
    heap = [(-w, key, start, end) for key, (w, spans) in matches.items() for start, end in spans]
    heapq.heapify(heap)
    best_single = max((w for w, _ in matches.values()), default=0.0)
    free = [True] * len(doc_tokens)
    covered: set[int] = set()
    taken: list[float] = []
    previous = None
    while heap:
        negative, key, start, end = heapq.heappop(heap)
        score = taken[-1] if key == previous else coverage_discount(key, -negative, covered, beta)
        if score <= 0.0 or not all(free[start:end]):
            continue
        if key != previous:  # a repeated occurrence of the same key marks its tokens but adds nothing
            previous = key
            covered |= set(key)
            taken.append(score)
        free[start:end] = [False] * (end - start)
    unigram_total = 0.0
    if unigrams:
        for token in dict.fromkeys(t for t, f in zip(doc_tokens, free) if f):
            weight = unigrams.get(token, 0.0)
            if weight > 0.0:
                unigram_total += coverage_discount((token,), weight, covered, beta)
    multi = sum(taken) + unigram_total
    return (1.0 - single_key) * multi + single_key * best_single


def rank_documents(keys: dict[Key, float], index: FMIndex, *, unigram_logprobs: np.ndarray | None = None,
                   alpha: float = 2.0, beta: float = 0.8, smoothing: float = 5.0, max_hits: int = 1500,
                   fully_score: int = 1500, single_key: float = 0.0, use_index_frequency: bool = True,
                   top_unigrams: int = 5000, add_best_unigrams: bool = True,
                   keep: Callable[[Key], bool] | None = None) -> dict[int, float]:
    """{doc: score} for the documents SEAL scores, from {key: log P(key|q)} (and first-step log-probs).
    `keep(key)`: only keys (and unigrams) it accepts count (None: all; SEAL's `whole_words` passes one)."""
    if keep is not None:
        keys = {key: score for key, score in keys.items() if keep(key)}
    weights = weigh_keys(keys, index, alpha=alpha, smoothing=smoothing, use_index_frequency=use_index_frequency)
    unigrams: dict[int, float] = {}
    if unigram_logprobs is not None:
        unigrams = unigram_weights(unigram_logprobs, index, keys, top_unigrams, smoothing)
        if keep is not None:
            unigrams = {token: w for token, w in unigrams.items() if keep((token,))}
        if add_best_unigrams:  # the reference adds as many of the best unigrams as there are keys, as keys
            for token in sorted(unigrams, key=lambda t: -unigrams[t])[: len(weights)]:
                weights.setdefault((token,), unigrams[token])
    stage = first_stage(weights, index, max_hits=max_hits, beta=beta)
    order = sorted(stage, key=lambda d: (1.0 - single_key) * -stage[d][0] + single_key * -stage[d][1])
    chosen = order[:fully_score]
    docs = [[FMIndex.BOUNDARY] + index.doc_tokens(doc).tolist() for doc in chosen]
    return {doc: full_score(tokens, matches, unigrams, beta=beta, single_key=single_key)
            for doc, tokens, matches in zip(chosen, docs, locate_in_documents(docs, weights))}
