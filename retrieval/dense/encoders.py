"""Encoders by name or saved folder, and the base of method wrappers.

An encoder is anything with `encode_queries(texts, progress=False)`, `encode_documents(texts, progress=True)`
(float32 arrays), `dim`, `fingerprint` and `describe()`. Method modules (adapter, matryoshka2d,
lexsembridge, dse, dupmae, sitemb) wrap an encoder and return one; a trained module is saved as a folder with a manifest
whose `kind` names the module, and `load_encoder(folder)` rebuilds the whole stack from it. The dense
retriever takes either as its `model`:

    >>> enc = load_encoder("minilm")                          # a plain sentence-transformers model
    >>> enc = load_encoder("results/adapter-scifact/rank-32") # a saved method module over its base
    >>> r = build_retriever("dense", model="results/adapter-scifact/rank-32")
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np

from indexes.manifest import IndexLoadError, is_saved_index, open_index, read_manifest, safe_relative

# saved-folder kind -> "module:function(folder, manifest, **encoder_options) -> encoder"
ENCODER_KINDS = {
    "residual-adapter": "retrieval.dense.adapter:load_encoder",
    "matryoshka2d": "retrieval.dense.matryoshka2d:load_encoder",
    "lexsembridge": "retrieval.dense.lexsembridge:load_encoder",
    "dse": "retrieval.dense.dse:load_encoder",
    "dupmae": "retrieval.dense.dupmae:load_encoder",
    "sitemb": "retrieval.dense.sitemb:load_encoder",
}


class EncoderWrapper:
    """Base of method wrappers: everything is the wrapped encoder's unless a subclass changes it.

    `model` and `max_length` pass through, so tools that read the sentence-transformers model (token
    counts for truncation warnings, the mteb adapter) work on a wrapped encoder too.
    """

    def __init__(self, base):
        self.base = base
        self.saved_fingerprint: str | None = None  # set by load_encoder: the saved folder's identity

    @property
    def model(self):
        return self.base.model

    @property
    def model_name(self) -> str:
        return getattr(self.base, "model_name", type(self.base).__name__)

    @property
    def max_length(self) -> int:
        return self.base.max_length

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def fingerprint(self) -> str:
        return self.saved_fingerprint or getattr(self.base, "fingerprint", "")

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.base.encode_queries(texts, progress=progress)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        return self.base.encode_documents(texts, progress=progress)

    def describe(self) -> dict:
        return {"base": self.base.describe()}


def saved_kind(model: str | Path) -> str | None:
    """The manifest kind when `model` is a saved folder, else None."""
    manifest = _saved_manifest(model)
    return None if manifest is None else manifest["kind"]


def _saved_manifest(model: str | Path) -> dict | None:
    """The (unverified) manifest when `model` is a saved folder the loading index may name, else None."""
    if not is_saved_index(model):
        return None
    from retrieval.models import check_model_reference

    check_model_reference(str(model))
    return read_manifest(Path(model), verify=False)


def folder_fingerprint(manifest: dict) -> str:
    """A saved folder's identity: sha256 over its manifest's file table (every file's sha256)."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()


def encoder_fingerprint(model: str | Path) -> str:
    """What a dense index records to catch a swapped encoder, without loading any model."""
    manifest = _saved_manifest(model)
    if manifest is not None:
        return folder_fingerprint(manifest)
    from retrieval.models import model_fingerprint, model_path

    return model_fingerprint(model_path(str(model)))


def load_encoder(model: str | Path, **options):
    """A registry name or model folder -> SentenceEncoder; a saved method folder -> its wrapped encoder.

    `options` (batch_size, query_prefix, doc_prefix, max_length, device) go to the innermost
    sentence-transformers encoder. A saved folder is verified (sizes, checksums) before it is used.
    """
    if not is_saved_index(model):
        from retrieval.dense.encoder import SentenceEncoder

        return SentenceEncoder(str(model), **options)
    from retrieval.models import check_model_reference

    check_model_reference(str(model))
    saved = open_index(model)  # read once: the generation checked is the one used
    kind = saved.manifest["kind"]
    if kind not in ENCODER_KINDS:
        saved.close()
        raise ValueError(f"{model}: a saved {kind!r} folder, not an encoder (encoder kinds: {', '.join(ENCODER_KINDS)})")
    module, name = ENCODER_KINDS[kind].split(":")
    encoder = getattr(importlib.import_module(module), name)(saved.folder, saved.manifest, **options)
    encoder.saved_fingerprint = folder_fingerprint(saved.manifest)
    encoder._saved = saved  # holds the generation it reads while it is loaded
    return encoder


def base_record(encoder) -> dict:
    """How a saved module names a base encoder it did not change: the model (registry name or folder) and its weight hash."""
    return {"model": str(encoder.model_name), "sha256": encoder.fingerprint}


def save_model_inside(tmp: Path, encoder, name: str = "model") -> dict:
    """Save a fine-tuned base's sentence-transformers model into the module folder; return its base record.

    The hash is taken of the files just written (the in-memory model differs from the folder it came from).
    """
    from retrieval.models import model_fingerprint

    encoder.model.save(str(tmp / name))
    return {"model": name, "inside": True, "sha256": model_fingerprint(tmp / name)}


def load_base(folder: Path, record: dict | None, **options):
    """The base encoder a saved module names; refuses a module without one, or one whose base weights changed."""
    if not record:
        raise IndexLoadError(f"{folder}: the saved module does not name its base encoder; save it with the module's save()")
    if record.get("inside") and not safe_relative(record["model"]):
        raise IndexLoadError(f"{folder}: its base model {record['model']!r} is not a folder inside the module")
    base = load_encoder(Path(folder) / record["model"] if record.get("inside") else record["model"], **options)
    if record.get("sha256") and base.fingerprint != record["sha256"]:
        raise IndexLoadError(
            f"{folder}: trained on {record['model']!r} with weights hashing {record['sha256'][:12]}..., "
            f"but that model now hashes {base.fingerprint[:12]}...: retrain the module"
        )
    return base
