"""CorpusBrain pre-training data (training/corpusbrain_data.py): ISS, LPS, HIP on a KILT-style fixture and
on squad-v1.1-dev pages."""
from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from retrieval.data import Doc, load_corpus
from retrieval.errors import DataError
from tests.conftest import SHARED_DATA
from training.corpusbrain_data import (
    TITLE_SEPARATOR,
    Anchor,
    Example,
    LinkedPage,
    hip_examples,
    iss_examples,
    load_linked_pages,
    lps_examples,
    paragraphs_of,
    pretraining_examples,
    split_sentences,
)

FIXTURE = Path(__file__).parent / "fixtures" / "linked_wiki.jsonl"
SQUAD = SHARED_DATA / "squad-v1.1-dev"


@pytest.fixture(scope="module")
def pages():
    return load_linked_pages(FIXTURE)


@pytest.fixture(scope="module")
def squad3():
    if not (SQUAD / "pages.jsonl.gz").is_file():
        pytest.skip("squad-v1.1-dev not in shared data")
    return load_corpus(SQUAD / "pages.jsonl.gz").docs[:3]


def _words(n: int, tag: str) -> str:
    return " ".join(f"{tag}w{i}" for i in range(n))


def test_split_sentences_worked_case():
    text = 'He met Dr. Smith in the U.S. Army. "Yes!" she said. J. R. R. Tolkien wrote it in 1937. Then 2 more.'
    assert split_sentences(text) == [
        "He met Dr. Smith in the U.S. Army.",
        '"Yes!" she said.',
        "J. R. R. Tolkien wrote it in 1937.",
        "Then 2 more.",
    ]


def test_fixture_reads_as_kilt_pages(pages):
    assert [p.title for p in pages] == [
        "Ada Lovelace", "Charles Babbage", "Analytical Engine", "Mathematics", "London", "Computer programming",
    ]
    ada = pages[0]
    # KILT's title line text[0] and the Section:::: lines are not body; anchors re-indexed to the body
    assert len(ada.paragraphs) == 4 and not any("::::" in p for p in ada.paragraphs)
    for anchor in ada.anchors:
        assert ada.paragraphs[anchor.paragraph][anchor.start : anchor.end] == anchor.text
    assert ada.anchors[2] == Anchor(1, 46, 56, "Lord Byron", "Lord Byron")
    babbage = pages[1]
    assert [a.target for a in babbage.anchors if a.text == "difference engine"] == [None]


def test_targets_are_titles_of_the_set(pages, squad3):
    for docs in (pages, squad3):
        titles = {d.title for d in docs}
        data = pretraining_examples(docs, random.Random(1), min_doc_words=0)
        assert data.examples
        for example in data.examples:
            assert example.task in ("ISS", "LPS", "HIP")
            assert example.titles and set(example.titles) <= titles
            assert len(set(example.titles)) == len(example.titles)


def test_iss_sources_are_sentences_of_the_target_document(pages, squad3):
    for docs in (pages, squad3):
        by_title = {d.title: d for d in docs}
        examples = iss_examples(docs, random.Random(2))
        assert examples and all(e.task == "ISS" for e in examples)
        for e in examples:
            doc = by_title[e.titles[0]]
            assert e.source in {s for p in paragraphs_of(doc) for s in split_sentences(p)}
            assert len(e.source.split()) > 10
        per_doc = Counter(e.titles[0] for e in examples)
        assert max(per_doc.values()) <= 12
    # squad pages have far more than 12 long sentences: exactly 12 each, no repeats, no linked titles
    squad_examples = iss_examples(squad3, random.Random(2))
    assert Counter(e.target for e in squad_examples) == {d.title: 12 for d in squad3}
    assert len({e.source for e in squad_examples}) == 36
    # iss_per_doc lifts the cap: every qualifying sentence of a page, once each
    every = pretraining_examples(squad3, random.Random(2), tasks=["ISS"], iss_per_doc=10**6)
    qualifying = {d.title: sum(1 for p in paragraphs_of(d) for s in split_sentences(p) if len(s.split()) > 10) for d in squad3}
    assert Counter(e.target for e in every.examples) == qualifying and min(qualifying.values()) > 12
    assert len({e.source for e in every.examples}) == every.counts["ISS"]


def test_lps_worked_case():
    paragraphs = [_words(11, f"p{i}") for i in range(1, 11)]
    short = "Too short to count."
    doc = Doc("d", "Some Page", "\n\n".join([paragraphs[0], short] + paragraphs[1:]))
    got = lps_examples([doc], random.Random(0))
    assert got == [
        Example(" ".join(paragraphs[0:3]), "Some Page", "LPS"),
        Example(" ".join(paragraphs[3:6]), "Some Page", "LPS"),
        Example(" ".join(paragraphs[6:9]), "Some Page", "LPS"),
    ]
    # paragraphs given explicitly win over the text; fewer than 3 qualifying -> nothing, counted
    stats = Counter()
    two = lps_examples([doc], random.Random(0), paragraphs={"d": paragraphs[:2]}, stats=stats)
    assert two == [] and stats["lps_pages_too_short"] == 1
    four = lps_examples([doc], random.Random(0), paragraphs={"d": paragraphs[:4]})
    assert [e.source for e in four] == [" ".join(paragraphs[:3])]


def test_lps_target_takes_linked_titles_from_the_page():
    paragraphs = [_words(11, f"p{i}") for i in range(3)]
    page = LinkedPage("x", "X", paragraphs, [Anchor(0, 0, 5, "p0w0 ", "Y"), Anchor(1, 0, 4, "p1w0", "Z")])
    titles = {"X", "Y", "Z"}
    targets = {e.target for seed in range(200) for e in lps_examples([page], random.Random(seed), titles=titles)}
    assert "X" in targets and targets <= {"X", "X |Y", "X |Z", "X |Y |Z", "X |Z |Y"}
    assert any(TITLE_SEPARATOR in t for t in targets)
    only_title = lps_examples([page], random.Random(0), titles=titles, link_weights=None)
    assert [e.target for e in only_title] == ["X"]


def test_squad_paragraphs_join_by_blank_lines(squad3):
    with gzip.open(SQUAD / "articles.jsonl.gz", "rt", encoding="utf-8") as lines:
        articles = [json.loads(next(lines)) for _ in range(3)]
    for doc, article in zip(squad3, articles):
        assert paragraphs_of(doc) == [p["context"].strip() for p in article["paragraphs"]]
    lps = lps_examples(squad3, random.Random(0))
    assert Counter(e.target for e in lps) == {d.title: 3 for d in squad3}
    assert lps[0].source == " ".join(p["context"] for p in articles[0]["paragraphs"][:3])


def test_hip_source_holds_the_anchor_and_targets_the_linked_title(pages):
    titles = {p.title for p in pages}
    examples = hip_examples(pages, titles, random.Random(3))
    assert examples and all(e.task == "HIP" for e in examples)
    for e in examples:
        linking = [a for p in pages for a in p.anchors if a.target == e.target and a.text in e.source]
        assert linking, e
    assert max(Counter(e.source for e in examples).values()) <= 3


def test_hip_worked_case_sentence_window():
    paragraph = "First sentence here. Second one names Mars Base today. Third sentence there. Fourth at the end."
    page = LinkedPage("p", "P", [paragraph, "Next paragraph starts. It goes on."],
                      [Anchor(0, paragraph.index("Mars Base"), paragraph.index("Mars Base") + 9, "Mars Base", "Mars")])
    [example] = hip_examples([page], {"P", "Mars"}, random.Random(0))
    assert example == Example("First sentence here. Second one names Mars Base today. Third sentence there.", "Mars", "HIP")
    # an anchor in the page's last sentence takes the sentence before it only; windows cross paragraphs
    last = LinkedPage("p", "P", [paragraph, "Next paragraph starts. It goes on."], [Anchor(1, 26, 28, "It", "Mars")])
    [example] = hip_examples([last], {"P", "Mars"}, random.Random(0))
    assert example.source == "Next paragraph starts. It goes on."
    first = LinkedPage("p", "P", ["Alpha beta. Gamma delta.", "Epsilon zeta."], [Anchor(0, 12, 17, "Gamma", "Mars")])
    [example] = hip_examples([first], {"Mars"}, random.Random(0))
    assert example.source == "Alpha beta. Gamma delta. Epsilon zeta."


def test_links_to_unknown_or_unresolved_pages_are_dropped_and_counted(pages):
    data = pretraining_examples(pages, random.Random(0), min_doc_words=0)
    everywhere = {t for e in data.examples for t in e.titles}
    assert "Lord Byron" not in everywhere
    assert data.stats["links_unknown_title"] == 1 and data.stats["links_unresolved"] == 1
    assert data.counts == Counter(e.task for e in data.examples)
    assert all(data.counts[t] > 0 for t in ("ISS", "LPS", "HIP"))
    # shrink the title set: every link into the removed page disappears from HIP and ISS/LPS targets
    titles = {p.title for p in pages} - {"London"}
    kept = [p for p in pages if p.title != "London"]
    data = pretraining_examples(kept, random.Random(0), titles=titles, min_doc_words=0)
    assert "London" not in {t for e in data.examples for t in e.titles}
    assert data.stats["links_unknown_title"] == 1 + 2  # Lord Byron, and London from Ada and Babbage


def test_seeded_determinism(pages, squad3):
    for docs in (pages, squad3):
        a = pretraining_examples(docs, random.Random(7), min_doc_words=0)
        b = pretraining_examples(docs, 7, min_doc_words=0)
        c = pretraining_examples(docs, random.Random(8), min_doc_words=0)
        assert a == b
        assert a.examples != c.examples


def test_page_filter_and_task_selection(pages):
    data = pretraining_examples(pages, random.Random(0))  # reference filter: bodies under 128 words are skipped
    assert data.examples == [] and data.stats["pages_too_short"] == 6
    only_hip = pretraining_examples(pages, random.Random(0), tasks=["HIP"], min_doc_words=0)
    assert set(only_hip.counts) == {"ISS", "LPS", "HIP"} and only_hip.counts["ISS"] == 0 and only_hip.counts["HIP"] > 0
    with pytest.raises(ValueError, match="unknown task"):
        pretraining_examples(pages, 0, tasks=["MLM"])


def _bad_fixture(tmp_path, mutate) -> Path:
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    mutate(records)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize(
    "mutate, field, line",
    [
        (lambda r: r[2].pop("wikipedia_title"), "wikipedia_title", 3),
        (lambda r: r[1].update(text="just a string"), "text", 2),
        (lambda r: r[3]["text"].__setitem__(1, 5), "text[1]", 4),
        (lambda r: r[0]["anchors"][1].pop("start"), "anchors[1].start", 1),
        (lambda r: r[0]["anchors"][0].update(end=10_000), "anchors[0].end", 1),
        (lambda r: r[0]["anchors"][0].update(paragraph_id=99), "anchors[0].paragraph_id", 1),
        (lambda r: r[4]["anchors"][0].update(text="Somebody Else"), "anchors[0].text", 5),
        (lambda r: r[5].update(wikipedia_id="101"), "wikipedia_id", 6),
    ],
)
def test_malformed_lines_name_file_line_and_field(tmp_path, mutate, field, line):
    path = _bad_fixture(tmp_path, mutate)
    with pytest.raises(DataError) as err:
        load_linked_pages(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert str(path) in str(err.value) and f"line {line}" in str(err.value) and f"'{field}'" in str(err.value)


def test_not_json_is_a_data_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(FIXTURE.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        load_linked_pages(path)
