"""DupMAE: a [CLS] vector joined with a dimension-reduced ordinary-token (OT) vector.

Xiao, Liu, Shao, Cao 2023, "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented
Language Models" (DupMAE), arXiv:2211.08769 (ACL 2023); reference code github.com/staoxiao/RetroMAE
(src/pretrain/modeling_duplex.py, src/pretrain/data.py). Pre-training lives in training/dupmae.py; this
module is the encoder that the pre-trained and fine-tuned model becomes. See docs/dupmae.md.

For a text with last-layer states h_0 ([CLS]), h_1 .. h_n (ordinary tokens, the reference's positions 1:)

    e_cls = h_0
    e_ot  = max_{t >= 1} MLM-head(h_t)              |V| logits, max-pooled over the positions (reference `ot_embedding`)
    r_ot  = [max(e_ot[bucket_j]) for j in 1..k]     dimension reduction: the |V| logits cut into k (near-)equal,
                                                    contiguous buckets, the max of each kept (k = `ot_dim`)
    joint = [e_cls / |e_cls| ; r_ot / |r_ot|] / sqrt(2)

so <joint_q, joint_d> = (cos(cls_q, cls_d) + cos(ot_q, ot_d)) / 2: the paper scores a pair by the sum of the
[CLS] and OT inner products; each half is normalised here so neither dominates by scale (see the docs).
`representation` picks "cls" (the normalised e_cls), "ot" (the normalised r_ot) or "joint".

A saved `DupMAEEncoder` folder (kind "dupmae") holds `model/` (a sentence-transformers save of the encoder,
[CLS] pooling) and `mlm_head.safetensors` (the MLM head's transform and output bias; its output matrix is
the word embeddings, tied as in BERT); `encoders.load_encoder(folder)` rebuilds it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from indexes.manifest import IndexLoadError, write_index_dir
from retrieval.dense.encoders import EncoderWrapper, load_base, save_model_inside

KIND = "dupmae"
REPRESENTATIONS = ("cls", "ot", "joint")
HEAD_FILE = "mlm_head.safetensors"
MODEL_DIR = "model"


def ot_embedding(logits, attention_mask):
    """e_ot: max over positions of MLM logits (batch, seq, |V|) -> (batch, |V|), padding excluded.

    As the reference: padded positions get -1000 added before the max; callers pass the ordinary
    positions (`[:, 1:]`, i.e. everything after [CLS]).
    """
    mask = (1 - attention_mask.unsqueeze(-1).to(logits.dtype)) * -1000.0
    return (logits + mask).max(dim=1).values


def reduce_ot(ot, dim: int):
    """r_ot: the |V| values cut into `dim` contiguous buckets (value v in bucket floor(v * dim / |V|), so the
    sizes differ by at most one and none is empty), the max of each kept."""
    import torch

    vocab = ot.shape[-1]
    bucket = (torch.arange(vocab, device=ot.device) * dim // vocab).expand_as(ot)
    out = torch.full((*ot.shape[:-1], dim), float("-inf"), dtype=ot.dtype, device=ot.device)
    return out.scatter_reduce(-1, bucket, ot, reduce="amax", include_self=True)


def combine(cls, reduced_ot, representation: str):
    """The retrieval vector from e_cls and r_ot (each L2-normalised; joint scaled to unit length)."""
    import torch

    cls = torch.nn.functional.normalize(cls, dim=-1)
    ot = torch.nn.functional.normalize(reduced_ot, dim=-1)
    if representation == "cls":
        return cls
    if representation == "ot":
        return ot
    if representation == "joint":
        return torch.cat([cls, ot], dim=-1) / math.sqrt(2.0)
    raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")


def split_joint(vectors: np.ndarray, cls_dim: int) -> dict[str, np.ndarray]:
    """The cls / ot / joint vectors recovered from joint ones (one encoding pass gives all three)."""
    scale = np.float32(math.sqrt(2.0))
    return {"cls": np.ascontiguousarray(vectors[:, :cls_dim] * scale),
            "ot": np.ascontiguousarray(vectors[:, cls_dim:] * scale), "joint": vectors}


def mlm_head_class():
    global _MLMHead
    if _MLMHead is None:
        _MLMHead = _build_head()
    return _MLMHead


_MLMHead = None


def _build_head():
    import torch
    from torch import nn

    class MLMHead(nn.Module):
        """BERT's MLM head without its output matrix: dense -> gelu -> LayerNorm, then `@ E^T + bias`
        with E the encoder's word embeddings (tied, as BertForMaskedLM ties them)."""

        def __init__(self, hidden: int, vocab_size: int, layer_norm_eps: float = 1e-12):
            super().__init__()
            self.hidden, self.vocab_size, self.layer_norm_eps = int(hidden), int(vocab_size), float(layer_norm_eps)
            self.dense = nn.Linear(self.hidden, self.hidden)
            self.norm = nn.LayerNorm(self.hidden, eps=self.layer_norm_eps)
            self.bias = nn.Parameter(torch.zeros(self.vocab_size))

        def config(self) -> dict:
            return {"hidden": self.hidden, "vocab_size": self.vocab_size, "layer_norm_eps": self.layer_norm_eps}

        def forward(self, states, word_embeddings):
            return self.norm(nn.functional.gelu(self.dense(states))) @ word_embeddings.T + self.bias

        def load_from_mlm(self, mlm_model):
            """Copy a BertForMaskedLM's head transform and output bias."""
            head = mlm_model.cls.predictions
            self.dense.load_state_dict(head.transform.dense.state_dict())
            self.norm.load_state_dict(head.transform.LayerNorm.state_dict())
            self.bias.data.copy_(head.bias.data if head.bias is not None else head.decoder.bias.data)
            return self

    return MLMHead


def transformer_of(st_model):
    return st_model[0].auto_model


def tokenize(st_model, texts: list[str]) -> dict:
    prepare = getattr(st_model, "preprocess", None) or st_model.tokenize  # `tokenize` is deprecated in ST 6
    return prepare(texts)


def duplex_parts(st_model, head, features: dict):
    """(e_cls, e_ot) for tokenized texts: e_cls (batch, d), e_ot (batch, |V|), with gradients if enabled."""
    states = st_model[0](dict(features))["token_embeddings"]
    logits = head(states[:, 1:], transformer_of(st_model).get_input_embeddings().weight)
    return states[:, 0], ot_embedding(logits, features["attention_mask"][:, 1:])


def represent(st_model, head, features: dict, ot_dim: int, representation: str):
    cls, ot = duplex_parts(st_model, head, features)
    return combine(cls, reduce_ot(ot, ot_dim), representation)


class DupMAEEncoder(EncoderWrapper):
    """Encodes with the DupMAE representation ("cls", "ot" or "joint") of a [CLS]-pooled encoder + MLM head.

    The base is a `SentenceEncoder` over a sentence-transformers folder (its pooling is not used: the
    vectors are computed here from the token states). Save with `save(folder)`.

    Example:
        >>> enc = load_encoder("results/dupmae/dupmae-ft")            # encoders.load_encoder
        >>> enc.encode_queries(["what causes scurvy?"]).shape
        (1, 768)
    """

    def __init__(self, base, head, ot_dim: int | None = None, representation: str = "joint", info: dict | None = None):
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        super().__init__(base)
        self.head = head.eval()
        self.cls_dim = base.dim
        self.ot_dim = int(ot_dim or base.dim)
        self.representation = representation
        self.info = dict(info or {})

    @property
    def dim(self) -> int:
        return {"cls": self.cls_dim, "ot": self.ot_dim, "joint": self.cls_dim + self.ot_dim}[self.representation]

    def _encode(self, texts: list[str], prefix: str, progress: bool) -> np.ndarray:
        import torch
        from tqdm import tqdm

        st = self.base.model
        st.eval()
        batch = getattr(self.base, "batch_size", 32)
        device = next(st.parameters()).device
        self.head.to(device)
        chunks = []
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), batch), disable=not progress, desc=f"dupmae {self.representation}"):
                features = tokenize(st, [prefix + t for t in texts[start : start + batch]])
                features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
                chunks.append(represent(st, self.head, features, self.ot_dim, self.representation).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def encode_queries(self, texts: list[str], progress: bool = False) -> np.ndarray:
        return self._encode(texts, getattr(self.base, "query_prefix", ""), progress)

    def encode_documents(self, texts: list[str], progress: bool = True) -> np.ndarray:
        return self._encode(texts, getattr(self.base, "doc_prefix", ""), progress)

    def describe(self) -> dict:
        return {"base": self.base.describe(), "module": KIND, "representation": self.representation, "ot_dim": self.ot_dim}

    def save(self, folder: str | Path) -> dict:
        """Write model/ (sentence-transformers save), mlm_head.safetensors and manifest.json atomically."""
        from safetensors.torch import save_file

        def fill(tmp: Path) -> dict:
            base = save_model_inside(tmp, self.base, MODEL_DIR)
            state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
            save_file(state, str(tmp / HEAD_FILE))
            return {"kind": KIND, "head": self.head.config(), "ot_dim": self.ot_dim, "representation": self.representation,
                    "dim": self.dim, "base": base, "info": self.info}

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused


def load_head(folder: Path, manifest: dict):
    from safetensors.torch import load_file

    cfg = manifest.get("head")
    if not cfg:
        raise IndexLoadError(f"{folder}: manifest has no 'head' config")
    head = mlm_head_class()(cfg["hidden"], cfg["vocab_size"], cfg.get("layer_norm_eps", 1e-12))
    try:
        head.load_state_dict(load_file(str(Path(folder) / HEAD_FILE)), strict=True)
    except (OSError, RuntimeError) as err:
        raise IndexLoadError(f"{folder}: unreadable MLM head weights ({err})") from None
    return head.eval()


def load_encoder(folder: Path, manifest: dict, representation: str | None = None, **options) -> DupMAEEncoder:
    """`encoders.load_encoder` for a saved DupMAE folder; `representation` overrides the saved one."""
    base = load_base(folder, manifest.get("base"), **options)
    return DupMAEEncoder(base, load_head(folder, manifest), ot_dim=manifest.get("ot_dim"),
                         representation=representation or manifest.get("representation", "joint"), info=manifest.get("info"))
