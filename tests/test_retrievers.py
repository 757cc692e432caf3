"""Every retriever kind: index, search, save, reload in a new process, same run; damaged indexes refused."""
import json
import shutil

import pytest
from conftest import TINY_QUERIES, run_python, shared

from eval.metrics import evaluate_run
from retrieval import Corpus, Doc, IndexLoadError, build_retriever, load_corpus, load_dataset, load_retriever, parse_spec
from indexes.manifest import current_folder

SPECS = {
    "bm25": "bm25",
    "bm25-multifield": "bm25:fields=multifield",
    "dense": "dense:model=minilm,index=Flat",
    "dense-hnsw": "dense:model=minilm,index=HNSW32,search_params.efSearch=64",
    "hybrid": "bm25+dense",
    "hybrid-weighted": "bm25+dense@fusion=weighted,weights=0.3;0.7",
}


@pytest.fixture(scope="module")
def built(tiny_beir_session, tmp_path_factory):
    """Each kind indexed once on the tiny corpus and saved."""
    corpus = load_corpus(tiny_beir_session)
    out = {}
    for name, spec in SPECS.items():
        retriever = parse_spec(spec)
        retriever.index(corpus)
        path = tmp_path_factory.mktemp("idx") / name
        retriever.save(path)
        out[name] = (retriever, path)
    return out


@pytest.mark.parametrize("name", list(SPECS))
def test_finds_the_relevant_document(built, name):
    retriever, _ = built[name]
    top = retriever.search_one("what causes scurvy", k=3)
    assert top[0].doc_id == "d2" and "vitamin C" in top[0].text
    run = retriever.search(TINY_QUERIES, k=5)
    assert set(run) == set(TINY_QUERIES) and all(len(docs) <= 5 for docs in run.values())


@pytest.mark.parametrize("name", list(SPECS))
def test_reload_in_a_new_process_gives_the_same_run(built, name):
    retriever, path = built[name]
    expected = retriever.search(TINY_QUERIES, k=5)
    code = (
        "import json; from retrieval import load_retriever; "
        f"r = load_retriever({str(path)!r}); print(json.dumps(r.search({TINY_QUERIES!r}, k=5)))"
    )
    reloaded = json.loads(run_python(code).strip().splitlines()[-1])
    assert reloaded.keys() == expected.keys()
    for qid in expected:
        assert list(reloaded[qid]) == [d for d, _ in expected.top(qid)]
        assert reloaded[qid] == pytest.approx(dict(expected[qid]), rel=1e-5)


def test_a_loaded_index_reads_texts_from_its_docstore_on_disk(built, tmp_path):
    """Texts of a loaded index come from docs.jsonl by seeking (a CorpusStream holds ids and offsets, not
    texts), so showing hits stays bounded for big corpora; an index saved without texts gives None."""
    from retrieval.data import CorpusStream

    retriever, path = built["bm25"]
    loaded = load_retriever(path)
    hits = loaded.search_one("what causes scurvy", k=3)
    assert [h.text for h in hits] == [retriever.doc_text(h.doc_id) for h in hits] and "vitamin C" in hits[0].text
    assert isinstance(loaded._texts, CorpusStream) and loaded.doc_text("no-such-doc") is None
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    (current_folder(bare) / "docs.jsonl").unlink()
    assert load_retriever(bare, verify=False).doc_text("d2") is None


def test_manifest_records_the_build(built):
    manifest = json.loads((built["dense"][1] / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["doc_count"] == 8 and manifest["dims"] == 384
    assert manifest["model"]["name"] == "minilm" and len(manifest["model"]["sha256"]) == 64
    assert {"vectors.faiss", "docids.txt", "docs.jsonl"} <= set(manifest["files"])
    hybrid = json.loads((built["hybrid"][1] / "manifest.json").read_text())
    assert hybrid["members"] == ["bm25", "dense"]
    assert any(f.startswith("member-0/lucene/") for f in hybrid["files"])
    assert "member-1/vectors.faiss" in hybrid["files"]


@pytest.mark.parametrize("name,victim", [("dense", "vectors.faiss"), ("bm25", "docids.txt"), ("hybrid", "member-1/vectors.faiss")])
def test_truncated_index_file_is_refused(built, tmp_path, name, victim):
    copy = tmp_path / name
    shutil.copytree(built[name][1], copy)
    path = current_folder(copy) / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match="truncated"):
        load_retriever(copy)


def test_edited_lucene_file_is_refused(built, tmp_path):
    copy = tmp_path / "bm25"
    shutil.copytree(built["bm25"][1], copy)
    victim = max((p for p in (current_folder(copy) / "lucene").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="altered"):
        load_retriever(copy)


def test_index_built_with_another_model_is_refused(built, tmp_path):
    copy = tmp_path / "dense"
    shutil.copytree(built["dense"][1], copy)
    path = current_folder(copy) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model"]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="re-index with this model"):
        load_retriever(copy)


def test_wrong_kind_and_unbuilt(built):
    from retrieval.sparse.bm25 import BM25Retriever

    with pytest.raises(IndexLoadError, match="holds a 'dense' index"):
        BM25Retriever.load(built["dense"][1])
    with pytest.raises(RuntimeError, match="no index yet"):
        build_retriever("bm25").search({"q": "x"})


def test_hybrid_from_saved_members_does_not_reindex(built, tiny_beir_session):
    hybrid = parse_spec(f"{built['bm25'][1]}+{built['dense'][1]}")
    assert hybrid.doc_count == 8 and hybrid.build_seconds == 0.0  # nothing was built, whatever the members once cost
    hybrid.index(load_corpus(tiny_beir_session))  # members already hold this corpus: kept as they are
    assert [m.path for m in hybrid.members] == [current_folder(built["bm25"][1]), current_folder(built["dense"][1])]
    assert hybrid.build_seconds < min(m.build_seconds for m in hybrid.members)
    assert hybrid.search_one("what causes scurvy", k=1)[0].doc_id == "d2"
    other = Corpus([Doc(d.id, d.title, d.text + " extra") for d in load_corpus(tiny_beir_session)])
    hybrid.index(other)  # the same ids and count but other texts: every member is rebuilt
    assert [m.path for m in hybrid.members] == [None, None] and hybrid.members[0].holds(other)
    assert hybrid.build_seconds >= max(m.build_seconds for m in hybrid.members)  # the time of what it built


def test_hybrid_rrf_weights_follow_the_weighted_formula(built):
    from retrieval.hybrid import rrf

    members = [f"{built['bm25'][1]}", f"{built['dense'][1]}"]
    weighted = parse_spec("+".join(members) + "@weights=1;0.25")
    queries = {"q": "what causes scurvy"}
    runs = [m.search(queries, k=8)["q"] for m in weighted.members]
    got = weighted.search(queries, k=8)["q"]
    assert got == pytest.approx(rrf(runs, 60, [1.0, 0.25]))  # w / (60 + rank) per member
    assert got != pytest.approx(parse_spec("+".join(members)).search(queries, k=8)["q"])  # weights are not ignored


def test_spec_parsing():
    from retrieval.spec import spec_to_config

    assert spec_to_config("bm25:k1=1.2,b=0.75") == {"kind": "bm25", "k1": 1.2, "b": 0.75}
    assert spec_to_config("dense:index=HNSW32,search_params.efSearch=128") == {
        "kind": "dense", "index": "HNSW32", "search_params": {"efSearch": 128}}
    assert spec_to_config("dense:index=IVF256,PQ32x8,search_params.nprobe=16,model=minilm") == {
        "kind": "dense", "index": "IVF256,PQ32x8", "search_params": {"nprobe": 16}, "model": "minilm"}
    assert spec_to_config("bm25+dense:model=minilm@fusion=weighted,weights=1;2") == {
        "kind": "hybrid", "members": ["bm25", "dense:model=minilm"], "fusion": "weighted", "weights": [1, 2]}
    with pytest.raises(ValueError, match="unknown retriever kind"):
        parse_spec("nope")
    with pytest.raises(ValueError, match="not key=value"):
        spec_to_config("bm25:k1")


def test_bm25_on_scifact_matches_anserini():
    """Anserini's BEIR flat regression: SciFact nDCG@10 0.6789, R@100 0.9253 (k1=0.9, b=0.4)."""
    ds = load_dataset(shared("scifact"))
    retriever = build_retriever("bm25")
    retriever.index(ds.corpus)
    metrics = evaluate_run(ds.qrels, retriever.search(ds.queries, k=100), ks=(10, 100))
    assert metrics["ndcg@10"] == pytest.approx(0.6789, abs=0.002)
    assert metrics["recall@100"] == pytest.approx(0.9253, abs=0.003)


def test_hybrid_of_saved_members_can_be_measured_then_saved(built, tmp_path):
    """Regression: measuring the size (a save to a temporary folder) must not point members at it."""
    from eval.runner import index_bytes

    hybrid = parse_spec(f"{built['bm25'][1]}+{built['dense'][1]}")
    assert index_bytes(hybrid) > 0
    hybrid.save(tmp_path / "hybrid")
    assert load_retriever(tmp_path / "hybrid").search_one("what causes scurvy", k=1)[0].doc_id == "d2"


def test_bm25_index_and_search_print_no_java_info_lines(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    code = ("from retrieval import Corpus, Doc, build_retriever, load_retriever\n"
            "r = build_retriever('bm25'); r.index(Corpus([Doc('a', '', 'hello world'), Doc('b', '', 'other text')]))\n"
            f"r.save({str(tmp_path / 'idx')!r}); print(load_retriever({str(tmp_path / 'idx')!r}).search_one('hello', 1)[0].doc_id)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("a")
    java_info = [line for line in (done.stdout + done.stderr).splitlines() if " INFO " in line or line.startswith("INFO:")]
    assert java_info == []  # Anserini's log4j and Lucene's java.util.logging are set to WARN


def test_a_kind_name_that_is_also_a_folder_here_is_refused_not_guessed(built, tmp_path, monkeypatch):
    from retrieval.errors import SpecError
    from retrieval.spec import spec_to_config

    monkeypatch.chdir(tmp_path)
    shutil.copytree(built["bm25"][1], tmp_path / "bm25")  # a saved index that happens to be named like the kind
    with pytest.raises(SpecError, match=r"'bm25' is both a retriever kind and a folder .*write bm25: for a new bm25"):
        spec_to_config("bm25")
    assert spec_to_config("bm25:") == {"kind": "bm25"}
    assert spec_to_config("bm25:k1=1.2") == {"kind": "bm25", "k1": 1.2}
    assert spec_to_config("./bm25") == "./bm25" and spec_to_config("index:bm25") == "bm25"
    with pytest.raises(SpecError, match="index:nowhere: no manifest.json"):
        spec_to_config("index:nowhere")


def test_efconstruction_is_a_build_option_and_refused_as_a_search_parameter(tiny_beir_session, tmp_path):
    import faiss

    from retrieval.errors import SpecError

    retriever = build_retriever("dense", index="HNSW8", build_params={"efConstruction": 200},
                                search_params={"efSearch": 64})
    retriever.index(load_corpus(tiny_beir_session))
    graph = faiss.downcast_index(retriever._faiss).hnsw
    assert (graph.efConstruction, graph.efSearch) == (200, 64)  # set before the vectors went in
    retriever.save(tmp_path / "hnsw")
    assert load_retriever(tmp_path / "hnsw").describe()["build_params"] == {"efConstruction": 200}
    with pytest.raises(SpecError, match="efConstruction shapes the index as it is built and does nothing at search "
                                        "time: give it as build_params.efConstruction=N"):
        build_retriever("dense", index="HNSW8", search_params={"efConstruction": 200}).check_index_options()
    with pytest.raises(SpecError, match="efConstruction needs an HNSW index"):
        build_retriever("dense", index="Flat", build_params={"efConstruction": 200}).check_index_options()
    assert "build_params" not in build_retriever("dense").describe()  # absent unless given: labels unchanged
