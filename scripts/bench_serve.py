"""Load test of `dengen serve` on loopback: N concurrent clients per index for a bounded time, latency
percentiles and QPS, errors counted; beside it the cold CLI query (`dengen search --index X --query ...`,
a fresh process each time), which is what a served query saves.

    python scripts/bench_serve.py --index bm25=runs/demo/bm25 --index dense=runs/demo/dense \\
        --index hybrid=runs/demo/hybrid --clients 4 --seconds 20 --out results/bench_serve.json
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import machine_info, write_json  # noqa: E402


def post(url: str, body: dict) -> tuple[int, float]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, (time.perf_counter() - start) * 1000


def load(url: str, index: str, queries: list[str], clients: int, seconds: float, k: int) -> dict:
    latencies: list[float] = []
    errors = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            status, ms = post(url + "/search", {"query": rng.choice(queries), "index": index, "k": k})
            with lock:
                (latencies if status == 200 else errors).append(ms if status == 200 else status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {"requests": len(latencies), "errors": len(errors), "qps": len(latencies) / wall,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "mean_ms": statistics.fmean(latencies)}


def cold_cli(path: str, query: str, repeats: int) -> dict:
    dengen = str(Path(sys.executable).with_name("dengen"))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([dengen, "search", "--index", path, "--query", query, "--k", "10"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "runs_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", action="append", required=True, help="NAME=PATH of a saved index (repeatable)")
    parser.add_argument("--data", default="../shared/data/scifact", help="queries to send (a BEIR folder)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cold", type=int, default=3, help="cold CLI queries per index")
    parser.add_argument("--out", default="results/bench_serve.json")
    args = parser.parse_args()

    from retrieval.data import load_queries

    queries = list(load_queries(args.data).values())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    dengen = str(Path(sys.executable).with_name("dengen"))
    started = time.perf_counter()
    server = subprocess.Popen([dengen, "serve", *args.index, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        print(server.stdout.readline().strip(), flush=True)  # "serving ..." once every index is loaded
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                time.sleep(0.2)
        startup = time.perf_counter() - started
        served = {}
        for item in args.index:
            name = item.split("=", 1)[0]
            post(url + "/search", {"query": queries[0], "index": name, "k": args.k})  # warm
            served[name] = load(url, name, queries, args.clients, args.seconds, args.k)
            print(name, json.dumps({k: round(v, 2) for k, v in served[name].items()}), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    cold = {}
    for item in args.index:
        name, path = item.split("=", 1)
        cold[name] = cold_cli(path, queries[0], args.cold)
        print(name, "cold CLI", json.dumps(cold[name]), flush=True)
    write_json(Path(args.out), {"machine": machine_info(("fastapi", "uvicorn")), "clients": args.clients,
                                "seconds": args.seconds, "server_startup_s": startup, "served": served, "cold_cli": cold,
                                "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
