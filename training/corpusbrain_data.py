"""CorpusBrain pre-training data: pseudo-queries built from the corpus alone, each paired with titles.

CorpusBrain (Chen, Zhang, Guo, Liu, Fan, Cheng, "CorpusBrain: Pre-train a Generative Retrieval Model for
Knowledge-Intensive Language Tasks", CIKM 2022, arXiv 2208.07652; code ict-bigdatalab/CorpusBrain) pre-trains
a seq2seq model to generate Wikipedia titles from three kinds of pseudo-query:

- **ISS**, inner sentence selection: a sentence of a page -> the page's title, followed by the titles of
  ``o`` pages the page links to (``o`` drawn per example, see below);
- **LPS**, lead paragraph selection: a group of the page's leading paragraphs -> the same kind of target
  (page title + ``o`` linked titles);
- **HIP**, hyperlink identifier prediction: the sentence holding an anchor, with the sentence before and
  after it, ``[s(q-1), s(q), s(q+1)]`` -> the title of the page the anchor links to (only for linked pages).

Numbers followed (the paper body was not readable from here; the numbers come from the reference
preprocessing, ``utils/preprocess_corpus.py`` and ``utils/filter_corpus.py`` of ict-bigdatalab/CorpusBrain,
commit 7bfcb50; the task definitions from the paper's Section 3 as quoted in a reading note):

- page filter (``filter_corpus.py``): pages whose title has 3 characters or fewer, or whose body (section
  headers dropped) has fewer than 128 words, are skipped (``min_title_chars=4``, ``min_doc_words=128``);
- a unit of text counts only with more than 10 words (``len(s.split(' ')) > 10``) and never when it is a
  KILT structure line (``'::::'`` in it: ``Section::::``, ``BULLET::::``);
- ISS: up to 12 units per page (the reference keeps one fixed unit plus ``min(11, n - 2)`` random ones);
- LPS: up to 3 pseudo-queries per page, each 3 consecutive leading paragraphs joined by a space (paragraphs
  1-3, 4-6, 7-9 of the qualifying ones; a group is built only when all 3 of its paragraphs exist);
- ISS/LPS targets: ``o`` linked titles appended, ``o`` in 0..4 drawn with weights 70/20/5/3/2, the anchors
  drawn without replacement, duplicates removed; titles joined by ``TITLE_SEPARATOR = " |"`` as the
  reference writes them (``title |A |B``). Pages without links always get ``o = 0``: the target is the title;
- HIP: up to 3 anchors per page, each (target title, anchor sentence) pair used once;
- tasks are mixed as the reference mixes them: every example of every task goes into one training file and
  fairseq shuffles it (no per-task weighting); ``pretraining_examples`` shuffles with the given rng;
- maximum lengths: the reference does not cut in preprocessing; fairseq's ``--truncate-source`` cuts
  sources at BART-large's 1024 positions while training (``scripts/train.sh``). So nothing is cut here
  (``max_source_words=None``); a trainer cuts by tokens.

Where this differs from the reference (each on purpose):

- ISS samples *sentences* (the paper's ``s_i^j``), not whole KILT paragraph lines as the reference does;
  sentences come from a simple regex splitter (``split_sentences``): no nltk/punkt, whose data cannot be
  fetched here. It splits after ``.``/``!``/``?`` (plus closing quotes/brackets) before whitespace and a
  capital letter, digit or opening quote, and not after a known abbreviation or a single capital initial.
- The reference indexes ``content[1]`` and ``content[1:4]`` where ``content[0]`` is already the first
  qualifying paragraph (KILT's title line never has more than 10 words), so its "lead" groups skip the
  true lead paragraph and its one fixed ISS unit is the second paragraph. We start at the first qualifying
  paragraph (LPS groups 1-3, 4-6, 7-9) and sample ISS sentences uniformly.
- HIP uses the sentence window ``[s(q-1), s(q), s(q+1)]`` of the paper (the reference takes the previous,
  the anchor's and the next *paragraph*), and does not apply the reference's "no anchor in the first two
  paragraphs" rule, which in KILT indexing only keeps HIP away from the lead paragraph.
- Links to pages outside the title set are dropped (the reference keeps any resolved KILT title, but under
  a title trie of *this* corpus such a title could never be generated); links with no resolved
  ``wikipedia_title`` are dropped as in the reference. Every drop is counted (``stats``), never silent.

Linked pages: a KILT knowledge-source-shaped jsonl (facebookresearch/KILT README, "Knowledge Source")::

    {"wikipedia_id": "7", "wikipedia_title": "Ada Lovelace",
     "text": ["Ada Lovelace\\n", "Augusta Ada King ... with Charles Babbage ...\\n", "Section::::Work.\\n", ...],
     "anchors": [{"paragraph_id": 1, "start": 40, "end": 55, "text": "Charles Babbage",
                  "href": "Charles%20Babbage", "wikipedia_title": "Charles Babbage", "wikipedia_id": "8"}]}

``text`` is the list of paragraphs; KILT's ``text[0]`` is the title line and is skipped when it equals the
title; ``start``/``end`` are character offsets into ``text[paragraph_id]`` and must cut out ``text``.
The id may be ``_id``/``wikipedia_id``/``id``, the title ``wikipedia_title``/``title``.
``load_linked_pages`` reads it, failing on the first bad line with a ``DataError`` (file, line, field).

Example:
    >>> import random
    >>> from retrieval.data import load_corpus
    >>> pages = load_corpus("../shared/data/squad-v1.1-dev/pages.jsonl.gz")
    >>> data = pretraining_examples(pages, random.Random(0))
    >>> data.counts            # {'ISS': 576, 'LPS': 144, 'HIP': 0}
    >>> data.examples[0]       # Example(source='...', target='Super Bowl 50', task='ISS')
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from retrieval.data import Doc, jsonl_records
from retrieval.errors import DataError

TASKS = ("ISS", "LPS", "HIP")
TITLE_SEPARATOR = " |"  # the reference's target: "title |linked A |linked B"
MIN_UNIT_WORDS = 10  # a sentence / paragraph counts only with more than this many words
ISS_PER_DOC = 12
LPS_GROUPS = 3
LPS_GROUP_SIZE = 3
HIP_PER_DOC = 3
LINK_TITLE_WEIGHTS = (70, 20, 5, 3, 2)  # P(o = 0, 1, 2, 3, 4) extra linked titles in ISS/LPS targets, in %
MIN_TITLE_CHARS = 4
MIN_DOC_WORDS = 128


class Example(NamedTuple):
    """One pseudo-query and its target; ``task`` is ISS, LPS or HIP so a trainer can report per-task loss."""

    source: str
    target: str
    task: str

    @property
    def titles(self) -> list[str]:
        """The target's titles (one, or several for ISS/LPS targets with linked titles)."""
        return self.target.split(TITLE_SEPARATOR)


class Anchor(NamedTuple):
    """A hyperlink: ``paragraphs[paragraph][start:end] == text`` links to the page titled ``target``."""

    paragraph: int
    start: int
    end: int
    text: str
    target: str | None  # None: the link has no resolved page


@dataclass
class LinkedPage:
    """A page as paragraphs (body only: no title line, no section headers) with its anchors."""

    id: str
    title: str
    paragraphs: list[str]
    anchors: list[Anchor] = field(default_factory=list)


class PretrainingSet(NamedTuple):
    examples: list[Example]
    counts: dict[str, int]  # examples per task
    stats: dict[str, int]  # pages and links skipped, by reason


PageLike = Doc | LinkedPage

# ---------------------------------------------------------------- sentences

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "no", "vol", "fig", "gen",
    "col", "lt", "sgt", "capt", "gov", "sen", "rep", "rev", "inc", "ltd", "co", "corp", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "approx", "e.g", "i.e", "u.s", "u.k",
}
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text`` (whitespace trimmed), see ``split_sentences``."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if match.group()[0] == ".":
            word = re.search(r"(\S+)\.$", text[start : match.start() + 1])
            token = word.group(1).lower().lstrip("(\"'") if word else ""
            if token in _ABBREVIATIONS or re.fullmatch(r"[a-z]", token) or re.fullmatch(r"([a-z]\.)+[a-z]", token):
                continue  # "Dr. Smith", "J. R. R. Tolkien", "U.S. Army": not an end of sentence
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    trimmed = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            trimmed.append((s, e))
    return trimmed


def split_sentences(text: str) -> list[str]:
    """Sentences of one paragraph by a regex (no nltk/punkt: its data cannot be downloaded here).

    Splits after ``.``, ``!`` or ``?`` (and any closing quotes/brackets) when whitespace and then a capital
    letter, a digit or an opening quote follow, except after a known abbreviation ("Dr.", "St.", "U.S.")
    or a single initial ("J. R. R. Tolkien").

    Example:
        >>> split_sentences('He met Dr. Smith in the U.S. Army. "Yes!" she said. It rained.')
        ['He met Dr. Smith in the U.S. Army.', '"Yes!" she said.', 'It rained.']
    """
    return [text[s:e] for s, e in sentence_spans(text)]


def _words(text: str) -> int:
    return len(text.split())


def _is_unit(text: str, min_words: int) -> bool:
    return "::::" not in text and _words(text) > min_words


# ---------------------------------------------------------------- pages


def paragraphs_of(doc: PageLike, paragraphs: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The body paragraphs of a page: given in ``paragraphs[doc.id]``, a LinkedPage's own, or ``doc.text``
    split on blank lines (how squad-v1.1-dev's pages.jsonl.gz joins its paragraphs: ``"\\n\\n"``)."""
    if paragraphs is not None and doc.id in paragraphs:
        found = list(paragraphs[doc.id])
    elif isinstance(doc, LinkedPage):
        found = list(doc.paragraphs)
    else:
        found = re.split(r"\n\s*\n", doc.text)
    return [p.strip() for p in found if p.strip() and "::::" not in p]


def _rng(rng: random.Random | int | None) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def _known_links(page: PageLike, titles: Collection[str], stats: Counter) -> list[Anchor]:
    """The page's anchors whose target is a title of the set; the others counted by reason."""
    if not isinstance(page, LinkedPage):
        return []
    kept = []
    for anchor in page.anchors:
        if anchor.target is None:
            stats["links_unresolved"] += 1
        elif anchor.target not in titles:
            stats["links_unknown_title"] += 1
        else:
            kept.append(anchor)
    return kept


def _target(title: str, links: Sequence[Anchor], rng: random.Random, weights: Sequence[float] | None) -> str:
    """The page title and ``o`` linked titles, ``o`` drawn from ``weights`` (reference ``get_anchors``)."""
    titles = [title]
    if links and weights:
        count = rng.choices(range(len(weights)), weights=weights, k=1)[0]
        for anchor in rng.sample(list(links), k=min(count, len(links))):
            if anchor.target not in titles:
                titles.append(anchor.target)
    return TITLE_SEPARATOR.join(titles)


def _check_title(doc: PageLike, stats: Counter) -> bool:
    if not doc.title.strip():
        stats["pages_without_title"] += 1
        return False
    if TITLE_SEPARATOR.strip() in doc.title:
        raise ValueError(f"document {doc.id!r}: title {doc.title!r} holds the target separator {TITLE_SEPARATOR.strip()!r}")
    return True


def _titles_of(docs: Sequence[PageLike]) -> set[str]:
    return {doc.title for doc in docs}


# ---------------------------------------------------------------- the three tasks


def iss_examples(
    docs: Iterable[PageLike],
    rng: random.Random | int | None = None,
    *,
    per_doc: int = ISS_PER_DOC,
    min_words: int = MIN_UNIT_WORDS,
    titles: Collection[str] | None = None,
    link_weights: Sequence[float] | None = LINK_TITLE_WEIGHTS,
    max_source_words: int | None = None,
    stats: Counter | None = None,
) -> list[Example]:
    """Inner sentence selection: up to ``per_doc`` sentences of each page (more than ``min_words`` words,
    drawn without replacement, in page order) -> the page title (+ linked titles for LinkedPages).

    Args:
        docs: ``Doc`` (paragraphs split from ``text``) or ``LinkedPage``.
        rng: a ``random.Random`` or a seed.
        titles: the title set links must point into (default: the titles of ``docs``).
        link_weights: weights of 0, 1, 2, ... extra linked titles in the target; None: title only.
        max_source_words: cut sources to this many words (None: no cut, as the reference).
        stats: a Counter that receives the counts of what was skipped.
    """
    rng, stats = _rng(rng), stats if stats is not None else Counter()
    docs = list(docs)
    titles = _titles_of(docs) if titles is None else titles
    out = []
    for doc in docs:
        if not _check_title(doc, stats):
            continue
        links = _known_links(doc, titles, stats)
        sentences = list(dict.fromkeys(s for p in paragraphs_of(doc) for s in split_sentences(p) if _is_unit(s, min_words)))
        if not sentences:
            stats["iss_pages_without_sentences"] += 1
            continue
        picked = sorted(rng.sample(range(len(sentences)), k=min(per_doc, len(sentences))))
        for i in picked:
            out.append(Example(_cut(sentences[i], max_source_words), _target(doc.title, links, rng, link_weights), "ISS"))
    return out


def lps_examples(
    docs: Iterable[PageLike],
    rng: random.Random | int | None = None,
    *,
    paragraphs: Mapping[str, Sequence[str]] | None = None,
    groups: int = LPS_GROUPS,
    group_size: int = LPS_GROUP_SIZE,
    min_words: int = MIN_UNIT_WORDS,
    titles: Collection[str] | None = None,
    link_weights: Sequence[float] | None = LINK_TITLE_WEIGHTS,
    max_source_words: int | None = None,
    stats: Counter | None = None,
) -> list[Example]:
    """Lead paragraph selection: the page's qualifying paragraphs (more than ``min_words`` words, no KILT
    ``::::`` lines) cut into consecutive groups of ``group_size`` from the first; the first ``groups`` full
    groups, each joined by a space, -> the page title (+ linked titles for LinkedPages).

    With the defaults a page with paragraphs P1..P10 gives "P1 P2 P3", "P4 P5 P6", "P7 P8 P9"; a page with
    only 2 qualifying paragraphs gives none (the reference builds full groups only).

    Args:
        paragraphs: {doc id: [paragraph, ...]} for ``Doc`` inputs whose text does not separate
            paragraphs by blank lines (squad-v1.1-dev's articles.jsonl.gz keeps them as ``paragraphs``).
        Others as ``iss_examples``. ``rng`` only draws the linked titles of targets.
    """
    rng, stats = _rng(rng), stats if stats is not None else Counter()
    docs = list(docs)
    titles = _titles_of(docs) if titles is None else titles
    out = []
    for doc in docs:
        if not _check_title(doc, stats):
            continue
        links = _known_links(doc, titles, stats)
        units = [p for p in paragraphs_of(doc, paragraphs) if _is_unit(p, min_words)]
        built = 0
        for g in range(groups):
            group = units[g * group_size : (g + 1) * group_size]
            if len(group) < group_size:
                break
            source = " ".join(group)
            out.append(Example(_cut(source, max_source_words), _target(doc.title, links, rng, link_weights), "LPS"))
            built += 1
        if not built:
            stats["lps_pages_too_short"] += 1
    return out


def hip_examples(
    docs_with_links: Iterable[LinkedPage],
    titles: Collection[str],
    rng: random.Random | int | None = None,
    *,
    per_doc: int = HIP_PER_DOC,
    window: int = 1,
    max_source_words: int | None = None,
    stats: Counter | None = None,
) -> list[Example]:
    """Hyperlink identifier prediction: for up to ``per_doc`` anchors of each page (drawn at random, each
    (target, sentence) pair once), the anchor's sentence with ``window`` sentences either side (the
    page's sentence sequence, across paragraphs) -> the linked page's title.

    Anchors whose target is not in ``titles`` (or unresolved) are dropped and counted in ``stats``.
    """
    rng, stats = _rng(rng), stats if stats is not None else Counter()
    titles = set(titles)
    out = []
    for page in docs_with_links:
        if not isinstance(page, LinkedPage):
            raise TypeError(f"hip_examples needs LinkedPage inputs (see load_linked_pages), got {type(page).__name__}")
        links = _known_links(page, titles, stats)
        if not links:
            continue
        sentences = [(p, s, e) for p, text in enumerate(page.paragraphs) for s, e in sentence_spans(text)]
        used: set[tuple[str, int]] = set()
        built = 0
        for anchor in rng.sample(links, k=len(links)):
            if built == per_doc:
                break
            covering = [i for i, (p, s, e) in enumerate(sentences) if p == anchor.paragraph and s < anchor.end and anchor.start < e]
            if not covering:
                stats["links_outside_sentences"] += 1
                continue
            first, last = covering[0], covering[-1]
            if (anchor.target, first) in used:
                stats["links_repeated"] += 1
                continue
            used.add((anchor.target, first))
            span = sentences[max(0, first - window) : last + window + 1]
            source = _join_spans(page.paragraphs, span)
            out.append(Example(_cut(source, max_source_words), anchor.target, "HIP"))
            built += 1
    return out


def _join_spans(paragraphs: Sequence[str], span: Sequence[tuple[int, int, int]]) -> str:
    """Consecutive sentences as their original text: one slice per paragraph, paragraphs joined by a space."""
    parts, by_paragraph = [], {}
    for p, s, e in span:
        lo, hi = by_paragraph.get(p, (s, e))
        by_paragraph[p] = (min(lo, s), max(hi, e))
    for p, (s, e) in sorted(by_paragraph.items()):
        parts.append(paragraphs[p][s:e])
    return " ".join(parts)


def _cut(text: str, max_words: int | None) -> str:
    if max_words is None:
        return text
    return " ".join(text.split()[:max_words])


# ---------------------------------------------------------------- the mix


def pretraining_examples(
    docs: Iterable[PageLike],
    rng: random.Random | int | None = None,
    *,
    tasks: Sequence[str] = TASKS,
    titles: Collection[str] | None = None,
    paragraphs: Mapping[str, Sequence[str]] | None = None,
    min_title_chars: int = MIN_TITLE_CHARS,
    min_doc_words: int = MIN_DOC_WORDS,
    shuffle: bool = True,
    max_source_words: int | None = None,
    iss_per_doc: int = ISS_PER_DOC,
) -> PretrainingSet:
    """All three tasks over one corpus, mixed as the reference mixes them: every example of every task,
    shuffled together (fairseq shuffles the one training file); HIP only for LinkedPages with links.

    Pages are first filtered as ``utils/filter_corpus.py`` does: titles of fewer than ``min_title_chars``
    characters and bodies of fewer than ``min_doc_words`` words are skipped (counted in ``stats``).
    ``iss_per_doc`` caps the ISS sentences per page (12: the reference's number, sized for millions of pages).
    Returns ``PretrainingSet(examples, counts per task, stats)``.
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
    rng, stats = _rng(rng), Counter()
    docs = list(docs)
    titles = _titles_of(docs) if titles is None else set(titles)
    kept = []
    for doc in docs:
        if len(doc.title) < min_title_chars:
            stats["pages_title_too_short"] += 1
        elif sum(_words(p) for p in paragraphs_of(doc, paragraphs)) < min_doc_words:
            stats["pages_too_short"] += 1
        else:
            kept.append(doc)
    stats["pages_used"] = len(kept)
    for doc in kept:  # count the dropped links once, here (each task meets them again)
        _known_links(doc, titles, stats)
    per_task: dict[str, Counter] = {task: Counter() for task in TASKS}
    examples: list[Example] = []
    if "ISS" in tasks:
        examples += iss_examples(kept, rng, titles=titles, max_source_words=max_source_words, per_doc=iss_per_doc,
                                 stats=per_task["ISS"])
    if "LPS" in tasks:
        examples += lps_examples(
            kept, rng, paragraphs=paragraphs, titles=titles, max_source_words=max_source_words, stats=per_task["LPS"]
        )
    if "HIP" in tasks:
        linked = [d for d in kept if isinstance(d, LinkedPage)]
        examples += hip_examples(linked, titles, rng, max_source_words=max_source_words, stats=per_task["HIP"])
    for counter in per_task.values():
        stats.update({k: v for k, v in counter.items() if not k.startswith(("links_unresolved", "links_unknown"))})
    if shuffle:
        rng.shuffle(examples)
    counts = {task: sum(1 for e in examples if e.task == task) for task in TASKS}
    return PretrainingSet(examples, counts, dict(stats))


# ---------------------------------------------------------------- reading linked pages


def load_linked_pages(path: str | Path) -> list[LinkedPage]:
    """Read KILT-knowledge-source-shaped jsonl(.gz) (see the module docstring) into LinkedPages.

    Paragraphs holding ``::::`` (KILT section/bullet lines) and a first paragraph equal to the title are
    not body paragraphs; anchors are re-indexed to the body, and an anchor inside a skipped paragraph is a
    ``DataError`` only if its offsets are wrong (otherwise it is left out with the paragraph).
    """
    path = Path(path)
    pages, first_line = [], {}
    for lineno, record in jsonl_records(path):
        id_field = next((f for f in ("_id", "wikipedia_id", "id") if f in record), "_id")
        page_id = record.get(id_field)
        if isinstance(page_id, int) and not isinstance(page_id, bool):
            page_id = str(page_id)
        if not isinstance(page_id, str) or not page_id.strip():
            raise DataError(path, lineno, id_field, f"expected a non-empty string id, got {page_id!r}")
        if page_id in first_line:
            raise DataError(path, lineno, id_field, f"duplicate id {page_id!r} (first on line {first_line[page_id]})")
        first_line[page_id] = lineno
        title_field = next((f for f in ("wikipedia_title", "title") if f in record), "wikipedia_title")
        title = record.get(title_field)
        if not isinstance(title, str) or not title.strip():
            raise DataError(path, lineno, title_field, f"expected a non-empty string title, got {title!r}")
        text = record.get("text")
        if not isinstance(text, list) or not text:
            raise DataError(path, lineno, "text", f"expected a non-empty list of paragraph strings, got {type(text).__name__}")
        for i, paragraph in enumerate(text):
            if not isinstance(paragraph, str):
                raise DataError(path, lineno, f"text[{i}]", f"expected a string, got {type(paragraph).__name__}")
        body = [i for i, p in enumerate(text) if p.strip() and "::::" not in p and not (i == 0 and p.strip() == title.strip())]
        new_index = {old: new for new, old in enumerate(body)}
        anchors_raw = record.get("anchors", [])
        if not isinstance(anchors_raw, list):
            raise DataError(path, lineno, "anchors", f"expected a list, got {type(anchors_raw).__name__}")
        anchors = []
        for k, raw in enumerate(anchors_raw):
            where = f"anchors[{k}]"
            if not isinstance(raw, dict):
                raise DataError(path, lineno, where, f"expected an object, got {type(raw).__name__}")
            for name in ("paragraph_id", "start", "end"):
                value = raw.get(name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DataError(path, lineno, f"{where}.{name}", f"expected an integer, got {value!r}")
            p, s, e = raw["paragraph_id"], raw["start"], raw["end"]
            if not 0 <= p < len(text):
                raise DataError(path, lineno, f"{where}.paragraph_id", f"{p} is outside text (0..{len(text) - 1})")
            if not 0 <= s < e <= len(text[p]):
                raise DataError(path, lineno, f"{where}.end", f"span {s}..{e} is outside paragraph {p} ({len(text[p])} characters)")
            anchor_text = raw.get("text")
            if not isinstance(anchor_text, str):
                raise DataError(path, lineno, f"{where}.text", f"expected a string, got {anchor_text!r}")
            if text[p][s:e] != anchor_text:
                raise DataError(path, lineno, f"{where}.text", f"{anchor_text!r} is not text[{p}][{s}:{e}] = {text[p][s:e]!r}")
            target = raw.get("wikipedia_title")
            if target is not None and (not isinstance(target, str) or not target.strip()):
                raise DataError(path, lineno, f"{where}.wikipedia_title", f"expected a non-empty string, got {target!r}")
            if p not in new_index:
                continue  # inside a title or section line: not body text
            # body paragraphs are stripped; shift the offsets by the leading whitespace removed
            shift = len(text[p]) - len(text[p].lstrip())
            anchors.append(Anchor(new_index[p], s - shift, e - shift, anchor_text, target))
        pages.append(LinkedPage(page_id, title, [text[i].strip() for i in body], anchors))
    if not pages:
        raise DataError(path, None, None, "no pages")
    return pages
