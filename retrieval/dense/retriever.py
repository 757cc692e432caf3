"""Dense retrieval: an encoder's document vectors in a faiss index, searched by inner product."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from indexes.docstore import read_docids
from indexes.faiss_index import (
    build_index, build_index_streamed, join_shards, load_index, new_index, save_index, search_index, set_build_params,
    set_search_params, shard_bounds,
    shard_list,
)
from indexes.manifest import inside
from retrieval.api import Retriever
from retrieval.data import Corpus, CorpusStream
from retrieval.dense.encoders import encoder_fingerprint, load_encoder
from retrieval.errors import IndexLoadError, SpecError


STREAM_CHUNK = 8192  # documents encoded and added at a time from a streamed corpus


PRESETS = {"fast": {"backend": "onnx", "quantize": "int8"}}


class DenseRetriever(Retriever):
    """Bi-encoder + faiss.

    Args:
        model: encoder model name or folder (see retrieval.models), or a saved method-module folder
            (adapter, matryoshka2d, lexsembridge, dse, dupmae, sitemb; see retrieval.dense.encoders).
        layers, dim: 2D Matryoshka inference: run only the first `layers` transformer layers and keep the
            first `dim` dimensions (re-normalised); None keeps the model's own (retrieval.dense.matryoshka2d).
        index: faiss factory string: "Flat" (exact), "HNSW32", "IVF256,Flat", "IVF256,PQ32", ...
        search_params: faiss search-time parameters, e.g. {"efSearch": 128} or {"nprobe": 16}.
        build_params: faiss build-time parameters, set before vectors are added: {"efConstruction": 200}
            for an HNSW graph (faiss's default 40).
        batch_size, query_prefix, doc_prefix, max_length: passed to the encoder.
        backend: "torch" (sentence-transformers) or "onnx" (onnxruntime; retrieval.dense.onnx_backend): the
            exported model is cached, and copied into a saved index's `onnx/` folder.
        quantize: with backend "onnx", None (fp32) or "int8" (dynamic quantisation).
        mmap: memory-map Flat codes when loading a saved index.
        preset: "fast": the ONNX int8 encoder (backend="onnx", quantize="int8"; docs/onnx.md: 2.11x torch's
            encoding speed, SciFact nDCG@10 0.6468 against 0.6451); stored expanded, as those two options.

    Example:
        >>> r = DenseRetriever(model="minilm", index="HNSW32")
        >>> r.index(corpus); r.save("runs/minilm-hnsw")
        >>> DenseRetriever(model="results/2dmse/model", layers=3, dim=128)  # a smaller, faster sub-model
        >>> DenseRetriever(model="minilm", backend="onnx", quantize="int8")  # onnxruntime on the CPU
    """

    kind = "dense"
    engines = ("local", "ray")
    index_options = ("shards", "workers", "ray_address")

    def __init__(
        self,
        model: str = "minilm",
        index: str = "Flat",
        search_params: dict | None = None,
        build_params: dict | None = None,
        batch_size: int = 32,
        query_prefix: str = "",
        doc_prefix: str = "",
        max_length: int | None = None,
        layers: int | None = None,
        dim: int | None = None,
        backend: str = "torch",
        quantize: str | None = None,
        mmap: bool = True,
        preset: str | None = None,
    ):
        from retrieval.dense.onnx_backend import BACKENDS, QUANTIZE

        if preset is not None:
            if preset not in PRESETS:
                raise SpecError(f"preset={preset!r}: choose one of {', '.join(PRESETS)}")
            if (backend, quantize) != ("torch", None):
                raise SpecError(f"preset={preset!r} sets backend and quantize itself; give one or the other")
            backend, quantize = PRESETS[preset]["backend"], PRESETS[preset]["quantize"]

        if backend not in BACKENDS:
            raise SpecError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
        if quantize not in QUANTIZE or (quantize and backend != "onnx"):
            raise SpecError(f"quantize={quantize!r}: 'int8' needs backend='onnx'; None is fp32")
        super().__init__(
            model=model, index=index, search_params=search_params or {}, batch_size=batch_size,
            query_prefix=query_prefix, doc_prefix=doc_prefix, max_length=max_length,
            **{k: v for k, v in (("layers", layers), ("dim", dim), ("build_params", build_params)) if v},
            **({"backend": backend, "quantize": quantize} if backend != "torch" else {}),
        )
        self.mmap = mmap
        self._onnx_file: Path | None = None  # a loaded index's exported model
        self._encoder = None
        self._faiss = None
        self._doc_ids: list[str] = []

    @property
    def encoder(self):
        if self._encoder is None:
            c = self.config
            encoder = load_encoder(
                c["model"], batch_size=c["batch_size"], query_prefix=c["query_prefix"],
                doc_prefix=c["doc_prefix"], max_length=c["max_length"],
            )
            if c.get("layers") or c.get("dim"):
                from retrieval.dense.matryoshka2d import Matryoshka2dEncoder

                encoder = Matryoshka2dEncoder(encoder, layers=c.get("layers"), dim=c.get("dim"))
            if c.get("backend") == "onnx":
                from retrieval.dense.onnx_backend import use_onnx

                encoder = use_onnx(encoder, quantize=c.get("quantize"), onnx_file=self._onnx_file)
            self._encoder = encoder
        return self._encoder

    def _model_fingerprint(self) -> str:
        # from the files, so loading an index does not load the model before the first query
        return encoder_fingerprint(self.config["model"])

    def _index(self, corpus: Corpus, engine: str = "local", shards: int | None = None, workers: int | None = None,
               ray_address: str | None = None) -> None:
        """engine "local" encodes here; "ray" encodes on Ray (retrieval.ray_engine) with `workers` actors
        at `ray_address` (None: a local Ray). `shards` faiss shards of successive documents (default: one
        locally, one per Ray worker), searched in parallel and merged (indexes.faiss_index.join_shards)."""
        if shards is not None and not 1 <= shards <= len(corpus):  # refused before encoding
            raise SpecError(f"shards={shards}: choose 1..{len(corpus)} (one shard needs at least one document)")
        if isinstance(corpus, CorpusStream) and engine == "local":
            if shards not in (None, 1):
                raise SpecError("a streamed corpus is indexed as one faiss index (shards=1)")
            self._use(build_index_streamed(self._encode_stream(corpus), self.config["index"],
                                           build_params=self.config.get("build_params")), corpus.ids)
            return
        texts = [doc.full_text for doc in corpus]
        if engine == "ray":
            from retrieval.ray_engine import encode_on_ray

            vectors, workers = encode_on_ray(self.config, texts, workers=workers, address=ray_address)
            shards = shards or min(workers, len(texts))
        else:
            vectors = self.encoder.encode_documents(texts, progress=True)
        bounds = shard_bounds(len(vectors), shards or 1)
        parts = [build_index(vectors[start:end], self.config["index"], build_params=self.config.get("build_params"))
                 for start, end in bounds]
        self._use(parts[0] if len(parts) == 1 else join_shards(parts), corpus.ids)

    def check_index_options(self, engine: str = "local", **options) -> None:
        """Also build an empty faiss index from the factory string and set `search_params` on it, so a typo
        fails before the corpus is encoded: this loads the model (for its dimension) but encodes nothing."""
        super().check_index_options(engine, **options)
        factory, params = self.config["index"], self.config["search_params"]
        if not isinstance(params, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in params.values()):
            raise SpecError(f"search_params={params!r}: expected faiss parameters with numbers, e.g. search_params.nprobe=16")
        built = self.config.get("build_params", {})
        if not isinstance(built, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in built.values()):
            raise SpecError(f"build_params={built!r}: expected faiss parameters with integers, e.g. build_params.efConstruction=200")
        dim = self.encoder.dim
        try:
            probe = new_index(dim, str(factory))
        except RuntimeError as err:
            raise SpecError(f"index={factory!r}: not a faiss index for dimension {dim}: {_faiss_reason(err)}") from None
        try:
            set_build_params(probe, built)
        except ValueError as err:
            raise SpecError(f"build_params={built!r} on index={factory!r}: {err}") from None
        try:
            set_search_params(probe, params)
        except (RuntimeError, ValueError) as err:
            raise SpecError(f"search_params={params!r} on index={factory!r}: {_faiss_reason(err)}") from None

    def _encode_stream(self, corpus: CorpusStream) -> Iterator[np.ndarray]:
        """Vectors of a streamed corpus, STREAM_CHUNK documents at a time (each chunk is dropped once added)."""
        with tqdm(total=len(corpus), desc="encoding (streamed)", unit="doc") as bar:
            for docs in corpus.batches(STREAM_CHUNK):
                yield self.encoder.encode_documents([doc.full_text for doc in docs], progress=False)
                bar.update(len(docs))

    def _use(self, faiss_index, doc_ids: list[str]) -> None:
        set_search_params(faiss_index, self.config["search_params"])
        self._faiss, self._doc_ids = faiss_index, doc_ids

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts)

    def _search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        qids = list(queries)
        scores, positions = search_index(self._faiss, self.encode_queries([queries[q] for q in qids]), k)
        return {
            qid: {self._doc_ids[p]: float(s) for s, p in zip(row_s, row_p) if p >= 0}
            for qid, row_s, row_p in zip(qids, scores, positions)
        }

    def _save_files(self, folder: Path) -> dict:
        shards = shard_list(self._faiss)
        extra = {}
        if len(shards) == 1:
            save_index(self._faiss, folder / "vectors.faiss")
        else:  # one file per shard, in row order
            (folder / "shards").mkdir()
            extra["shards"] = [f"shards/{i:05d}.faiss" for i in range(len(shards))]
            for shard, name in zip(shards, extra["shards"]):
                save_index(shard, folder / name)
        self._write_docstore(folder)
        if self.config.get("backend") == "onnx":  # the exported model travels with the index
            from retrieval.dense.onnx_backend import onnx_file

            name = f"onnx/model{'-' + self.config['quantize'] if self.config.get('quantize') else ''}.onnx"
            (folder / "onnx").mkdir()
            shutil.copyfile(onnx_file(self.encoder), folder / name)
            extra["onnx"] = {"file": name, "quantize": self.config.get("quantize"), "layers": self.config.get("layers")}
        return {
            "engine": "faiss",
            "model": {"name": self.config["model"], "sha256": self._model_fingerprint()},
            "dims": int(self._faiss.d),
            **extra,
        }

    def _load_files(self, folder: Path, manifest: dict) -> None:
        recorded, installed = manifest["model"]["sha256"], self._model_fingerprint()
        if recorded != installed:
            raise IndexLoadError(
                f"{folder}: built with model {manifest['model']['name']!r} whose weights hash {recorded[:12]}..., "
                f"but the installed model hashes {installed[:12]}...: re-index with this model"
            )
        if "onnx" in manifest:
            self._onnx_file = inside(folder, manifest, manifest["onnx"]["file"])
        files = manifest.get("shards", ["vectors.faiss"])
        ivf = "IVF" in self.config["index"]  # inverted lists searched from disk
        try:  # faiss's own refusals of what the (untrusted) manifest names: a file, search_params
            shards = [load_index(inside(folder, manifest, name), mmap=self.mmap, inverted_lists=ivf) for name in files]
            faiss_index = shards[0] if len(shards) == 1 else join_shards(shards)
            doc_ids = read_docids(folder)
            if faiss_index.ntotal != len(doc_ids) or faiss_index.ntotal != manifest["doc_count"]:
                raise IndexLoadError(f"{folder}: {faiss_index.ntotal} vectors but {len(doc_ids)} doc ids")
            self._use(faiss_index, doc_ids)
        except RuntimeError as err:
            raise IndexLoadError(f"{folder / 'manifest.json'}: faiss cannot use the saved index with this config: "
                                 f"{_faiss_reason(err)}") from None


def _faiss_reason(err: RuntimeError) -> str:
    """faiss's message without its C++ location prefix ("Error in <signature> at <file>:<line>: ")."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(err)).splitlines()[0]
