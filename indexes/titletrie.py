"""A prefix trie of tokenized titles for constrained title generation (GENRE, CorpusBrain).

GENRE (De Cao et al., ICLR 2021) and CorpusBrain (Chen et al., CIKM 2022) retrieve a document by
generating its title token by token; at each step only the tokens that continue some title of the corpus
are allowed. `TitleTrie` answers that question, `next_tokens(prefix)`, over a set of titles given as
token-id sequences.

Storage is a `marisa_trie.Trie` (a compact, memory-mappable succinct trie over strings), as in GENRE's
`MarisaTrie`: each token id becomes one unicode character and each title one string, terminated by the
character of `end_id`, so that "A" and "A B" are both titles (after "A" the allowed tokens are `end_id`
and "B"). The allowed next tokens of a prefix are the characters that follow its string in the keys
stored under it; every answer is cached per prefix.

Encoding: token id t is the character chr(t + offset), moved up by 0x800 from 0xD800 on, so that it
skips the UTF-16 surrogate range U+D800..U+DFFF (lone surrogates cannot be encoded to UTF-8, which is
how marisa-trie stores keys). GENRE does the same with a different gap: ids below 55,000 map to chr(id)
and ids from 55,000 on to chr(id + 10,000). The largest storable id is 0x10FFFF - 0x800 - offset
(1,112,063 with the default offset 0). The offset is written into the manifest and read back at load.

On disk (`save`): a folder written atomically by `indexes.manifest.write_index_dir` holding
`titles.marisa` (marisa's own format, memory-mapped by `load`) and `manifest.json` (kind "titletrie",
n_titles, end_id, encoding_offset, checksums).

Example:
    >>> trie = TitleTrie.build([[5, 6], [5, 6, 7], [8]], end_id=2)
    >>> trie.next_tokens([]), trie.next_tokens([5, 6]), trie.next_tokens([9])
    ([5, 8], [2, 7], [])
    >>> [5, 6] in trie, len(trie)
    (True, 3)
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Iterator, Sequence

from indexes.manifest import IndexLoadError, open_index, write_index_dir

KIND = "titletrie"
TRIE_FILE = "titles.marisa"
OFFSET = 0  # token id t -> chr(t + OFFSET) (surrogates skipped); stored in the manifest
SURROGATE_START, SURROGATE_SIZE = 0xD800, 0x800
MAX_CODEPOINT = 0x10FFFF


def max_token_id(offset: int = OFFSET) -> int:
    """The largest token id the encoding can store."""
    return MAX_CODEPOINT - SURROGATE_SIZE - offset


def encode_id(token: int, offset: int = OFFSET) -> str:
    code = token + offset
    if code >= SURROGATE_START:
        code += SURROGATE_SIZE  # skip U+D800..U+DFFF: lone surrogates have no UTF-8 form
    return chr(code)


def decode_char(char: str, offset: int = OFFSET) -> int:
    code = ord(char)
    if code >= SURROGATE_START + SURROGATE_SIZE:
        code -= SURROGATE_SIZE
    return code - offset


class TitleTrie:
    """The set of titles (token-id sequences) and, for any title prefix, the tokens that may follow it.

    Build with `TitleTrie.build(titles, end_id=...)` or load a saved one with `TitleTrie.load(folder)`.

    Args:
        trie: a `marisa_trie.Trie` whose keys are encoded titles, each ending in the character of `end_id`.
        end_id: the terminator id stored after every title (often the model's eos id).
        offset: the encoding offset the keys were written with.
    """

    def __init__(self, trie, end_id: int, offset: int = OFFSET):
        self._trie = trie
        self.end_id = int(end_id)
        self.offset = int(offset)
        self._end_char = encode_id(self.end_id, self.offset)
        self._cache: dict[tuple[int, ...], list[int]] = {}

    # ---- construction ---------------------------------------------------------------------------------

    @classmethod
    def build(cls, titles: Sequence[Sequence[int]], *, end_id: int, offset: int = OFFSET) -> "TitleTrie":
        """A trie over `titles` (token ids, without a terminator; duplicates are stored once).

        Raises ValueError naming the title's position for an empty title, an id that is not a
        non-negative integer or exceeds `max_token_id(offset)`, or a title that contains `end_id`."""
        import marisa_trie

        limit = max_token_id(offset)
        end_id = _check_id(end_id, limit, "end_id")
        keys = []
        for position, title in enumerate(titles):
            if len(title) == 0:
                raise ValueError(f"title {position}: empty (every title needs at least one token)")
            chars = []
            for token in title:
                token = _check_id(token, limit, f"title {position}")
                if token == end_id:
                    raise ValueError(f"title {position}: contains the terminator id end_id={end_id}; "
                                     "a title would end inside it")
                chars.append(encode_id(token, offset))
            chars.append(encode_id(end_id, offset))
            keys.append("".join(chars))
        return cls(marisa_trie.Trie(keys), end_id, offset)

    # ---- queries --------------------------------------------------------------------------------------

    def _encode(self, ids: Sequence[int]) -> str | None:
        """The key string of `ids`, or None when some id cannot be a stored token (it matches nothing)."""
        limit = max_token_id(self.offset)
        chars = []
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, numbers.Integral) or not 0 <= token <= limit:
                return None
            chars.append(encode_id(int(token), self.offset))
        return "".join(chars)

    def next_tokens(self, prefix: Sequence[int], *, cache: bool = True) -> list[int]:
        """Sorted ids that may follow `prefix` (a title's first tokens): `end_id` where a title ends there.

        [] when `prefix` begins no title (or already ends with `end_id`). Answers are cached per prefix and
        the cached list is returned: do not modify it. `cache=False` computes afresh (benchmarks). Ids are
        ints (a list, tuple, numpy array or tensor of them); an id no title can hold matches nothing."""
        if not isinstance(prefix, (list, tuple)):
            prefix = prefix.tolist() if hasattr(prefix, "tolist") else list(prefix)  # tensors, arrays
        key = tuple(prefix)
        if cache:
            found = self._cache.get(key)
            if found is not None:
                return found
        encoded = self._encode(key)
        if encoded is None:
            return []  # not cached: a prefix with an impossible id is not worth remembering
        depth = len(encoded)
        # every stored key ends in the terminator, so a key under `encoded` is longer than it unless
        # `encoded` is itself a whole key (title + end_id), after which nothing may follow
        chars = {k[depth] for k in self._trie.iterkeys(encoded) if len(k) > depth}
        allowed = sorted(decode_char(c, self.offset) for c in chars)
        if cache:
            self._cache[key] = allowed
        return allowed

    def clear_cache(self) -> None:
        self._cache.clear()

    def __contains__(self, title_ids) -> bool:
        encoded = self._encode(title_ids)
        return encoded is not None and len(encoded) > 0 and (encoded + self._end_char) in self._trie

    def __len__(self) -> int:
        return len(self._trie)

    def titles(self) -> Iterator[tuple[int, ...]]:
        """Every stored title as a tuple of ids (terminator removed), in the trie's order (not sorted)."""
        for key in self._trie.iterkeys():
            yield tuple(decode_char(c, self.offset) for c in key[:-1])

    def __repr__(self) -> str:
        return f"TitleTrie({len(self)} titles, end_id={self.end_id})"

    # ---- persistence ----------------------------------------------------------------------------------

    def write(self, folder: str | Path) -> dict:
        """Write the trie file into an existing folder; returns the manifest fields `read` needs."""
        self._trie.save(str(Path(folder) / TRIE_FILE))
        return {"n_titles": len(self), "end_id": self.end_id, "encoding_offset": self.offset,
                "encoding": "chr(id + encoding_offset), plus 0x800 from U+D800 on (surrogates skipped)"}

    @classmethod
    def read(cls, folder: str | Path, fields: dict) -> "TitleTrie":
        """Open the trie file of `folder`, memory-mapped, checked against the manifest `fields` of `write`."""
        import marisa_trie

        for field in ("n_titles", "end_id", "encoding_offset"):
            if field not in fields:
                raise IndexLoadError(f"{folder}: manifest lacks the field {field!r}")
        trie = marisa_trie.Trie()
        try:
            trie.mmap(str(Path(folder) / TRIE_FILE))
        except Exception as err:  # marisa raises plain exceptions for a damaged or missing file
            raise IndexLoadError(f"{Path(folder) / TRIE_FILE}: not a readable marisa trie ({err})") from None
        if len(trie) != fields["n_titles"]:
            raise IndexLoadError(f"{folder}: {len(trie)} titles in {TRIE_FILE}, the manifest says {fields['n_titles']}")
        return cls(trie, fields["end_id"], fields["encoding_offset"])

    def save(self, path: str | Path, *, overwrite: bool = False, **fields) -> dict:
        """Write the trie folder atomically (titles.marisa + manifest); `fields` go into the manifest.
        `overwrite` replaces a dengen index at `path` (indexes.manifest.write_index_dir)."""
        return write_index_dir(path, lambda tmp: {"kind": KIND, **self.write(tmp), **fields}, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> "TitleTrie":
        """Open a saved trie folder, memory-mapped; `verify` checks every file's size and sha256 first."""
        saved = open_index(path, verify=verify)
        if saved.manifest["kind"] != KIND:
            raise IndexLoadError(f"{path}: a {saved.manifest['kind']!r} index, not a title trie")
        trie = cls.read(saved.folder, saved.manifest)
        trie._saved = saved  # holds the generation its trie is mapped from
        return trie


def _check_id(token, limit: int, where: str) -> int:
    if isinstance(token, bool) or not isinstance(token, numbers.Integral):
        raise ValueError(f"{where}: token id {token!r} is not an integer")
    if not 0 <= token <= limit:
        raise ValueError(f"{where}: token id {token} outside 0..{limit}, what the title encoding can store")
    return int(token)
