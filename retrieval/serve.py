"""`dengen serve`: saved indexes behind HTTP, loaded once, with a search page.

    dengen serve runs/bm25 runs/dense hybrid=runs/hybrid --port 8000     # binds 127.0.0.1 unless --host

Endpoints (JSON in and out; hits have the Python API's shape: doc_id, score, text):
    POST /search   {"query": "..."} or {"queries": {"q1": "...", ...}}, "k" (default 10), "index" (a name; may be
                   left out when one index is served), "explain" (a hybrid's member ranks beside each hit)
    GET  /doc/{id}?index=NAME   the document's text
    GET  /indexes               each index's describe()
    GET  /health
    GET  /                      the search page (?q=...&index=...&k=... searches on load)

A bad request is a 4xx with {"error": one line}; an unexpected failure a 500 with the error's type only (the
traceback goes to the server's log). Every index is searched under its own lock: requests run in parallel
threads and not every engine is safe for concurrent searches (pyjnius, faiss with a shared scratch).
"""
from __future__ import annotations

import html
import logging
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from retrieval.errors import SpecError

log = logging.getLogger("dengen.serve")
MAX_K = 1000
MAX_BATCH = 1000


class SearchRequest(BaseModel):  # at module level: FastAPI resolves the endpoint's annotation here
    query: str | None = None
    queries: dict[str, str] | None = None
    k: int = Field(10, ge=1, le=MAX_K)
    index: str | None = None
    explain: bool = False


def parse_index_args(items: list[str]) -> dict[str, Path]:
    """NAME=PATH or PATH (named by its folder) -> {name: path}; names must be distinct."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).resolve().name, item
        if not name or name in named:
            raise SpecError(f"index name {name!r} given twice (or empty): name them as NAME=PATH")
        named[name] = Path(path)
    if not named:
        raise SpecError("serve needs at least one saved index")
    return named


class IndexPool:
    """The served indexes, loaded at start, each with its lock."""

    def __init__(self, indexes: dict[str, Path]):
        from retrieval.api import load_retriever

        self.retrievers = {name: load_retriever(path) for name, path in indexes.items()}
        self.locks = {name: threading.Lock() for name in indexes}

    def pick(self, name: str | None):
        if name is None:
            if len(self.retrievers) != 1:
                raise LookupError(f"several indexes are served: say which with \"index\" ({', '.join(self.retrievers)})")
            name = next(iter(self.retrievers))
        if name not in self.retrievers:
            raise LookupError(f"no index named {name!r}; served: {', '.join(self.retrievers)}")
        return name, self.retrievers[name]

    def search(self, name: str | None, queries: dict[str, str], k: int, explain: bool = False) -> dict:
        name, retriever = self.pick(name)
        start = time.perf_counter()
        with self.locks[name]:
            run = retriever.search(queries, k)
            members = {}
            if explain and retriever.kind == "hybrid":  # where each member ranked the fused hits
                for i, member in enumerate(retriever.members):
                    ranked = member.search(queries, max(k, retriever.config["depth"]))
                    members[f"{i}:{member.kind}"] = {q: {d: r for r, (d, _) in enumerate(ranked.top(q), start=1)} for q in queries}
        took = (time.perf_counter() - start) * 1000
        results = {}
        for qid in queries:
            hits = []
            for doc_id, score in run.top(qid):
                hit = {"doc_id": doc_id, "score": score, "text": retriever.doc_text(doc_id)}
                if members:
                    hit["members"] = {m: ranks[qid].get(doc_id) for m, ranks in members.items()}
                hits.append(hit)
            results[qid] = hits
        return {"index": name, "k": k, "took_ms": round(took, 2), "results": results}


def create_app(pool: IndexPool):
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="dengen", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")},
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        log.exception("request failed: %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(err).__name__}); see the server's log"}, status_code=500)

    @app.post("/search")
    def search(body: SearchRequest):
        if (body.query is None) == (body.queries is None):
            raise HTTPException(400, 'give "query" (one text) or "queries" ({id: text}), not both')
        queries = {"q": body.query} if body.query is not None else body.queries
        if not queries or len(queries) > MAX_BATCH:
            raise HTTPException(400, f'"queries" must hold 1 to {MAX_BATCH} queries')
        try:
            return pool.search(body.index, queries, body.k, body.explain)
        except LookupError as err:
            raise HTTPException(404, str(err).strip("'\"")) from None
        except SpecError as err:
            raise HTTPException(400, str(err)) from None

    @app.get("/doc/{doc_id}")
    def doc(doc_id: str, index: str | None = None):
        try:
            name, retriever = pool.pick(index)
        except LookupError as err:
            raise HTTPException(404, str(err).strip("'\"")) from None
        text = retriever.doc_text(doc_id)
        if text is None:
            raise HTTPException(404, f"no document {doc_id!r} in {name}")
        return {"index": name, "doc_id": doc_id, "text": text}

    @app.get("/indexes")
    def indexes():
        return {name: {**r.describe(), "doc_count": r.doc_count} for name, r in pool.retrievers.items()}

    @app.get("/health")
    def health():
        return {"status": "ok", "indexes": list(pool.retrievers)}

    @app.get("/", response_class=HTMLResponse)
    def page():
        options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)} ({html.escape(r.kind)})</option>'
                          for n, r in pool.retrievers.items())
        return PAGE.replace("{options}", options)

    return app


def serve(indexes: dict[str, Path], host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    pool = IndexPool(indexes)
    print(f"serving {', '.join(f'{n} ({r.kind}, {r.doc_count} docs)' for n, r in pool.retrievers.items())} "
          f"at http://{host}:{port}/", flush=True)
    uvicorn.run(create_app(pool), host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dengen search</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
form { display: flex; gap: .5em; margin-bottom: 1em; }
input[name=q] { flex: 1; font-size: 1.1em; padding: .3em; }
ol { padding-left: 1.5em; } li { margin-bottom: .8em; }
.meta { color: #666; font-size: .85em; } .error { color: #b00; }
</style></head>
<body>
<h1>dengen search</h1>
<form id="search"><input name="q" placeholder="query" autofocus>
<select name="index">{options}</select><input name="k" type="number" value="10" min="1" max="1000" style="width:4em">
<button>Search</button></form>
<p id="status" class="meta"></p>
<ol id="hits"></ol>
<script>
const form = document.getElementById("search");
async function run(q, index, k) {
  const status = document.getElementById("status"), list = document.getElementById("hits");
  const start = performance.now();
  const response = await fetch("/search", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({query: q, index, k: +k, explain: true})});
  const data = await response.json();
  list.innerHTML = "";
  if (!response.ok) { status.textContent = data.error; status.className = "error"; return; }
  const hits = data.results.q;
  status.className = "meta";
  status.textContent = `${hits.length} hits from ${data.index} in ${data.took_ms} ms (${Math.round(performance.now() - start)} ms here)`;
  for (const hit of hits) {
    const item = document.createElement("li"), head = document.createElement("div"), text = document.createElement("div");
    head.className = "meta hit";
    const members = hit.members ? " · member ranks: " + Object.entries(hit.members).map(([m, r]) => `${m} ${r ?? "–"}`).join(", ") : "";
    head.textContent = `${hit.doc_id} · score ${hit.score.toFixed(4)}${members}`;
    text.textContent = (hit.text || "").slice(0, 400);
    item.append(head, text);
    list.append(item);
  }
}
form.addEventListener("submit", event => {
  event.preventDefault();
  const data = new FormData(form);
  history.replaceState(null, "", "?" + new URLSearchParams(data));
  run(data.get("q"), data.get("index"), data.get("k"));
});
const params = new URLSearchParams(location.search);  // a shared link searches on load
if (params.get("q")) {
  for (const [key, value] of params) if (form.elements[key]) form.elements[key].value = value;
  form.requestSubmit();
}
</script>
</body></html>
"""
