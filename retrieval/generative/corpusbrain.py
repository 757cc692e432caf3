"""CorpusBrain: a seq2seq model generates a document's title under a prefix trie of the corpus's titles.

Chen, Zhang, Guo, Fan, Cheng, "CorpusBrain: Pre-train a Generative Retrieval Model for
Knowledge-Intensive Language Tasks" (CIKM 2022); ict-bigdatalab/CorpusBrain, which decodes as GENRE does
(De Cao et al., ICLR 2021): beam search over the title trie, every beam a whole title, ranked by its
log-probability; each title maps to its documents. The model is trained by `training/corpusbrain.py`
(ISS / LPS / HIP pre-training from the corpus alone, then optional fine-tuning on queries).

Identifiers: the document title (Wikipedia pages), or the document id where the corpus has no titles
(LIMIT's documents are named by the person they describe). Documents whose identifiers tokenise alike
(the MiniLM tokenizer is uncased) share a title and its score.
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from indexes.docstore import read_docids
from indexes.titletrie import TitleTrie
from retrieval.data import Corpus
from retrieval.generative.base import GenerativeRetriever
from retrieval.generative.keymodel import KeyModel
from retrieval.generative.title_constraint import TitleConstraint

SEARCH_DEFAULTS = {
    "beam": 10,  # beams = titles returned per query
    "batch_size": 8,
    # titles ranked by log P(title, eos | query) / length ** length_penalty; 0: the sum. GENRE and CorpusBrain
    # search with fairseq's lenpen 1 (the mean), 0.003 below the sum on SQuAD pages (docs/corpusbrain.md)
    "length_penalty": 0.0,
}
IDENTIFIERS_FILE = "identifiers.json"


class CorpusBrainRetriever(GenerativeRetriever):
    """Generative retrieval by title generation under a prefix trie.

    Args:
        model: a folder saved by `training/corpusbrain.py` (KeyModel), or an untrained model ("bert2bert",
            a registry name such as "smollm2-135m", or a Hugging Face folder).
        identifier: "title", "id", or "auto" (titles when every document has one, else ids).
        prompt: the key model's layout (`keymodel.LAYOUTS` name or template dict; None: the model's own).
        **search: any of SEARCH_DEFAULTS.

    Example:
        >>> r = build_retriever("corpusbrain", model="results/corpusbrain-squad/finetuned")
        >>> r.index(corpus); r.save("runs/corpusbrain")
        >>> load_retriever("runs/corpusbrain").search({"q1": "Who won Super Bowl 50?"}, k=10)
    """

    kind = "corpusbrain"
    method = "CorpusBrain"
    search_defaults = SEARCH_DEFAULTS

    def __init__(self, model: str = "bert2bert", identifier: str = "auto", prompt: str | dict | None = None, **search):
        if identifier not in ("auto", "title", "id"):
            raise ValueError(f"identifier must be 'auto', 'title' or 'id', got {identifier!r}")
        super().__init__(model, search, identifier=identifier, prompt=prompt)
        self.trie: TitleTrie | None = None
        self.doc_ids: list[str] = []
        self.identifiers: list[list[int]] = []  # per document (corpus order): its identifier's token ids
        self._docs_of: dict[tuple[int, ...], list[int]] = {}

    # ------------------------------------------------------------------ indexing
    def identifier_texts(self, corpus: Corpus) -> list[str]:
        """What the model generates for each document: its title, or its id (see `identifier`)."""
        use = self.config["identifier"]
        if use == "auto":
            use = "title" if all(d.title.strip() for d in corpus) else "id"
        if use == "title":
            missing = next((d.id for d in corpus if not d.title.strip()), None)
            if missing is not None:
                raise ValueError(f"document {missing!r} has no title: index with identifier='id'")
            return [d.title.strip() for d in corpus]
        return [d.id for d in corpus]

    def _index(self, corpus: Corpus) -> None:
        km = self.keymodel
        texts = tqdm(self.identifier_texts(corpus), desc="CorpusBrain titles", unit="doc", mininterval=1.0)
        self.identifiers = [km.tokens(text) for text in texts]
        self.doc_ids = list(corpus.ids)
        self.trie = TitleTrie.build(self.identifiers, end_id=km.eos_id)
        self._map_titles()

    def _map_titles(self) -> None:
        self._docs_of = {}
        for position, tokens in enumerate(self.identifiers):
            self._docs_of.setdefault(tuple(tokens), []).append(position)

    # ------------------------------------------------------------------ search
    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        ids = list(queries)
        size = self.config["batch_size"]
        run = {}
        for start in tqdm(range(0, len(ids), size), desc="CorpusBrain search", unit="batch", mininterval=1.0,
                          disable=len(ids) <= size):
            batch = ids[start : start + size]
            for qid, titles in zip(batch, self.generate_titles([queries[q] for q in batch])):
                ranked = {}
                for title, score in titles:
                    for doc in self._docs_of[title]:
                        ranked.setdefault(self.doc_ids[doc], score)
                run[qid] = dict(sorted(ranked.items(), key=lambda item: -item[1])[:k])
        return run

    def generate_titles(self, queries: list[str]) -> list[list[tuple[tuple[int, ...], float]]]:
        """Per query, the beam's titles (token ids) with log P(title, eos | query) / length ** length_penalty,
        best first."""
        km = self.keymodel
        constraint = TitleConstraint(self.trie, km.eos_id)
        longest = max(map(len, self.identifiers)) + 1  # + the terminator: no title is cut short
        hypotheses = km.generate(queries, num_beams=self.config["beam"], max_new_tokens=longest, allowed=constraint,
                                 length_penalty=float(self.config["length_penalty"]))
        found = []
        for hyps in hypotheses:
            titles = {}
            for tokens, score in hyps:
                if tuple(tokens) in self._docs_of:
                    titles.setdefault(tuple(tokens), score)
            found.append(sorted(titles.items(), key=lambda item: -item[1]))
        return found

    # ------------------------------------------------------------------ persistence
    def _save_files(self, folder: Path) -> dict:
        (folder / "titletrie").mkdir()
        trie = self.trie.write(folder / "titletrie")
        (folder / IDENTIFIERS_FILE).write_text(json.dumps(self.identifiers), encoding="utf-8")
        self.keymodel.save(folder / "model")
        self._write_docstore(folder)
        return {"engine": "title trie (marisa-trie)", "titletrie": trie, "backbone": self.keymodel.backbone}

    def _load_files(self, folder: Path, manifest: dict) -> None:
        self._keymodel = KeyModel.load(folder / "model")
        self.doc_ids = read_docids(folder)
        self.identifiers = json.loads((folder / IDENTIFIERS_FILE).read_text(encoding="utf-8"))
        self.trie = TitleTrie.read(folder / "titletrie", manifest["titletrie"])  # memory-mapped
        self._map_titles()
