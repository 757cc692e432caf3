"""What every scripts/bench_*.py writes beside its numbers: the machine, package versions, and atomic JSON."""
from __future__ import annotations

import importlib.metadata
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from indexes.manifest import atomic_write


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def machine_info(packages: tuple[str, ...], **extra) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: importlib.metadata.version(name) for name in packages},
        **extra,
        # another process may share the cores; the load average makes that visible
        "load_avg_1m_start": os.getloadavg()[0],
    }


def _burn() -> None:
    while True:
        pass


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` busy-loop processes on the cores while the block runs (a loaded machine), stopped after it."""
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(count)]
    for process in burners:
        process.start()
    try:
        yield
    finally:
        for process in burners:
            process.terminate()


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def write_json(path: Path, result: dict) -> None:
    atomic_write(path, json.dumps(result, indent=2) + "\n")


def status_bytes(field: str) -> int | None:
    """A /proc/self/status field (VmRSS, VmHWM: the peak resident set) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def minilm_tokenizer():
    """MiniLM's WordPiece tokenizer for indexing whole texts as token ids (FM-index benchmarks): nothing is
    fed to the model, so the length limit is lifted (no truncation, no length warning)."""
    from transformers import AutoTokenizer

    from retrieval.models import model_path

    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    tokenizer.model_max_length = 10**9
    return tokenizer
