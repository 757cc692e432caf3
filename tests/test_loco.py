"""LoCoV1: the task list, its file layout converted to a Dataset, and long-document evaluation records."""
import json
import warnings
from pathlib import Path

import pytest
from conftest import shared

from eval.loco import LOCO_SPLIT, LOCO_TASKS, MAIN_METRIC, evaluate_long, load_loco, load_qmsum, loco_file
from retrieval import Corpus, DataError, Dataset, Doc, parse_spec

# the `dataset` values listed on the hazyresearch/LoCoV1-Queries and -Documents dataset cards
CARD_TASKS = {"summ_screen_fd", "gov_report", "qmsum", "qasper_title", "qasper_abstract", "2wikimqa", "multifieldqa",
              "passage_retrieval", "courtlistener_HTML", "courtlistener_Plain_Text", "legal_case_reports", "stackoverflow"}

FILLER = "the committee went through the minutes of the previous meeting once more " * 30  # 360 words
DOCS = [
    {"pid": "qmsum_P0", "passage": FILLER + "they agreed the remote control should cost twelve euros", "dataset": "qmsum"},
    {"pid": "qmsum_P1", "passage": FILLER + "the marketing expert presented trends in fashion colours", "dataset": "qmsum"},
    {"pid": 7, "passage": "a short meeting about the canteen lunch menu", "dataset": "qmsum"},
]
QUERIES = [
    {"qid": "qmsum_Q0", "query": "what price was agreed for the remote control", "answer_pids": ["qmsum_P0"], "dataset": "qmsum"},
    {"qid": "qmsum_Q1", "query": "fashion trends and colours in marketing", "answer_pids": ["qmsum_P1", 7], "dataset": "qmsum"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def loco_root(tmp_path) -> Path:
    """The two Hugging Face dataset repos downloaded side by side (their files sit under documents/)."""
    write_jsonl(tmp_path / "LoCoV1-Documents" / "documents" / "qmsum_test.jsonl", DOCS)
    write_jsonl(tmp_path / "LoCoV1-Queries" / "documents" / "qmsum_test.jsonl", QUERIES)
    return tmp_path


def test_task_list_matches_the_dataset_cards():
    assert set(LOCO_TASKS) == CARD_TASKS and len(LOCO_TASKS) == 12
    assert MAIN_METRIC == "ndcg@10" and LOCO_SPLIT == "test"


def test_hf_layout_becomes_a_dataset(loco_root):
    ds = load_loco(loco_root, "qmsum")
    assert isinstance(ds, Dataset) and (ds.name, ds.split) == ("qmsum", "test")
    assert ds.corpus.ids == ["qmsum_P0", "qmsum_P1", "7"]  # integer ids become strings
    assert ds.corpus["7"].title == "" and ds.corpus["qmsum_P0"].text.endswith("twelve euros")
    assert ds.queries == {"qmsum_Q0": QUERIES[0]["query"], "qmsum_Q1": QUERIES[1]["query"]}
    assert ds.qrels == {"qmsum_Q0": {"qmsum_P0": 1}, "qmsum_Q1": {"qmsum_P1": 1, "7": 1}}


def test_combined_parquet_files_are_filtered_by_task(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    other_doc = {"pid": "gov_P0", "passage": "a report on budgets", "dataset": "gov_report"}
    other_query = {"qid": "gov_Q0", "query": "budget summary", "answer_pids": ["gov_P0"], "dataset": "gov_report"}
    docs = [dict(d, pid=str(d["pid"])) for d in DOCS] + [other_doc]
    queries = [dict(q, answer_pids=[str(p) for p in q["answer_pids"]]) for q in QUERIES] + [other_query]
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "documents.parquet")
    pq.write_table(pa.Table.from_pylist(queries), tmp_path / "queries.parquet")
    qmsum, gov = load_loco(tmp_path, "qmsum"), load_loco(tmp_path, "gov_report")
    assert len(qmsum.corpus) == 3 and set(qmsum.queries) == {"qmsum_Q0", "qmsum_Q1"}
    assert gov.corpus.ids == ["gov_P0"] and gov.qrels == {"gov_Q0": {"gov_P0": 1}}


def test_null_passages_are_dropped_with_their_queries_and_counted(tmp_path):
    write_jsonl(tmp_path / "documents" / "qasper_title_test.jsonl", [
        {"pid": "Passage_0", "passage": "deep learning for parsing", "dataset": "qasper_title"},
        {"pid": "Passage_1", "passage": None, "dataset": "qasper_title"},
    ])
    write_jsonl(tmp_path / "queries" / "qasper_title_test.jsonl", [
        {"qid": "Query_0", "query": "parsing", "answer_pids": ["Passage_0"], "dataset": "qasper_title"},
        {"qid": "Query_1", "query": "nothing", "answer_pids": ["Passage_1"], "dataset": "qasper_title"},
    ])
    with pytest.warns(UserWarning) as caught:
        ds = load_loco(tmp_path, "qasper_title")
    assert [str(w.message) for w in caught] == [
        "LoCoV1 qasper_title: 1 documents with a null passage left out; dropped 1 judgements naming them, "
        "0 naming absent documents, and 1 queries left without any"]
    assert ds.corpus.ids == ["Passage_0"] and ds.qrels == {"Query_0": {"Passage_0": 1}}


def test_a_missing_file_names_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_loco(tmp_path, "gov_report")
    message = str(err.value)
    assert str(tmp_path / "LoCoV1-Documents" / "documents" / "gov_report_test.jsonl") in message
    assert "huggingface-cli download hazyresearch/LoCoV1-Documents" in message
    assert str(tmp_path / "documents.parquet") in message
    with pytest.raises(ValueError, match="unknown LoCoV1 task 'qmsum_long'"):
        load_loco(tmp_path, "qmsum_long")


def test_bad_rows_fail_with_file_line_and_field(loco_root):
    docs = loco_root / "LoCoV1-Documents" / "documents" / "qmsum_test.jsonl"
    queries = loco_root / "LoCoV1-Queries" / "documents" / "qmsum_test.jsonl"
    write_jsonl(queries, QUERIES + [{"qid": "qmsum_Q2", "query": "x", "answer_pids": ["nope"], "dataset": "qmsum"}])
    with pytest.raises(DataError, match=r"qmsum_test.jsonl, line 3, field 'answer_pids': 'nope' is not in"):
        load_loco(loco_root, "qmsum")
    with pytest.warns(UserWarning, match="dropped 0 judgements naming them, 1 naming absent documents, and 1 queries"):
        assert len(load_loco(loco_root, "qmsum", drop_missing=True).queries) == 2
    write_jsonl(docs, DOCS + [{"pid": "x", "passage": "y", "dataset": "gov_report"}])
    with pytest.raises(DataError, match=r"line 4, field 'dataset': 'gov_report' in the file of task 'qmsum'"):
        load_loco(loco_root, "qmsum")
    write_jsonl(docs, DOCS + [{"pid": "qmsum_P0", "passage": "again", "dataset": "qmsum"}])
    with pytest.raises(DataError, match=r"line 4, field 'pid': duplicate id 'qmsum_P0' \(first on line 1\)"):
        load_loco(loco_root, "qmsum")
    write_jsonl(docs, DOCS)
    write_jsonl(queries, [{"qid": "q", "query": "x", "answer_pids": [], "dataset": "qmsum"}])
    assert loco_file(loco_root, "queries", "qmsum") == (queries, False)
    with pytest.raises(DataError, match="field 'answer_pids': expected a non-empty list"):
        load_loco(loco_root, "qmsum")


# ---------------------------------------------------------------- evaluation records


def test_bm25_records_say_how_long_documents_were_handled(loco_root):
    ds = load_loco(loco_root, "qmsum")
    full, _ = evaluate_long(parse_spec("bm25"), ds, long_doc="full", ks=(1, 10))
    assert full.task == "qmsum" and full.main_metric == "ndcg@10" and full.details["long_doc"] == {"mode": "full"}
    assert full.score == full.metrics["ndcg@10"] and full.variant == "full" and full.label == "bm25-full"
    assert full.latency_ms["mean"] > 0 and full.index_bytes > 0 and full.build_seconds is not None
    with pytest.warns(UserWarning, match=r"^2 of 3 documents exceed 50 words; 85\.5% of words were cut$"):
        cut, _ = evaluate_long(parse_spec("bm25"), ds, max_words=50, ks=(1, 10))
    assert cut.details["long_doc"]["mode"] == "truncate" and cut.details["long_doc"]["words"]["units_cut"] == (369 - 50) + (368 - 50)
    assert cut.label == "bm25-trunc50w"
    assert cut.metrics["ndcg@10"] < full.metrics["ndcg@10"]  # the answers sit past word 50
    chunk, _ = evaluate_long(parse_spec("chunked:inner=bm25,window=40,stride=20"), ds, ks=(1, 10))
    assert chunk.details["long_doc"] == {"mode": "chunk", "unit": "words", "window": 40, "stride": 20, "chunks": 2 * 18 + 1}
    assert chunk.label == "chunked-bm25-40x20w" and chunk.metrics["mrr@1"] == 1.0
    with pytest.raises(ValueError, match="give max_words=N to truncate, or use long_doc='full'"):
        evaluate_long(parse_spec("bm25"), ds)
    with pytest.raises(ValueError, match="chunk needs a retriever that chunks documents itself"):
        evaluate_long(parse_spec("bm25"), ds, long_doc="chunk")


def test_dense_truncation_counts_tokens_with_the_model_tokenizer():
    # "the" is one MiniLM token: 510 of them + [CLS] + [SEP] = 512 tokens, 256 of which are cut
    corpus = Corpus([Doc("long", "", "the " * 510), Doc("short", "", "the the")])
    ds = Dataset(corpus, queries={"q": "the"}, qrels={"q": {"short": 1}}, name="toy")
    with pytest.warns(UserWarning) as caught:
        record, _ = evaluate_long(parse_spec("dense:model=minilm"), ds, ks=(1,), latency_sample=1)
    messages = [str(w.message) for w in caught if "exceed" in str(w.message)]
    assert messages == ["1 of 2 documents exceed 256 tokens; 49.6% of tokens were cut"]
    assert record.details["long_doc"]["max_tokens"] == 256 and record.details["long_doc"]["tokens"]["units_cut"] == 256
    assert record.label == "dense-minilm-Flat-trunc256t"
    with pytest.raises(ValueError, match="cannot read whole documents"):
        evaluate_long(parse_spec("dense:model=minilm"), ds, long_doc="full")


def test_qmsum_loads_as_a_long_document_task():
    folder = shared("qmsum")
    ds = load_qmsum(folder, "test")
    assert (ds.name, len(ds.corpus), len(ds.queries)) == ("QMSum", 232, 244)
    assert all(len(docs) == 1 for docs in ds.qrels.values())
    words = sum(len(d.text.split()) for d in ds.corpus) / len(ds.corpus)
    assert words > 9000  # PROVENANCE.md: 10,146 words per meeting with speaker labels
    summaries = load_qmsum(folder, "test", answer_as_query=True)
    assert summaries.queries.keys() == ds.queries.keys() and summaries.queries != ds.queries


# ---------------------------------------------------------------- real data (make slow)


@pytest.mark.slow
def test_qmsum_bm25_chunking_beats_truncation():
    """BM25 on QMSum test: whole meetings, the first 200 words, and 200-word windows (max-pooled)."""
    ds = load_qmsum(shared("qmsum"), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = evaluate_long(parse_spec("bm25"), ds, long_doc="full", latency_sample=5)[0].score
        cut = evaluate_long(parse_spec("bm25"), ds, max_words=200, latency_sample=5)[0].score
        chunk = evaluate_long(parse_spec("chunked:inner=bm25,window=200,stride=100"), ds, latency_sample=5)[0].score
    assert 0.35 < full < 0.45  # numpy BM25 reference (PROVENANCE.md): 0.4203; Lucene's analyzer differs
    assert cut < full - 0.15 and chunk > full
