"""Constrained decoding over a title trie: every generated title is a title of the corpus.

`TitleConstraint` is a `prefix_allowed_tokens_fn` for Hugging Face `generate` (and for
`KeyModel.generate(allowed=...)`), as GENRE and CorpusBrain decode: the allowed next tokens of a
generated prefix are `TitleTrie.next_tokens` of the title being generated.

Single title (no `separator_id`): the output is one title followed by `end_id`; once `end_id` is out the
hypothesis is finished and only `eos_id` is allowed (when `end_id == eos_id`, generation stops there).

Several titles (`separator_id` given, at most `max_titles`): the output is titles joined by the
separator, as CorpusBrain's targets are (`utils/preprocess_corpus.py` writes `title + ' |' + ' |'.join(
anchor_titles)`) and as its `genre/wiki_title_trie.py` decodes them: the title being generated is the part
after the last separator, looked up in the trie from its root. The two cases of `end_id`:

- `end_id == eos_id` (the usual case, and CorpusBrain's: its trie keys end in eos): wherever a title
  may end, the separator is allowed too and stands in for the terminator (``A | B <eos>``), exactly
  CorpusBrain's rule "if EOS is allowed, append the split token". Once `max_titles` titles are started,
  the separator is no longer offered, so the last one can only end with eos.
- `end_id != eos_id`: every title is closed by `end_id`; after it the model may emit the separator (the
  next title starts at the trie's root) or `eos_id` to stop (``A <end> | B <end> <eos>``); after
  `max_titles` titles only `eos_id`.

CorpusBrain offers the separator without a limit on titles; `max_titles` is ours (None: no limit).
"""
from __future__ import annotations

from typing import Sequence

from indexes.titletrie import TitleTrie


class TitleConstraint:
    """Allowed next tokens of a generated prefix: continuations of corpus titles.

    Args:
        trie: the titles (token ids of the model's tokenizer), each stored with the terminator `trie.end_id`;
            no title may contain `eos_id` or `separator_id` (generation stops at eos; the separator splits).
        eos_id: the model's end-of-sequence id (may equal `trie.end_id`).
        separator_id: joins titles in multi-title output (None: a single title).
        max_titles: at most this many titles per output when `separator_id` is given (None: no limit).

    Example:
        >>> trie = TitleTrie.build([[5, 6], [5, 6, 7], [8]], end_id=2)
        >>> one = TitleConstraint(trie, eos_id=2)
        >>> one(0, []), one(0, [5, 6]), one(0, [5, 6, 2])
        ([5, 8], [2, 7], [2])
        >>> many = TitleConstraint(trie, eos_id=2, separator_id=3, max_titles=2)
        >>> many(0, [5, 6]), many(0, [5, 6, 3]), many(0, [5, 6, 3, 8])
        ([2, 3, 7], [5, 8], [2])
        >>> many.split_titles([5, 6, 3, 8, 2])
        [(5, 6), (8,)]
    """

    def __init__(self, trie: TitleTrie, eos_id: int, *, separator_id: int | None = None, max_titles: int | None = None):
        if separator_id is not None and separator_id in (trie.end_id, eos_id):
            raise ValueError(f"separator_id {separator_id} must differ from end_id ({trie.end_id}) and eos_id ({eos_id})")
        if max_titles is not None and max_titles < 1:
            raise ValueError(f"max_titles must be at least 1, got {max_titles}")
        if separator_id is None and max_titles not in (None, 1):
            raise ValueError("max_titles > 1 needs a separator_id")
        self.trie = trie
        self.eos_id = int(eos_id)
        self.end_id = trie.end_id
        self.separator_id = separator_id
        self.max_titles = 1 if separator_id is None else max_titles

    def _more_titles(self, started: int) -> bool:
        """May another title follow, given `started` titles so far?"""
        return self.separator_id is not None and (self.max_titles is None or started < self.max_titles)

    def __call__(self, batch_id: int, generated: Sequence[int]) -> list[int]:
        generated = list(generated)
        if self.eos_id in generated:
            return [self.eos_id]  # a finished hypothesis: beam search pads it
        start, started = 0, 1  # where the current title starts; titles begun so far (this one included)
        if self.separator_id is not None:
            for i, token in enumerate(generated):
                if token == self.separator_id:
                    start, started = i + 1, started + 1
        current = generated[start:]
        if current and current[-1] == self.end_id:  # only when end_id != eos_id: a closed title
            return [self.eos_id, self.separator_id] if self._more_titles(started) else [self.eos_id]
        allowed = self.trie.next_tokens(current)
        if not allowed:
            return [self.eos_id]  # not a title prefix (unreachable under this constraint): stop
        if self.end_id == self.eos_id and self.end_id in allowed and self._more_titles(started):
            allowed = sorted([*allowed, self.separator_id])  # a copy: the trie's list is its cache
        return allowed

    def split_titles(self, generated: Sequence[int], *, finished: bool = False) -> list[tuple[int, ...]]:
        """The complete titles of a generated sequence, in order.

        A title is complete when its terminator follows it (`end_id`, or the separator where `end_id ==
        eos_id`). With `finished` the sequence is taken as ended: a trailing unterminated part counts when
        it is a whole title of the trie (for `KeyModel.generate` output, which strips the final eos).
        Parts that are not titles of the trie are not returned."""
        titles: list[tuple[int, ...]] = []
        part: list[int] = []
        closes = {self.end_id}
        if self.separator_id is not None and self.end_id == self.eos_id:
            closes.add(self.separator_id)
        for token in generated:
            if token in closes:
                if part and tuple(part) in self.trie:
                    titles.append(tuple(part))
                part = []
                if token == self.eos_id:
                    break
            elif token == self.eos_id:
                break
            elif token == self.separator_id:
                part = []  # after end_id; a separator straight after a title has nothing pending
            else:
                part.append(token)
        else:
            if finished and part and tuple(part) in self.trie:
                titles.append(tuple(part))
        return titles
