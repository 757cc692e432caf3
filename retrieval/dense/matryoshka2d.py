"""2D Matryoshka inference: a sub-model of the first `layers` transformer layers, first `dim` dimensions.

Li et al. 2024, "2D Matryoshka Sentence Embeddings" (2DMSE), arXiv:2402.14776. A model trained with
2DMSE (see training/matryoshka2d.py) gives usable sentence embeddings at every depth and every prefix
length of the vector, so one model serves a grid of (speed, size) trade-offs:

    h_k    = hidden states after the first k transformer layers      (layers k = 1..L; L = 6 for MiniLM)
    e_k    = pool(h_k)                                               (the model's own pooling: mean for MiniLM)
    e_k,d  = e_k[:d] / ||e_k[:d]||_2                                  (first d dimensions, unit length)

`Matryoshka2dEncoder` really runs only the first k layers (it swaps the encoder's layer list for its first k
entries during each encode call and restores it afterwards, also on errors), so fewer layers is faster.
It wraps any encoder whose `.model` is a sentence-transformers model; the untrained base works too, which is
the baseline the trained module is compared with (docs/matryoshka2d.md).

Saved module (kind "matryoshka2d"): the fine-tuned sentence-transformers model in `model/` plus default
`layers`/`dim` in the manifest. A dense retriever's own `layers=`/`dim=` options override those defaults
(they are not stacked): `dense:model=results/matryoshka2d/model,layers=3,dim=128`.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np

from indexes.manifest import IndexLoadError, write_index_dir
from retrieval.dense.encoders import EncoderWrapper, load_base, save_model_inside

KIND = "matryoshka2d"
MODEL_DIR = "model"


def truncate_normalise(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """Keep the first `dim` columns (all when None) and scale each row to unit L2 length; float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dim is not None:
        vectors = vectors[..., :dim]
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def transformer_layers(st_model):
    """(owner module, attribute name) of the transformer layer list of a sentence-transformers model."""
    auto_model = st_model[0].auto_model
    for owner_path, name in (("encoder", "layer"), ("", "layers"), ("transformer", "layer")):
        owner = auto_model
        for part in filter(None, owner_path.split(".")):
            owner = getattr(owner, part, None)
        if owner is not None and hasattr(owner, name):
            return owner, name
    raise TypeError(f"{type(auto_model).__name__}: no transformer layer list (encoder.layer / layers) to truncate")


def num_layers(st_model) -> int:
    owner, name = transformer_layers(st_model)
    return len(getattr(owner, name))


@contextlib.contextmanager
def first_layers(st_model, k: int | None):
    """Run `st_model` with only its first `k` transformer layers inside the block; restores the full list after.

    The model object is shared (a base encoder may be used elsewhere), so nothing stays changed.
    """
    if k is None:
        yield
        return
    import torch

    owner, name = transformer_layers(st_model)
    full = getattr(owner, name)
    if not 1 <= k <= len(full):
        raise ValueError(f"layers={k}: the model has {len(full)} transformer layers; choose 1..{len(full)}")
    setattr(owner, name, torch.nn.ModuleList(list(full)[:k]))
    try:
        yield
    finally:
        setattr(owner, name, full)


def pool_layer(st_model, features: dict, k: int):
    """Sentence embeddings from hidden state k (0: the embedding layer, k: after k layers) of a transformer output.

    `features` is the output of `st_model[0]` run with `output_hidden_states`; the model's own modules after
    the transformer (pooling, Normalize, ...) turn that layer's token embeddings into sentence embeddings.
    """
    layer_features = {**features, "token_embeddings": features["all_layer_embeddings"][k]}
    for module in list(st_model)[1:]:
        layer_features = module(layer_features)
    return layer_features["sentence_embedding"]


def all_layer_embeddings(st_model, texts: list[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Pooled embeddings after every transformer layer from ONE forward pass: (layers, n, hidden) float32.

    Row k-1 is what the model gives with only its first k layers (before truncation to `dim` and
    re-normalisation): hidden state k through the model's own pooling and later modules. Used to score the
    whole (layers x dim) grid without re-encoding a corpus per layer; tests check it against
    `Matryoshka2dEncoder`, which really truncates.
    """
    import torch
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths batch together
    device = st_model.device
    transformer = st_model[0]
    out = None
    st_model.eval()
    config = transformer.auto_model.config
    saved_flag = config.output_hidden_states
    config.output_hidden_states = True
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc="all-layer embeddings", disable=not progress):
                rows = order[start : start + batch_size]
                features = st_model.preprocess([texts[i] for i in rows])
                features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
                features = transformer(features)
                hidden = features["all_layer_embeddings"]  # embeddings output, then one per layer
                for k in range(1, len(hidden)):
                    pooled = pool_layer(st_model, features, k).float().cpu().numpy()
                    if out is None:
                        out = np.zeros((len(hidden) - 1, len(texts), pooled.shape[1]), dtype=np.float32)
                    out[k - 1, rows] = pooled
    finally:
        config.output_hidden_states = saved_flag
    if out is None:
        raise ValueError("no texts to encode")
    return out


class Matryoshka2dEncoder(EncoderWrapper):
    """An encoder running only the first `layers` transformer layers and keeping the first `dim` dimensions.

    Args:
        base: an encoder whose `.model` is a sentence-transformers model (SentenceEncoder, a loaded saved
            module, ...). A `Matryoshka2dEncoder` base is unwrapped: the given layers/dim replace its own,
            None keeps its own.
        layers: transformer layers to run, 1..num_layers (None: all).
        dim: leading dimensions to keep, 1..hidden (None: all). Outputs are always L2-normalised.

    Example:
        >>> from retrieval.dense.encoder import SentenceEncoder
        >>> enc = Matryoshka2dEncoder(SentenceEncoder("minilm"), layers=3, dim=128)
        >>> enc.encode_queries(["what causes scurvy?"]).shape
        (1, 128)
    """

    def __init__(self, base, layers: int | None = None, dim: int | None = None):
        saved = None
        if isinstance(base, Matryoshka2dEncoder):
            layers = base.layers if layers is None else layers
            dim = base.truncate_dim if dim is None else dim
            saved, base = base.saved_fingerprint, base.base
        super().__init__(base)
        self.saved_fingerprint = saved
        self.num_layers = num_layers(base.model)
        self.hidden = int(base.dim)
        for name, value, top in (("layers", layers, self.num_layers), ("dim", dim, self.hidden)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top):
                raise ValueError(f"{name}={value!r}: must be an integer in 1..{top} for this model ({base.model_name})")
        self.layers = None if layers is None else int(layers)
        self.truncate_dim = None if dim is None else int(dim)

    @property
    def dim(self) -> int:
        return self.truncate_dim or self.hidden

    @property
    def fingerprint(self) -> str:
        base = self.saved_fingerprint or getattr(self.base, "fingerprint", "")
        if self.layers in (None, self.num_layers) and self.truncate_dim in (None, self.hidden):
            return base
        # a sub-model gives other vectors: caches keyed by fingerprint must not mix them up
        return hashlib.sha256(f"{base}|layers={self.layers}|dim={self.truncate_dim}".encode()).hexdigest()

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        with first_layers(self.base.model, self.layers):
            vectors = self.base.encode_queries(texts, progress=progress)
        return truncate_normalise(vectors, self.truncate_dim)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        with first_layers(self.base.model, self.layers):
            vectors = self.base.encode_documents(texts, progress=progress)
        return truncate_normalise(vectors, self.truncate_dim)

    def describe(self) -> dict:
        return {
            "base": self.base.describe(),
            "module": KIND,
            "layers": self.layers or self.num_layers,
            "dim": self.dim,
        }

    def save(self, folder: str | Path, info: dict | None = None) -> dict:
        """Write the (fine-tuned) model into `folder/model/` and a manifest with the default layers and dim.

        The base must be a plain `SentenceEncoder`: only its sentence-transformers model is saved, so any
        other wrapper between (an adapter, say) would be silently lost.
        """
        from retrieval.dense.encoder import SentenceEncoder

        if not isinstance(self.base, SentenceEncoder):
            raise TypeError(f"can only save a Matryoshka2dEncoder over a SentenceEncoder, not {type(self.base).__name__}")

        def fill(tmp: Path) -> dict:
            return {
                "kind": KIND,
                "base": save_model_inside(tmp, self.base, MODEL_DIR),
                "layers": self.layers or self.num_layers,
                "dim": self.dim,
                "num_layers": self.num_layers,
                "hidden": self.hidden,
                "info": dict(info or {}),
            }

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused


def load_encoder(folder: Path, manifest: dict, **options) -> Matryoshka2dEncoder:
    """`encoders.load_encoder` for a saved 2DMSE module: its model (options go there) at the saved layers/dim."""
    base = load_base(folder, manifest.get("base"), **options)
    try:
        return Matryoshka2dEncoder(base, layers=manifest.get("layers"), dim=manifest.get("dim"))
    except ValueError as err:
        raise IndexLoadError(f"{folder}: manifest {err}") from None
