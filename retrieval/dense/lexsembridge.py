"""LexSemBridge: token-aware modulation of a dense query embedding.

Zhan et al. 2025, "LexSemBridge: Fine-Grained Dense Representation Enhancement through Token-Aware
Embedding Augmentation", arXiv:2508.17858; reference code github.com/Jasaxion/LexSemBridge
(modeling/LexSemBridgeModeling.py). See docs/lexsembridge.md for what we follow and where we differ.

A |V|-dimensional lexical vector s of the query is mapped to a gate over the hidden dimensions and
multiplies the pooled embedding p element-wise:

    e  = softmax(W s + b)            W: d x |V| (the reference's `linearlayer`, an nn.Linear with bias)
    q' = normalize(e * p)            normalised because the reference trains with `normlized True`

Three ways to build s (the reference's `computation_method`):

    SLR  s_v = max(0, scale) if token v occurs in the query (CLS, PAD, UNK ignored), else 0;
         `scale` is one learned scalar (init 1.0)
    LLR  w_t = relu(u . h_t + c) per token state h_t (u: d -> 1 learned);  s_v = max_{t: id_t = v} w_t;
         s_CLS = s_PAD = s_UNK = 0
    CLR  s = log1p(relu(MLM-head(h_CLS)))  -- the masked-LM logits at position 0, the decoder tied to
         the word embeddings

Only queries are modulated by default (the reference's `vocab_weight_fusion_q True`,
`vocab_weight_fusion_p False`); documents stay plain encoder outputs. Unlike the reference, whose
`save()` writes only the transformer and so silently drops W, b, scale, u and the MLM head, a saved
`LexSemBridgeEncoder` folder holds the fine-tuned encoder (`model/`) AND the bridge (`bridge.safetensors`),
and `load_encoder` rebuilds both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexes.manifest import IndexLoadError, write_index_dir
from retrieval.dense.encoders import EncoderWrapper, load_base, save_model_inside

KIND = "lexsembridge"
METHODS = ("slr", "llr", "clr")
BRIDGE_FILE = "bridge.safetensors"
MODEL_DIR = "model"


def lexical_bridge_class():
    """The torch module (built lazily so that importing this file needs numpy only)."""
    global _LexicalBridge
    if _LexicalBridge is None:
        _LexicalBridge = _build_class()
    return _LexicalBridge


_LexicalBridge = None


def _build_class():
    import torch
    from torch import nn

    class LexicalBridge(nn.Module):
        """s (SLR / LLR / CLR) -> e = softmax(W s + b) -> q' = normalize(e * p).

        Args:
            method: "slr", "llr" or "clr".
            vocab_size: |V| of the tokenizer (the reference uses the model config's vocab_size).
            dim: hidden size d of the encoder (= embedding dimension; pooling does not change it).
            special_ids: token ids SLR and LLR ignore (the reference: CLS, PAD, UNK).
            scale: SLR's initial scale (reference default 1.0).
            layer_norm_eps: CLR's MLM-head LayerNorm epsilon (the encoder config's).
            normalize: L2-normalise q' (the reference with `normlized True`, as its README trains).
        """

        def __init__(self, method: str, vocab_size: int, dim: int, special_ids=(), scale: float = 1.0,
                     layer_norm_eps: float = 1e-12, normalize: bool = True):
            super().__init__()
            if method not in METHODS:
                raise ValueError(f"method must be one of {METHODS}, got {method!r}")
            self.method, self.vocab_size, self.dim = method, int(vocab_size), int(dim)
            self.normalize = bool(normalize)
            self.layer_norm_eps = float(layer_norm_eps)
            self.register_buffer("special_ids", torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long))
            self.linear = nn.Linear(self.vocab_size, self.dim)  # W, b: |V| -> d
            if method == "slr":
                self.scale = nn.Parameter(torch.tensor(float(scale)))
            elif method == "llr":
                self.token_weight = nn.Linear(self.dim, 1)  # the reference's `sparse_linear`
            else:  # the MLM head's transform and output bias; its decoder matrix is the word embeddings
                self.head_dense = nn.Linear(self.dim, self.dim)
                self.head_norm = nn.LayerNorm(self.dim, eps=self.layer_norm_eps)
                self.head_bias = nn.Parameter(torch.zeros(self.vocab_size))
                nn.init.normal_(self.head_dense.weight, std=0.02)  # BERT's initializer_range
                nn.init.zeros_(self.head_dense.bias)

        def config(self) -> dict:
            return {"method": self.method, "vocab_size": self.vocab_size, "dim": self.dim,
                    "special_ids": self.special_ids.tolist(), "layer_norm_eps": self.layer_norm_eps,
                    "normalize": self.normalize}

        def _not_special(self, input_ids):
            return ~torch.isin(input_ids, self.special_ids)

        def lexical_vector(self, input_ids, attention_mask, token_states=None, word_embeddings=None):
            """s: (batch, |V|)."""
            zeros = torch.zeros(input_ids.shape[0], self.vocab_size, dtype=torch.float32, device=input_ids.device)
            if self.method == "slr":
                weights = attention_mask.float() * self._not_special(input_ids).float() * self.scale
                return zeros.scatter_reduce(1, input_ids, weights, reduce="amax")  # include_self: max with 0
            if self.method == "llr":
                weights = torch.relu(self.token_weight(token_states)).squeeze(-1)  # (batch, seq)
                weights = weights * attention_mask.to(weights.dtype)
                s = zeros.to(weights.dtype).scatter_reduce(1, input_ids, weights, reduce="amax")
                return s.index_fill(1, self.special_ids, 0.0)
            hidden = self.head_norm(nn.functional.gelu(self.head_dense(token_states[:, 0])))
            logits = hidden @ word_embeddings.T + self.head_bias
            return torch.log1p(torch.relu(logits))

        def gate(self, s):
            """e = softmax(W s + b) over the d hidden dimensions."""
            return torch.softmax(self.linear(s), dim=-1)

        def forward(self, pooled, input_ids, attention_mask, token_states=None, word_embeddings=None):
            e = self.gate(self.lexical_vector(input_ids, attention_mask, token_states, word_embeddings))
            out = e * pooled
            return nn.functional.normalize(out, dim=-1) if self.normalize else out

    return LexicalBridge


def make_bridge(st_model, method: str, scale: float = 1.0, normalize: bool = True, seed: int = 0):
    """A fresh bridge sized for a sentence-transformers model (vocab, dim, special ids from its tokenizer)."""
    import torch

    tokenizer = st_model.tokenizer
    config = transformer_of(st_model).config
    special = [i for i in (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) if i is not None]
    torch.manual_seed(seed)
    return lexical_bridge_class()(method, config.vocab_size, st_model.get_embedding_dimension(), special, scale=scale,
                                  layer_norm_eps=getattr(config, "layer_norm_eps", 1e-12), normalize=normalize)


def transformer_of(st_model):
    """The Hugging Face model inside a sentence-transformers model's first module."""
    return st_model[0].auto_model


def word_embeddings_of(st_model):
    return transformer_of(st_model).get_input_embeddings().weight


def bridged_queries(st_model, bridge, features: dict):
    """q' for tokenized queries, with gradients (training) or without (inference under no_grad)."""
    out = st_model(features)
    return bridge(out["sentence_embedding"], out["input_ids"], out["attention_mask"],
                  token_states=out["token_embeddings"],
                  word_embeddings=word_embeddings_of(st_model) if bridge.method == "clr" else None)


def tokenize(st_model, texts: list[str]) -> dict:
    """sentence-transformers features (truncated to the model's max_seq_length)."""
    prepare = getattr(st_model, "preprocess", None) or st_model.tokenize  # `tokenize` is deprecated in ST 6
    return prepare(texts)


def to_device(features: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


class LexSemBridgeEncoder(EncoderWrapper):
    """An encoder whose query vectors are modulated by a LexSemBridge gate; documents too if `documents`.

    The base must be a sentence-transformers `SentenceEncoder` (the bridge needs token ids and token states,
    not only the pooled vector). Save with `save(folder)`: the base's (fine-tuned) weights go to
    `folder/model`, the bridge to `bridge.safetensors`; `encoders.load_encoder(folder)` rebuilds it.

    Example:
        >>> enc = LexSemBridgeEncoder(SentenceEncoder("minilm"), make_bridge(SentenceEncoder("minilm").model, "slr"))
        >>> enc.encode_queries(["what causes scurvy?"]).shape
        (1, 384)
    """

    def __init__(self, base, bridge, documents: bool = False, info: dict | None = None):
        if bridge.dim != base.dim:
            raise ValueError(f"bridge dimension {bridge.dim} differs from the encoder's {base.dim}")
        super().__init__(base)
        self.bridge = bridge.eval()
        self.documents = bool(documents)
        self.info = dict(info or {})

    def _bridged(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        import torch
        from tqdm import tqdm

        st = self.base.model
        st.eval()
        batch = getattr(self.base, "batch_size", 32)
        device = next(st.parameters()).device
        self.bridge.to(device)
        chunks = []
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), batch), disable=not progress, desc="lexsembridge"):
                features = to_device(tokenize(st, [prefix + t for t in texts[start : start + batch]]), device)
                chunks.append(bridged_queries(st, self.bridge, features).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._bridged(texts, getattr(self.base, "query_prefix", ""), progress)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        if self.documents:
            return self._bridged(texts, getattr(self.base, "doc_prefix", ""), progress)
        return self.base.encode_documents(texts, progress=progress)

    def describe(self) -> dict:
        return {"base": self.base.describe(), "module": KIND, "method": self.bridge.method, "documents": self.documents}

    def save(self, folder: str | Path) -> dict:
        """Write model/ (sentence-transformers save of the base), bridge.safetensors and manifest.json atomically."""
        from safetensors.torch import save_file

        def fill(tmp: Path) -> dict:
            base = save_model_inside(tmp, self.base, MODEL_DIR)
            state = {k: v.detach().cpu().contiguous() for k, v in self.bridge.state_dict().items()}
            save_file(state, str(tmp / BRIDGE_FILE))
            return {"kind": KIND, "bridge": self.bridge.config(), "documents": self.documents, "dim": self.dim,
                    "base": base, "info": self.info}

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused


def load_bridge(folder: Path, manifest: dict):
    """The bridge module of a saved folder (weights checked against the manifest's config)."""
    from safetensors.torch import load_file

    cfg = manifest.get("bridge")
    if not cfg or cfg.get("method") not in METHODS:
        raise IndexLoadError(f"{folder}: manifest has no valid 'bridge' config (method one of {METHODS})")
    bridge = lexical_bridge_class()(cfg["method"], cfg["vocab_size"], cfg["dim"], cfg["special_ids"],
                                    layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), normalize=cfg.get("normalize", True))
    try:
        state = load_file(str(Path(folder) / BRIDGE_FILE))
        bridge.load_state_dict(state, strict=True)
    except (OSError, RuntimeError) as err:
        raise IndexLoadError(f"{folder}: unreadable bridge weights ({err})") from None
    return bridge.eval()


def load_encoder(folder: Path, manifest: dict, **options) -> LexSemBridgeEncoder:
    """`encoders.load_encoder` for a saved LexSemBridge folder: the fine-tuned base (options go there) + bridge."""
    base = load_base(folder, manifest.get("base"), **options)
    return LexSemBridgeEncoder(base, load_bridge(folder, manifest), documents=manifest.get("documents", False),
                               info=manifest.get("info"))
