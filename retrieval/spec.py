"""Retriever specs: one string (or dict) names a retriever for the CLI, configs and hybrid members.

    bm25                                  a new BM25 retriever with defaults
    bm25:k1=1.2,b=0.75,fields=multifield  options as key=value
    dense:model=minilm,index=HNSW32,search_params.efSearch=128
    bm25+dense                            hybrid (RRF) of the members
    runs/bm25+runs/dense@fusion=weighted,weights=0.4;0.6   members may be saved indexes; options after @
    runs/scifact-minilm                   a saved index folder (a path with a separator, or index:PATH)
    config.yaml / config.json / '{"kind": "bm25"}'          a dict {"kind": ..., options...}

Values are read as YAML scalars (numbers, true/false); `a;b` is a list; `x.y=v` sets {"x": {"y": v}};
a comma not followed by `key=` belongs to the value (`index=IVF256,PQ32`).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from indexes.manifest import MANIFEST, is_saved_index
from retrieval.errors import SpecError


def _value(text: str, spec: str):
    if ";" in text:
        return [_value(part, spec) for part in text.split(";") if part]
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        raise SpecError(f"retriever spec {spec!r}: cannot read the value {text!r}") from None


def _options(text: str, spec: str) -> dict:
    items: list[str] = []
    for piece in filter(None, text.split(",")):
        if "=" in piece or not items:
            items.append(piece)
        else:  # a comma inside a value, as in faiss factory strings: index=IVF256,PQ32
            items[-1] += "," + piece
    options: dict = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"retriever spec {spec!r}: option {item!r} is not key=value")
        key, value = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _value(value.strip(), spec)
    return options


def spec_to_config(spec: str | dict) -> dict | str:
    """A config dict {"kind", ...options}, or the path of a saved index (returned as a str)."""
    if isinstance(spec, dict):
        if "kind" not in spec:
            raise SpecError(f"retriever config {spec!r} has no 'kind'")
        return dict(spec)
    from retrieval.api import RETRIEVERS

    spec = spec.strip()
    if spec.startswith("index:"):
        path = spec[len("index:"):]
        if not is_saved_index(path):
            raise SpecError(f"{spec}: no {MANIFEST} at {path!r}, so it is not a saved index")
        return path
    if spec in RETRIEVERS and Path(spec).exists():  # a kind name that is also a folder here: never guess
        raise SpecError(f"{spec!r} is both a retriever kind and a folder in {Path.cwd()}: write {spec}: for a new "
                        f"{spec} retriever, or ./{spec} (or index:{spec}) for the saved index")
    if is_saved_index(spec):
        return spec
    if spec.startswith("{"):
        try:
            return spec_to_config(_mapping(json.loads(spec), spec))
        except json.JSONDecodeError as err:
            raise SpecError(f"retriever spec {spec!r}: not valid JSON ({err.msg} at column {err.colno})") from None
    if spec.endswith((".json", ".yaml", ".yml")) and Path(spec).is_file():
        try:
            config = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise SpecError(f"{spec}: not a readable YAML/JSON config ({' '.join(str(err).split())})") from None
        return spec_to_config(_mapping(config, spec))
    if "+" in spec:
        members, _, options = spec.partition("@")
        return {"kind": "hybrid", "members": [m.strip() for m in members.split("+")], **_options(options, spec)}
    kind, colon, options = spec.partition(":")
    if "/" in kind or (not colon and Path(kind).exists()):  # "kind:" always means the kind
        raise SpecError(f"{spec}: no {MANIFEST} there, so it is not a saved index")
    return {"kind": kind, **_options(options, spec)}


def _mapping(config, source: str) -> dict:
    if not isinstance(config, dict):
        raise SpecError(f"{source}: a retriever config is a mapping {{kind: ..., options...}}, got {type(config).__name__}")
    return config


def parse_spec(spec: str | dict):
    """The retriever a spec names: loaded when it is a saved index, new (not yet indexed) otherwise."""
    from retrieval.api import build_retriever, load_retriever

    config = spec_to_config(spec)
    if isinstance(config, str):
        return load_retriever(config)
    return build_retriever(**config)
