import gzip
import json

import pytest
from conftest import TINY_DOCS, shared, write_beir

from retrieval import DataError, load_corpus, load_dataset, load_qrels, load_queries
from retrieval.data import write_corpus, write_qrels, write_queries


def test_beir_folder_loads(tiny_beir):
    ds = load_dataset(tiny_beir)
    assert len(ds.corpus) == len(TINY_DOCS)
    assert ds.corpus["d2"].title == "Scurvy"
    assert ds.corpus["d2"].full_text == "Scurvy Scurvy is caused by a lack of vitamin C in the diet."
    assert ds.queries["q1"] == "what causes scurvy"
    assert ds.qrels == {"q1": {"d2": 1}, "q2": {"d5": 1}, "q3": {"d4": 1}, "q4": {"d7": 1}}


def test_gzip_corpus_and_roundtrip(tmp_path, tiny_beir):
    corpus = load_corpus(tiny_beir)
    write_corpus(corpus, tmp_path / "c.jsonl.gz")
    again = load_corpus(tmp_path / "c.jsonl.gz")
    assert [tuple(d) for d in again] == [tuple(d) for d in corpus]
    write_queries({"a": "x y"}, tmp_path / "q.jsonl")
    assert load_queries(tmp_path / "q.jsonl") == {"a": "x y"}
    write_qrels({"a": {"d1": 2}}, tmp_path / "qrels" / "test.tsv")
    assert load_qrels(tmp_path / "qrels" / "test.tsv") == {"a": {"d1": 2}}


def test_tsv_corpus_queries_and_trec_qrels(tmp_path):
    (tmp_path / "c.tsv").write_text("id\ttitle\ttext\n7\tT\tbody seven\n8\t\tbody eight\n")
    corpus = load_corpus(tmp_path / "c.tsv")
    assert corpus["7"].full_text == "T body seven" and corpus["8"].full_text == "body eight"
    (tmp_path / "q.tsv").write_text("1\tfirst query\n")
    assert load_queries(tmp_path / "q.tsv") == {"1": "first query"}
    (tmp_path / "qrels.txt").write_text("1 0 7 1\n1 0 8 0\n")
    assert load_qrels(tmp_path / "qrels.txt") == {"1": {"7": 1, "8": 0}}


def test_plain_jsonl_with_other_field_names_and_numeric_ids(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"id": 12, "contents": "alpha"}\n{"docid": "x", "contents": "beta"}\n')
    corpus = load_corpus(tmp_path / "c.jsonl")
    assert corpus.ids == ["12", "x"] and corpus["12"].text == "alpha"


def _bad_corpus(tmp_path, lines):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_corpus(path)
    return err.value, path


def test_malformed_json_line_names_file_and_line(tmp_path):
    err, path = _bad_corpus(tmp_path, ['{"_id": "a", "text": "ok"}', '{"_id": "b", "text": "ok"}', '{"_id": "c", "text": '])
    assert err.path == str(path) and err.line == 3
    assert str(path) in str(err) and "line 3" in str(err) and "not valid JSON" in str(err)


def test_missing_text_field(tmp_path):
    err, _ = _bad_corpus(tmp_path, ['{"_id": "a", "text": "ok"}', '{"_id": "b", "title": "no body"}'])
    assert (err.line, err.field) == (2, "text")
    assert "field 'text'" in str(err)


def test_missing_id_and_wrong_type(tmp_path):
    err, _ = _bad_corpus(tmp_path, ['{"text": "no id"}'])
    assert (err.line, err.field) == (1, "_id")
    err, _ = _bad_corpus(tmp_path, ['{"_id": "a", "text": ["not", "a", "string"]}'])
    assert (err.line, err.field) == (1, "text") and "expected a string" in str(err)


def test_duplicate_id(tmp_path):
    err, _ = _bad_corpus(tmp_path, ['{"_id": "a", "text": "1"}', '{"_id": "b", "text": "2"}', '{"_id": "a", "text": "3"}'])
    assert (err.line, err.field) == (3, "_id") and "first on line 1" in str(err)


def test_empty_corpus(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_corpus(tmp_path / "corpus.jsonl")


def test_duplicate_query_id(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n')
    with pytest.raises(DataError) as err:
        load_queries(tmp_path / "q.jsonl")
    assert err.value.line == 2


def test_qrels_with_unknown_ids_fail_by_default_and_drop_on_request(tmp_path):
    folder = write_beir(tmp_path / "d", qrels={"q1": {"d2": 1, "missing-doc": 1}, "q2": {"d5": 1}, "ghost": {"d1": 1}})
    with pytest.raises(DataError) as err:
        load_dataset(folder)
    assert err.value.field == "corpus-id" and err.value.line == 3 and "missing-doc" in str(err.value)
    with pytest.warns(UserWarning, match="dropped 1 qrels lines whose query is not in the queries and 1 whose document"):
        ds = load_dataset(folder, drop_missing=True)
    assert ds.qrels == {"q1": {"d2": 1}, "q2": {"d5": 1}}
    assert set(ds.queries) == {"q1", "q2"}  # only judged queries are scored


def test_keep_missing_scores_missing_documents_as_trec_eval_does(tmp_path):
    from eval.metrics import evaluate_run

    folder = write_beir(tmp_path / "d", qrels={"q1": {"d2": 1, "missing-doc": 1}, "ghost": {"d1": 1}})
    with pytest.warns(UserWarning, match="dropped 1 qrels lines whose query is not in the queries and 0"):
        kept = load_dataset(folder, keep_missing=True)
    assert kept.qrels == {"q1": {"d2": 1, "missing-doc": 1}}  # relevant, never retrievable
    with pytest.warns(UserWarning, match="not comparable to official ones"):
        dropped = load_dataset(folder, drop_missing=True)
    run = {"q1": {"d2": 2.0, "d1": 1.0}}
    # d2 at rank 1 of two relevant: recall 1/2, nDCG 1 / (1 + 1/log2(3)) = 0.6131; dropped, both would be 1
    assert evaluate_run(kept.qrels, run, (10,))["recall@10"] == 0.5
    assert evaluate_run(kept.qrels, run, (10,))["ndcg@10"] == pytest.approx(0.613147, abs=1e-6)
    assert evaluate_run(dropped.qrels, run, (10,))["ndcg@10"] == 1.0


def test_qrels_bad_score(tmp_path):
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\n1\td\thigh\n")
    with pytest.raises(DataError) as err:
        load_qrels(tmp_path / "q.tsv")
    assert (err.value.line, err.value.field) == (2, "score")


def test_shared_scifact_loads():
    ds = load_dataset(shared("scifact"))
    assert (len(ds.corpus), len(ds.queries), sum(map(len, ds.qrels.values()))) == (5183, 300, 339)
    train = load_dataset(shared("scifact"), split="train")
    assert len(train.queries) == 809 and not set(train.queries) & set(ds.queries)


def test_shared_limit_small_mteb_jsonl_qrels():
    ds = load_dataset(shared("limit-small"))
    assert (len(ds.corpus), len(ds.queries), sum(map(len, ds.qrels.values()))) == (46, 1000, 2000)


def test_gzipped_queries_are_read(tmp_path):
    with gzip.open(tmp_path / "queries.jsonl.gz", "wt") as out:
        out.write(json.dumps({"_id": "1", "text": "t"}) + "\n")
    assert load_queries(tmp_path) == {"1": "t"}
