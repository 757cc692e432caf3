"""Constrained decoding over an FM-index: every generated sequence is an n-gram of the corpus.

`IndexConstraint` is a `prefix_allowed_tokens_fn` for Hugging Face `generate` (beam search, any seq2seq
or causal LM): the allowed next tokens of a generated prefix are the tokens that follow it somewhere in
the corpus (`FMIndex.next_tokens`). Row ranges are cached per prefix, so each step costs one
backward-search step per beam. SEAL's stop-at-count rule ends a hypothesis once its n-gram occurs at
most `stop_at_count` times (it already identifies few documents). With `force_prefix` the n-gram is
anchored, e.g. `[FMIndex.BOUNDARY]` makes titles start at a document start, as SEAL's title decoding does.

`KeyRecorder` keeps every partial hypothesis the beam search considers (the top 2 x beams candidates
of each step), as SEAL's `BeamSearchScorerWithMemory` does: these, not only the final beams, are the
n-gram keys, each with its exact log-probability under the model (the masking only removes tokens).
"""
from __future__ import annotations

from indexes.fmindex import FMIndex
from retrieval.generative.keymodel import SourceContext


class IndexConstraint:
    """Allowed next tokens of a generated prefix under an FM-index.

    Args:
        index: the corpus FM-index (token ids of the model's tokenizer), or a ShardedFMIndex.
        eos_id: end-of-sequence id; allowed only where the corpus has it next (e.g. after a title) or
            when `allow_eos`, and forced when nothing else may follow.
        force_prefix: tokens the n-gram must start with, not generated (e.g. `[FMIndex.BOUNDARY]`).
        stop_at_count: end a hypothesis when its n-gram count drops to this or below (0: never).
        allow_eos: let a hypothesis end anywhere.
        vocab_size: ids at or above it are never allowed (index tokens outside the model's vocabulary).
    """

    def __init__(self, index: FMIndex, eos_id: int, *, force_prefix: tuple[int, ...] = (), stop_at_count: int = 0,
                 allow_eos: bool = False, vocab_size: int | None = None):
        self.index = index
        self.eos_id = eos_id
        self.stop_at_count = stop_at_count
        self.allow_eos = allow_eos
        self.vocab_size = vocab_size
        self.force_prefix = tuple(force_prefix)
        self._rows: dict[tuple[int, ...], tuple] = {(): index.range(self.force_prefix)}
        self._allowed: dict[tuple[int, ...], list[int]] = {}

    def rows(self, prefix: tuple[int, ...]) -> tuple:
        """FM-index rows of force_prefix + prefix, extending the cached rows of its parent by one token."""
        found = self._rows.get(prefix)
        if found is None:
            found = self.index.extend(self.rows(prefix[:-1]), prefix[-1])
            self._rows[prefix] = found
        return found

    def __call__(self, batch_id: int, generated: list[int]) -> list[int]:
        prefix = tuple(generated)
        if prefix and prefix[-1] == self.eos_id:
            return [self.eos_id]  # a finished hypothesis: beam search pads it
        allowed = self._allowed.get(prefix)
        if allowed is None:
            allowed = self._next(prefix)
            self._allowed[prefix] = allowed
        return allowed

    def _next(self, prefix: tuple[int, ...]) -> list[int]:
        rows = self.rows(prefix)
        if prefix and self.stop_at_count and self.index.rows_count(rows) <= self.stop_at_count:
            return [self.eos_id]
        tokens = [t for t in self.index.next_tokens((), row_range=rows)
                  if self.vocab_size is None or t < self.vocab_size]
        if self.allow_eos and self.eos_id not in tokens:
            tokens.append(self.eos_id)
        return tokens or [self.eos_id]


class KeyRecorder:
    """A LogitsProcessor that records the candidate hypotheses of each beam-search step with their scores.

    Put it last in the processor list, after the constraint: it sees masked log-probabilities. After
    `generate`, `keys[b]` maps each candidate n-gram (generated ids) of batch item `b` to
    log P(n-gram | source). Keys that end in eos are complete (a whole title)."""

    def __init__(self, num_beams: int, eos_id: int, pad_id: int):
        self.num_beams = num_beams
        self.offset = 0  # column where generated ids start in input_ids; KeyModel.generate sets it
        self.eos_id, self.pad_id = eos_id, pad_id
        self.keys: list[dict[tuple[int, ...], float]] = []

    def __call__(self, input_ids, scores):
        import torch

        batch = input_ids.shape[0] // self.num_beams
        if not self.keys:
            self.keys = [{} for _ in range(batch)]
        vocab = scores.shape[1]
        for b in range(batch):
            rows = {}  # distinct running prefixes (at the first step every beam is the same empty one)
            for r in range(b * self.num_beams, (b + 1) * self.num_beams):
                rows.setdefault(tuple(input_ids[r, self.offset :].tolist()), r)
            prefixes = list(rows)
            base = torch.tensor([self._cumulative(b, p) for p in prefixes], dtype=scores.dtype)
            totals = (scores[list(rows.values())] + base[:, None]).flatten()
            best = torch.topk(totals, min(2 * self.num_beams, totals.numel()))
            for value, flat in zip(best.values.tolist(), best.indices.tolist()):
                if value == float("-inf"):
                    break
                prefix, token = prefixes[flat // vocab], flat % vocab
                if self.eos_id in prefix or token == self.pad_id != self.eos_id:
                    continue
                self.keys[b][prefix + (token,)] = value  # a key ending in eos is a complete one (a title)
        return scores

    def _cumulative(self, b: int, prefix: tuple[int, ...]) -> float:
        if not prefix:
            return 0.0
        return self.keys[b].get(prefix, float("-inf"))


def diverse_beam_search(keymodel, sources: "list[str] | SourceContext", *, num_beams: int, groups: int = 1, penalty: float = 0.0,
                        max_new_tokens: "int | list[int]", allowed=None) -> list[dict[tuple[int, ...], float]]:
    """Diverse beam search (Vijayakumar et al., AAAI 2018) with Hamming diversity; returns the keys.

    The beams split into `groups` groups searched one after another at each step; a group's candidates
    lose `penalty` for each time a previous group chose the same token at this step (the penalised
    scores decide the beams, as in the paper). Keys are recorded as `KeyRecorder` does: the top
    2 x group-size candidates of every group and step, with their true log-probabilities. With one
    group and no penalty this is beam search (the tests check it against Hugging Face's).
    `max_new_tokens` is one length for all sources or one per source (sources of different lengths share
    each step's forward pass until the shorter ones stop).

    Hugging Face `generate` moved group beam search to a hub repository (unreachable offline), hence this
    loop. Each source is read once (`KeyModel.context`: the prompt's key/value cache, or the encoder
    states) and each step feeds only each beam's newest token (`KeyModel.extend`), so the prompt is
    never re-read per beam or step as `generate` does it. SEAL decodes causal key models with this loop
    (groups=1 is beam search) for that reason; seq2seq ones go through `generate` unless groups > 1.
    """
    import torch

    if num_beams % groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of groups ({groups})")
    size = num_beams // groups
    eos = keymodel.eos_id
    context = sources if isinstance(sources, SourceContext) else keymodel.context(sources)
    sources = context.sources
    keys: list[dict[tuple[int, ...], float]] = [{} for _ in sources]
    limits = [max_new_tokens] * len(sources) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    # per source and group: running beams as (prefix, penalised score, log-probability)
    beams = [[[((), 0.0, 0.0)] for _ in range(groups)] for _ in sources]
    state = keymodel.decoding_state(context)  # one row per source; then one per running beam
    state_row = {(b, g, ()): b for b in range(len(sources)) for g in range(groups)}  # a beam's row in `state`
    for step_number in range(max(limits, default=0)):
        live = [b for b in range(len(sources)) if step_number < limits[b]]
        rows = [(b, g, beam) for b in live for g in range(groups) for beam in beams[b][g]]
        if not rows:
            break
        if step_number == 0:
            logprobs = context.first[[b for b, _, _ in rows]].clone()
        else:  # each beam's parent row, extended by the beam's last token
            parents = [state_row[(b, g, beam[0][:-1])] for b, g, beam in rows]
            logprobs, state = keymodel.extend(state, parents, [beam[0][-1] for _, _, beam in rows])
        if allowed is not None:
            mask = torch.full_like(logprobs, float("-inf"))
            for i, (b, _, beam) in enumerate(rows):
                mask[i, allowed(b, list(beam[0]))] = 0.0
            logprobs = logprobs + mask
        if step_number == 0:
            logprobs[:, eos] = float("-inf")  # an empty key means nothing (generate's min_new_tokens=1)
        row_of = {(b, g, beam[0]): i for i, (b, g, beam) in enumerate(rows)}
        if step_number > 0:
            state_row = row_of  # `state` now holds this step's rows
        for b in live:
            chosen = torch.zeros(logprobs.shape[1])
            for g in range(groups):
                running = beams[b][g]
                if not running:
                    continue
                index = [row_of[(b, g, beam[0])] for beam in running]
                step = logprobs[index]
                penalised = step - penalty * chosen
                totals = penalised + torch.tensor([beam[1] for beam in running])[:, None]
                best = torch.topk(totals.flatten(), min(2 * size, int(torch.isfinite(totals).sum())))
                vocab = step.shape[1]
                following = []
                for value, flat in zip(best.values.tolist(), best.indices.tolist()):
                    parent, token = running[flat // vocab], flat % vocab
                    logprob = parent[2] + float(step[flat // vocab, token])
                    prefix = parent[0] + (token,)
                    keys[b].setdefault(prefix, logprob)
                    if token != eos and len(following) < size:
                        following.append((prefix, value, logprob))
                        chosen[token] += 1
                beams[b][g] = following
    return keys
