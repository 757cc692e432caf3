"""`dengen serve`: the HTTP API over saved indexes (same hits as the Python API, one-line 4xx errors,
concurrent requests) and the search page in headless Chromium."""
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import TINY_QUERIES

from eval.report import chromium, render
from retrieval import build_retriever, load_corpus, load_retriever
from retrieval.errors import SpecError
from retrieval.serve import IndexPool, create_app, parse_index_args


@pytest.fixture(scope="module")
def server(tiny_beir_session, tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("served")
    corpus = load_corpus(tiny_beir_session)
    for name, spec in (("bm25", {"kind": "bm25"}), ("dense", {"kind": "dense", "model": "minilm"})):
        retriever = build_retriever(**spec)
        retriever.index(corpus)
        retriever.save(root / name)
    hybrid = build_retriever("hybrid", members=[str(root / "bm25"), str(root / "dense")])
    hybrid.save(root / "hybrid")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = IndexPool(parse_index_args([str(root / "bm25"), str(root / "dense"), f"fused={root / 'hybrid'}"]))
    app_server = uvicorn.Server(uvicorn.Config(create_app(pool), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    while not app_server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    app_server.should_exit = True
    thread.join(timeout=10)


def call(base: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_search_returns_the_python_apis_hits(server):
    base, root = server
    status, answer = call(base, "/search", {"query": TINY_QUERIES["q1"], "index": "bm25", "k": 3})
    expected = load_retriever(root / "bm25").search_one(TINY_QUERIES["q1"], 3)
    assert status == 200 and answer["index"] == "bm25" and answer["took_ms"] >= 0
    assert [(h["doc_id"], h["score"], h["text"]) for h in answer["results"]["q"]] == [(h.doc_id, h.score, h.text) for h in expected]
    status, batch = call(base, "/search", {"queries": TINY_QUERIES, "index": "dense", "k": 2})
    run = load_retriever(root / "dense").search(TINY_QUERIES, 2)
    assert status == 200 and {q: [h["doc_id"] for h in hits] for q, hits in batch["results"].items()} == \
        {q: [d for d, _ in run.top(q)] for q in TINY_QUERIES}


def test_a_hybrid_explains_each_members_rank(server):
    base, _ = server
    _, answer = call(base, "/search", {"query": "what causes scurvy", "index": "fused", "k": 2, "explain": True})
    top = answer["results"]["q"][0]
    assert top["doc_id"] == "d2" and set(top["members"]) == {"0:bm25", "1:dense"} and top["members"]["0:bm25"] == 1


def test_listing_health_and_documents(server):
    base, _ = server
    assert call(base, "/health") == (200, {"status": "ok", "indexes": ["bm25", "dense", "fused"]})
    status, listing = call(base, "/indexes")
    assert status == 200 and listing["dense"]["kind"] == "dense" and listing["bm25"]["doc_count"] == 8
    status, doc = call(base, "/doc/d2?index=bm25")
    assert status == 200 and doc["text"].startswith("Scurvy Scurvy is caused by a lack of vitamin C")


@pytest.mark.parametrize("path, body, code, message", [
    ("/search", {"query": "x", "index": "nope"}, 404, "no index named 'nope'; served: bm25, dense, fused"),
    ("/search", {"query": "x"}, 404, "several indexes are served"),
    ("/search", {"query": "x", "index": "bm25", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/search", {"query": "x", "queries": {"a": "y"}, "index": "bm25"}, 400, 'give "query" (one text) or "queries"'),
    ("/search", {"queries": {}, "index": "bm25"}, 400, '"queries" must hold 1 to 1000 queries'),
    ("/doc/missing?index=bm25", None, 404, "no document 'missing' in bm25"),
])
def test_bad_requests_get_a_4xx_with_one_line(server, path, body, code, message):
    base, _ = server
    status, answer = call(base, path, body)
    assert status == code and answer["error"].startswith(message) and "\n" not in answer["error"]
    assert "Traceback" not in answer["error"]


def test_malformed_json_is_a_422_not_a_500(server):
    base, _ = server
    status, answer = call(base, "/search", raw=b"{not json")
    assert status == 422 and "\n" not in answer["error"]


def test_concurrent_requests_on_every_kind_give_the_serial_answers(server):
    base, _ = server
    asks = [{"query": TINY_QUERIES[q], "index": index, "k": 3} for q in TINY_QUERIES for index in ("bm25", "dense", "fused")]
    serial = [call(base, "/search", ask)[1]["results"]["q"] for ask in asks]
    with ThreadPoolExecutor(8) as threads:
        parallel = list(threads.map(lambda ask: call(base, "/search", ask), asks * 4))
    assert all(status == 200 for status, _ in parallel)
    assert [[h["doc_id"] for h in answer["results"]["q"]] for _, answer in parallel] == [[h["doc_id"] for h in s] for s in serial] * 4


def test_index_names_must_be_distinct():
    with pytest.raises(SpecError, match="given twice"):
        parse_index_args(["a/bm25", "b/bm25"])


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_search_page_shows_hits_for_a_query(server):
    base, _ = server
    dom = render(f"{base}/?q=what+causes+scurvy&index=fused&k=3")
    assert 'class="meta hit">d2 · score' in dom and "member ranks: 0:bm25 1, 1:dense" in dom
    assert "3 hits from fused in" in dom and "vitamin C" in dom
