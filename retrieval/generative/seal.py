"""SEAL: a language model generates n-grams of the corpus, an FM-index turns them into documents.

Bevilacqua et al., "Autoregressive Search Engines: Generating Substrings as Document Identifiers"
(NeurIPS 2022); facebookresearch/SEAL (`seal/retrieval.py`, `seal/keys.py`, `seal/beam_search.py`).

For a query q the model (trained by `training/seal.py`) produces keys, each with log P(key | q):
- body n-grams: beam search from "q || body", constrained by the FM-index (`IndexConstraint`), every
  candidate of every step kept (`KeyRecorder`), as the reference's beam memory does;
- titles: beam search from "q || title", anchored at a document start (FMIndex.BOUNDARY) and complete
  only when the title terminator (the model's eos, stored after each title) is generated;
- query n-grams: the query's word 1-3-grams that occur in the corpus, scored teacher-forced;
- unigram scores from the first step's distribution.
`seal_scoring.rank_documents` weighs them against their corpus frequency and aggregates them.

Documents are stored as `title tokens, eos, body tokens` (only body tokens when the corpus has no titles).
"""
from __future__ import annotations

import functools
import re
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from indexes.docstore import read_docids
from indexes.fm_shards import ShardedFMIndex
from indexes.fmindex import FMIndex
from indexes.manifest import inside
from retrieval.data import Corpus
from retrieval.generative.constrained import IndexConstraint, KeyRecorder, diverse_beam_search
from retrieval.generative.base import GenerativeRetriever
from retrieval.generative.keymodel import KeyModel
from retrieval.generative.seal_scoring import query_ngrams, rank_documents

# options that change only how the saved index is searched (set_search_options), with SEAL's defaults
SEARCH_DEFAULTS = {
    "beam": 15,  # beams for body and title decoding
    "length": 10,  # body n-gram tokens
    "title_length": 15,
    "title_keys": True,  # False: titles are not decoded (no title keys; the decoding steps they cost are saved)
    "constrained": True,  # False: free generation, keys filtered to those in the corpus (ablation)
    "stop_at_count": 0,
    "diverse_groups": 1,  # > 1: diverse beam search (Vijayakumar et al.) with this many groups
    "diverse_penalty": 0.0,  # its Hamming diversity strength
    "query_keys": True,
    "unigram_scores": True,
    "single_key": 0.0,  # 1.0: score by the best key only, no intersective aggregation (ablation)
    "use_index_frequency": True,  # False: weights from the model alone, "LM" scoring (ablation)
    "whole_words": False,  # True: only keys that end a word somewhere in the corpus count (not in the reference)
    "content_keys": False,  # True: keys and unigrams made only of stopwords and punctuation count nothing (not in the reference)
    "alpha": 2.0,
    "beta": 0.8,
    "smoothing": 5.0,
    "max_hits": 1500,
    "fully_score": 1500,
    "batch_size": 8,
    "dtype": "float32",  # "bfloat16": the key model's forward passes in bf16 (faster on CPUs with bf16 units)
}


@functools.cache
def stopwords() -> frozenset[str]:
    """English stopwords (scikit-learn's list stands in for NLTK's, which needs a download)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


class SEALRetriever(GenerativeRetriever):
    """Generative retrieval with n-gram identifiers over an FM-index.

    Args:
        model: a folder saved by `training/seal.py` (KeyModel), or an untrained model: a registry name
            ("smollm2-135m", the default: zero-shot SEAL), a Hugging Face folder, or "bert2bert" (tests).
        titles: "auto" (use titles when the corpus has any), True or False.
        prompt: the key model's layout (`keymodel.LAYOUTS` name or template dict; None: the model's own).
            `model="smollm2-135m", prompt="oneshot"` is zero-shot SEAL: an untrained LM asked in a prompt.
        **search: any of SEARCH_DEFAULTS.

    Example:
        >>> r = build_retriever("seal", model="results/seal-scifact/model")
        >>> r.index(corpus); r.save("runs/seal")
        >>> load_retriever("runs/seal").search({"q1": "aspirin and heart attacks"}, k=10)
    """

    kind = "seal"
    method = "SEAL"
    engines = ("local", "ray")  # ray: FM-index shards built as Ray tasks
    index_options = ("shards", "ray_address")
    search_defaults = SEARCH_DEFAULTS

    def __init__(self, model: str = "smollm2-135m", titles: str | bool = "auto", prompt: str | dict | None = None,
                 **search):
        super().__init__(model, search, titles=titles, prompt=prompt)
        self.fm: FMIndex | None = None
        self.doc_ids: list[str] = []
        self.uses_titles = False
        self._first: dict = {}  # first-step log-probabilities of the sources generate_keys read last
        self._content: dict = {}  # key -> has_content(key), cached across queries

    # ------------------------------------------------------------------ indexing
    def doc_stream(self, title: str, text: str) -> list[int]:
        km = self.keymodel
        body = km.tokens(text)
        return km.tokens(title) + [km.eos_id] + body if self.uses_titles else body

    def doc_streams(self, corpus: Corpus, chunk: int = 1024):
        """`doc_stream` of every document, tokenised a chunk of documents per tokenizer call."""
        km = self.keymodel
        docs = iter(tqdm(corpus, desc="SEAL tokenising", unit="doc", mininterval=1.0))
        while batch := list(islice(docs, chunk)):
            if self.uses_titles:  # titles and texts in one call
                ids = km.tokens_batch([d.title for d in batch] + [d.text for d in batch])
                yield from (title + [km.eos_id] + body for title, body in zip(ids[: len(batch)], ids[len(batch) :]))
            else:
                yield from km.tokens_batch([d.text for d in batch])

    def decide_titles(self, corpus: Corpus) -> None:
        """Store titles in the stream when configured, or ("auto") when the corpus has any."""
        titles = self.config["titles"]
        self.uses_titles = any(d.title.strip() for d in corpus) if titles == "auto" else bool(titles)

    def _index(self, corpus: Corpus, engine: str = "local", shards: int | None = None, ray_address: str | None = None) -> None:
        """shards: build the FM-index as that many shards of successive documents (`ShardedFMIndex`: counts,
        next tokens and locations merge exactly, so keys, constraints and scores are the same). engine "ray"
        tokenises here and builds the shards as Ray tasks at `ray_address` (None: a local Ray); its shards
        default to one per CPU of the cluster."""
        if shards is not None and not 1 <= shards <= len(corpus):
            raise ValueError(f"shards={shards}: choose 1..{len(corpus)} (one shard needs at least one document)")
        self.decide_titles(corpus)
        docs = self.doc_streams(corpus)
        if engine == "ray":
            from retrieval.ray_engine import build_fm_on_ray

            self.fm = build_fm_on_ray(list(docs), shards, address=ray_address)
        else:
            self.fm = ShardedFMIndex.build(docs, shards) if shards and shards > 1 else FMIndex.build(docs)
        self.doc_ids = list(corpus.ids)

    # ------------------------------------------------------------------ search
    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        ids = list(queries)
        size = self.config["batch_size"]
        run = {}
        for start in tqdm(range(0, len(ids), size), desc="SEAL search", unit="batch", mininterval=1.0,
                          disable=len(ids) <= size):
            batch = ids[start : start + size]
            for qid, keys in zip(batch, self.generate_keys([queries[q] for q in batch])):
                run[qid] = self.rank(queries[qid], keys, k)
        return run

    def rank(self, query: str, keys: dict[tuple[int, ...], float], k: int) -> dict[str, float]:
        """{doc id: score} of the top `k` documents for `query` given its keys (from `generate_keys`)."""
        first = None
        if self.config["unigram_scores"]:
            source = f"{query} || body"
            first = self._first.pop(source, None)  # kept by generate_keys, which read this source already
            if first is None:
                self.keymodel.set_dtype(self.config["dtype"])
                first = self.keymodel.first_token_logprobs(source)
        if not self.config["title_keys"]:  # keys generated with titles, ranked as if titles were off (dev choices)
            keys = {key: score for key, score in keys.items() if key[0] != FMIndex.BOUNDARY}
        index, ids = self.ranked_units()
        top = sorted(self.score_keys(keys, first, index).items(), key=lambda item: -item[1])[:k]
        return {ids[doc]: float(score) for doc, score in top}

    def ranked_units(self) -> tuple:
        """The index whose documents are ranked, and their ids (UGR ranks a finer view of the same index)."""
        return self.fm, self.doc_ids

    def score_keys(self, keys: dict[tuple[int, ...], float], first_logprobs, index) -> dict[int, float]:
        c = self.config
        return rank_documents(
            keys, index, unigram_logprobs=first_logprobs, alpha=c["alpha"], beta=c["beta"], smoothing=c["smoothing"],
            max_hits=c["max_hits"], fully_score=c["fully_score"], single_key=c["single_key"],
            use_index_frequency=c["use_index_frequency"], keep=self.key_filter(),
        )

    def key_filter(self):
        """The test a key must pass to count (None: every key counts, as in the reference)."""
        tests = [t for t, on in ((self.ends_word, self.config["whole_words"]), (self.has_content, self.config["content_keys"])) if on]
        if not tests:
            return None
        return lambda key: all(test(key) for test in tests)

    def has_content(self, key: tuple[int, ...]) -> bool:
        """Whether `key` spells a word that is not an English stopword (" the", " of a", "," spell none): an
        untrained model puts weight on such keys, and in a small corpus their log-odds rival a content word's."""
        known = self._content.get(key)
        if known is None:
            words = re.findall(r"\w+", self.keymodel.tokenizer.decode([t for t in key if t >= 0]).lower())
            known = self._content[key] = any(w not in stopwords() for w in words)
            if len(self._content) > 1_000_000:  # keys of many queries: start again rather than grow
                self._content.clear()
        return known

    def ends_word(self, key: tuple[int, ...]) -> bool:
        """Whether `key` ends a word somewhere in the corpus: an occurrence is followed by a token that starts
        a word (or ends the document). " Qu" (of " Quokkas", " Quilts", " Quiches") ends none."""
        following = self.fm.next_tokens(list(key))
        if sum(following.values()) < self.fm.count(list(key)):
            return True  # an occurrence ends its document
        continues = self.keymodel.continues_word
        return any(not continues[t] for t in following if 0 <= t < len(continues))

    def generate_keys(self, queries: list[str]) -> list[dict[tuple[int, ...], float]]:
        """{key: log P(key | query)} per query: body n-grams, then query n-grams, then titles (first kept).
        Queries are read in batches of `batch_size`; each source is read once for all its keys."""
        size = self.config["batch_size"]
        return [keys for start in range(0, len(queries), size) for keys in self._batch_keys(queries[start : start + size])]

    def _batch_keys(self, queries: list[str]) -> list[dict[tuple[int, ...], float]]:
        km, c, fm = self.keymodel, self.config, self.fm
        km.set_dtype(c["dtype"])
        found: list[dict[tuple[int, ...], float]] = [{} for _ in queries]
        bodies = len(queries)

        # body and title sources read and decoded together: one forward pass per step serves both, so a lone
        # query makes 15 passes instead of 10 + 15 (on a CPU a pass over 10 rows costs about what 5 rows do)
        sources = [f"{q} || body" for q in queries] + ([f"{q} || title" for q in queries] if self.uses_titles and c["title_keys"] else [])
        titles = len(sources) - bodies
        context = km.context(sources)
        self._first = {s: context.first[i].numpy() for i, s in enumerate(sources[:bodies])}
        decoded = self._decode(context, [()] * bodies + [(FMIndex.BOUNDARY,)] * titles,
                               [c["length"]] * bodies + [c["title_length"]] * titles)
        for keys, new in zip(found, decoded[:bodies]):
            for key, score in new.items():
                key = key[:-1] if key[-1] == km.eos_id else key
                if key and key not in keys and fm.count(list(key)) > 0:
                    keys[key] = score

        if c["query_keys"]:
            for row, (q, keys) in enumerate(zip(queries, found)):
                extra = [tuple(n) for n in query_ngrams(q, km.tokens) if tuple(n) not in keys and fm.count(n) > 0]
                if extra:
                    scores = km.score_keys(sources[row], [list(n) for n in extra], context=context, row=row)
                    keys.update(zip(extra, scores))

        for keys, new in zip(found, decoded[bodies:]):
            for key, score in new.items():
                if key[-1] != km.eos_id:
                    continue  # partial titles are not keys (the reference's default)
                key = (FMIndex.BOUNDARY,) + key
                if key not in keys and fm.count(list(key)) > 0:
                    keys[key] = score
        return found

    def _decode(self, context, anchors: list[tuple[int, ...]], lengths: list[int]):
        """{key: log P} per source of `context`, every candidate of the beam search; source i's keys start after
        `anchors[i]` in the corpus and run up to `lengths[i]` tokens. eos is allowed only where the corpus has
        it next (after a title), so body keys run to their length unless the corpus ends."""
        km, c = self.keymodel, self.config
        constraints = {}
        if c["constrained"]:
            constraints = {anchor: IndexConstraint(self.fm, km.eos_id, force_prefix=anchor, stop_at_count=c["stop_at_count"],
                                                   vocab_size=km.vocab_size) for anchor in set(anchors)}
        if km.causal or c["diverse_groups"] > 1:  # the prompt's cache read once, one token per beam and step
            allowed = (lambda b, prefix: constraints[anchors[b]](b, prefix)) if constraints else None
            return diverse_beam_search(km, context, num_beams=c["beam"], groups=c["diverse_groups"],
                                       penalty=c["diverse_penalty"], max_new_tokens=lengths, allowed=allowed)
        # seq2seq: generate's incremental decoder cache beats re-running the short prefixes (bench_keymodel.py);
        # one call per (anchor, length), as generate takes one constraint and one length
        keys: list[dict] = [{} for _ in anchors]
        for anchor, length in dict.fromkeys(zip(anchors, lengths)):
            rows = [i for i, part in enumerate(zip(anchors, lengths)) if part == (anchor, length)]
            recorder = KeyRecorder(c["beam"], km.eos_id, km.pad_id)
            km.generate([context.sources[i] for i in rows], num_beams=c["beam"], max_new_tokens=length,
                        allowed=constraints.get(anchor), recorder=recorder)
            for i, found in zip(rows, recorder.keys):
                keys[i] = found
        return keys

    # ------------------------------------------------------------------ persistence
    def _save_files(self, folder: Path) -> dict:
        shards = self.fm.shards if isinstance(self.fm, ShardedFMIndex) else [self.fm]
        names = ["fmindex"] if len(shards) == 1 else [f"fmindex/shard-{i:05d}" for i in range(len(shards))]
        for shard, name in zip(shards, names):
            (folder / name).mkdir(parents=True)
            shard.write_arrays(folder / name)
        self.keymodel.save(folder / "model")
        self._write_docstore(folder)
        return {"engine": "fm-index (pydivsufsort + wavelet-matrix)", "n_tokens": self.fm.n_tokens,
                "uses_titles": self.uses_titles, "backbone": self.keymodel.backbone, "layout": self.keymodel.layout_name,
                **({"fm_shards": names} if len(shards) > 1 else {})}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        if "fm_shards" in manifest:
            self.fm = ShardedFMIndex([FMIndex.read_arrays(inside(folder, manifest, name)) for name in manifest["fm_shards"]])
        else:
            self.fm = FMIndex.read_arrays(folder / "fmindex")
        self._keymodel = KeyModel.load(folder / "model")
        self.doc_ids = read_docids(folder)
        self.uses_titles = manifest["uses_titles"]
