"""ONNX Runtime backend for dense encoders: exported once with torch.onnx, run by onnxruntime, optionally int8.

The exported graph is the sentence-transformers pipeline itself (Transformer -> Pooling [-> Normalize]):
token ids and attention mask in, the sentence embedding out, so pooling is the model's own. Tokenisation
stays the model's (`SentenceTransformer.tokenize`, the same truncation). A 2D Matryoshka sub-model is
exported with only its first `layers` layers (`matryoshka2d.first_layers`), so the graph is the smaller
model; its `dim` truncation stays a numpy step. The export uses the model's eager attention (not torch's
fused SDPA kernel) so that onnxruntime's transformer optimizer recognises the attention blocks and fuses them
(Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu): the fused fp32 graph is what makes
onnxruntime faster than torch here (docs/onnx.md). int8 is onnxruntime's dynamic quantisation
(`quantize_dynamic`: int8 weights with per-channel scales, activations quantised per batch at run time).

Exports are cached in $DENGEN_CACHE/onnx (default ~/.cache/dengen/onnx), keyed by the model's weight hash,
the layers, the quantisation and the torch version. A saved dense index copies its file into `onnx/` and
names it in the manifest, so a loaded index runs that file and never exports.

    >>> r = build_retriever("dense", model="minilm", backend="onnx", quantize="int8")
    >>> r.index(corpus); r.save("runs/minilm-onnx")      # runs/minilm-onnx/onnx/model-int8.onnx
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from indexes.manifest import atomic_path
from retrieval.dense.encoders import EncoderWrapper

BACKENDS = ("torch", "onnx")
QUANTIZE = (None, "int8")
OPSET = 17
EXPORT_VERSION = 2  # 2: eager attention + onnxruntime's transformer fusions; bump when the exported graph changes
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cache_dir() -> Path:
    return Path(os.environ.get("DENGEN_CACHE", Path.home() / ".cache" / "dengen")) / "onnx"


@contextmanager
def eager_attention(st_model):
    """Run the transformer with its plain (eager) attention inside the block: SDPA exports as a graph that
    onnxruntime's fusion does not recognise. Restored after, since the model object is shared."""
    model = st_model[0].auto_model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def fuse_transformer(path: Path, config) -> None:
    """Rewrite `path` with onnxruntime's BERT-family fusions (a fused Attention op per layer, fused layer
    norms and GELU). A graph the optimizer does not recognise is left as exported: fusion is a speed-up only."""
    from onnxruntime.transformers import optimizer

    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden)
    fused.save_model_to_file(str(path))


def export_onnx(st_model, path: Path, layers: int | None = None) -> Path:
    """Write the sentence-transformers pipeline (its first `layers` layers) as ONNX at `path`, atomically,
    with onnxruntime's transformer fusions applied."""
    import torch

    from retrieval.dense.matryoshka2d import first_layers

    class Pipeline(torch.nn.Module):  # positional tensors in, the sentence embedding out
        def __init__(self, model, names):
            super().__init__()
            self.model, self.names = model, names

        def forward(self, *tensors):
            return self.model(dict(zip(self.names, tensors)))["sentence_embedding"]

    sample = st_model.tokenize(["an example sentence", "a second, somewhat longer example sentence"])
    names = [n for n in INPUTS if n in sample]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a crash mid-export never leaves a half-written model at `path`
        with first_layers(st_model, layers), eager_attention(st_model), torch.no_grad():
            torch.onnx.export(
                Pipeline(st_model.cpu().eval(), names), tuple(sample[n] for n in names), str(tmp),
                input_names=names, output_names=["sentence_embedding"], opset_version=OPSET, dynamo=False,
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "sentence_embedding": {0: "batch"}},
            )
        fuse_transformer(tmp, st_model[0].auto_model.config)
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # per-channel scales: one scale per weight matrix gave MiniLM cosines to torch of 0.88-0.97 on
    # ordinary sentences, per output channel 0.985-0.995 (an ad-hoc check, docs/onnx.md)
    # fused ops (com.microsoft domain) have no shape inference: their outputs are float tensors
    with atomic_path(path) as tmp:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    return path


def exported_file(base, layers: int | None, quantize: str | None) -> Path:
    """The cached ONNX file for `base` (a SentenceEncoder), exporting (and quantising) it on first use."""
    import torch

    key = hashlib.sha256(f"{base.fingerprint}|layers={layers}|opset={OPSET}|v{EXPORT_VERSION}|torch={torch.__version__}".encode()).hexdigest()[:16]
    fp32 = cache_dir() / f"{key}.onnx"
    if not fp32.is_file():
        export_onnx(base.model, fp32, layers)
    if quantize is None:
        return fp32
    quantized = cache_dir() / f"{key}-{quantize}.onnx"
    if not quantized.is_file():
        quantize_int8(fp32, quantized)
    return quantized


class OnnxEncoder(EncoderWrapper):
    """A SentenceEncoder's model run by onnxruntime: same tokenizer, prefixes, batch size and normalisation.

    Args:
        base: a `SentenceEncoder` (its tokenizer and settings are used; its torch model is only exported).
        layers: run only the first `layers` transformer layers (2D Matryoshka), None for all.
        quantize: None (fp32) or "int8".
        onnx_file: a file to run instead of the cached export (a saved index's copy).
    """

    def __init__(self, base, layers: int | None = None, quantize: str | None = None, onnx_file: str | Path | None = None):
        import onnxruntime as ort

        if quantize not in QUANTIZE:
            raise ValueError(f"quantize={quantize!r}: choose None (fp32) or 'int8'")
        super().__init__(base)
        self.layers, self.quantize = layers, quantize
        self.onnx_file = Path(onnx_file) if onnx_file else exported_file(base, layers, quantize)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(self.onnx_file), providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}

    @property
    def fingerprint(self) -> str:  # other vectors than torch's (int8 visibly): caches must not mix them
        return hashlib.sha256(f"{self.base.fingerprint}|onnx|layers={self.layers}|{self.quantize}".encode()).hexdigest()

    def _encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        base = self.base
        texts = [prefix + t for t in texts]
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as sentence-transformers: little padding
        out = np.zeros((len(texts), base.dim), dtype=np.float32)
        for start in tqdm(range(0, len(texts), base.batch_size), desc="onnx encoding", unit="batch",
                          disable=not progress or len(texts) <= base.batch_size):
            rows = order[start : start + base.batch_size]
            features = base.model.tokenize([texts[i] for i in rows])
            out[rows] = self.session.run(None, {k: v.numpy() for k, v in features.items() if k in self.input_names})[0]
        if base.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.base.query_prefix, progress)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        return self._encode(texts, self.base.doc_prefix, progress)

    def describe(self) -> dict:
        return {"base": self.base.describe(), "backend": "onnx", "layers": self.layers, "quantize": self.quantize}


def use_onnx(encoder, quantize: str | None = None, onnx_file: str | Path | None = None):
    """`encoder` with its sentence-transformers model run by onnxruntime.

    Takes a plain `SentenceEncoder` or a `Matryoshka2dEncoder` over one (its layers go into the export, its
    dim truncation stays); method wrappers that run the torch model themselves are refused."""
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.matryoshka2d import Matryoshka2dEncoder

    if isinstance(encoder, SentenceEncoder):
        return OnnxEncoder(encoder, quantize=quantize, onnx_file=onnx_file)
    if isinstance(encoder, Matryoshka2dEncoder) and isinstance(encoder.base, SentenceEncoder):
        onnx = OnnxEncoder(encoder.base, layers=encoder.layers, quantize=quantize, onnx_file=onnx_file)
        # the layers are inside the graph (the wrapper's own cut of the unused torch model changes nothing);
        # its fingerprint is then the ONNX encoder's, not the torch sub-model's
        return Matryoshka2dEncoder(onnx, layers=encoder.layers, dim=encoder.truncate_dim)
    raise ValueError(f"backend='onnx' runs sentence-transformers models and 2D Matryoshka sub-models; "
                     f"{type(encoder).__name__} runs its own torch code: use backend='torch'")


def onnx_file(encoder) -> Path:
    """The ONNX file an encoder (or a wrapper over one) runs."""
    while not isinstance(encoder, OnnxEncoder):
        if not hasattr(encoder, "base"):
            raise ValueError("this encoder does not run an ONNX model")
        encoder = encoder.base
    return encoder.onnx_file
