"""Distilled Sentence Embedding (DSE): a bi-encoder student distilled from a cross-encoder teacher.

Barkan, Razin, Malkiel, Katz, Caciularu, Koenigstein, "Scalable Attentive Sentence-Pair Modeling via
Distilled Sentence Embedding", AAAI 2020, arXiv:1908.05161. Reference code:
github.com/microsoft/Distilled-Sentence-Embedding (train/trainers/dse_trainer.py for the loss).

A cross-attentive teacher scores a sentence pair jointly, t = T(a, b) (its raw output: a logit, or for a
regression task like STS-B the regressed value itself). The student encodes each sentence alone,
u = S(a), v = S(b), and scores the pair with a head s = h(u, v). It is trained on

    L = (1 - alpha) * task(s, y) + alpha * mean_i ||s_i - t_i||^2            (alpha = 0.5)

exactly as the reference's `DSETrainer` mixes them: alpha (its `distillation_coeff`, default 0.5) weighs
the DISTILLATION term; alpha = 0 is the same bi-encoder trained on the labels alone. For STS-B the task
loss is the mean squared error to the gold score scaled to [0, 1] (the reference uses `nn.MSELoss` for
regression tasks), and the teacher outputs are its raw regression outputs, no sigmoid.

Where we differ from the reference: its student head concatenates [u, v, u*v, |u-v|] into an MLP, which
no vector index can search. Ours is indexable: cosine (or dot) of u and v, optionally mapped to the
teacher's scale by a learned positive affine map  s = scale * cos(u, v) + shift  (scale > 0). The map is
monotone, so ranking by s is ranking by cosine / inner product: the dense index stores u and searches
by inner product, and the affine map is only needed to read scores on the teacher's scale.

Training lives in `training/dse.py`; this module needs numpy, plus torch only where it is used.

Example:
    >>> enc = load_encoder("results/dse/student")        # retrieval.dense.encoders.load_encoder
    >>> enc.head.score(enc.encode_queries(["a dog runs"]), enc.encode_documents(["a dog is running"]))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexes.manifest import IndexLoadError, write_index_dir
from retrieval.dense.encoders import EncoderWrapper, load_base, save_model_inside

KIND = "dse"
TEACHER_KIND = "cross-encoder"
SIMILARITIES = ("cosine", "dot")


# ---------------------------------------------------------------------------------------- loss


def dse_loss(student_scores, labels, teacher_scores=None, alpha: float = 0.5):
    """(1 - alpha) * MSE(student, labels) + alpha * mean squared error to the teacher (torch tensors).

    Args:
        student_scores: (n,) or (n, k) student outputs s.
        labels: gold targets of the same shape (STS-B: score / 5).
        teacher_scores: the teacher's raw outputs t, same shape; may be None only when alpha == 0.
        alpha: the reference's `distillation_coeff`: the weight of the distillation term (0 = no teacher).

    The distillation term is the reference's ((s - t) ** 2).sum(dim=1).mean(): per-pair squared error
    summed over outputs and averaged over pairs, i.e. plain MSE for one output per pair.
    """
    import torch.nn.functional as F

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    task = F.mse_loss(student_scores, labels)
    if alpha == 0.0:
        return task
    if teacher_scores is None:
        raise ValueError(f"alpha={alpha} needs teacher scores")
    diff = (student_scores - teacher_scores) ** 2
    distill = (diff.sum(dim=1) if diff.dim() > 1 else diff).mean()
    return (1.0 - alpha) * task + alpha * distill


# ---------------------------------------------------------------------------------------- head


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class DSEHead:
    """The student's pair scorer: s = scale * sim(u, v) + shift, sim = cosine or dot, scale > 0.

    Ranking candidates by s equals ranking them by sim, so an index over the student's vectors (unit
    length for cosine) searched by inner product returns the head's ranking.
    """

    def __init__(self, similarity: str = "cosine", scale: float = 1.0, shift: float = 0.0):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive (a monotone map keeps the ranking), got {scale}")
        self.similarity, self.scale, self.shift = similarity, float(scale), float(shift)

    def score(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Row-wise scores of pairs (u_i, v_i), or one query (d,) against many candidates (n, d)."""
        u, v = np.asarray(u, dtype=np.float32), np.asarray(v, dtype=np.float32)
        if self.similarity == "cosine":
            u, v = _unit(u), _unit(v)
        sim = v @ u if u.ndim == 1 else np.einsum("ij,ij->i", u, v)
        return (self.scale * sim + self.shift).astype(np.float32)

    def torch_score(self, u, v, scale=None, shift=None):
        """The same on torch tensors (n, d) x (n, d) -> (n,); `scale`/`shift` tensors when learned."""
        import torch.nn.functional as F

        if self.similarity == "cosine":
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        sim = (u * v).sum(dim=-1)
        return sim * (self.scale if scale is None else scale) + (self.shift if shift is None else shift)

    def describe(self) -> dict:
        return {"similarity": self.similarity, "scale": self.scale, "shift": self.shift}


# ---------------------------------------------------------------------------------------- student


class DSEEncoder(EncoderWrapper):
    """The DSE student: a fine-tuned sentence-transformers bi-encoder plus its `DSEHead`.

    Queries and documents are encoded the same way (the base's encoders, no prefixes added here). With a
    cosine head the base must L2-normalise, so the index's inner product is the head's cosine.
    """

    def __init__(self, base, head: DSEHead | None = None, info: dict | None = None):
        super().__init__(base)
        self.head = head or DSEHead()
        if hasattr(base, "normalize") and base.normalize != (self.head.similarity == "cosine"):
            raise ValueError(f"a {self.head.similarity} head needs normalize={self.head.similarity == 'cosine'} "
                             f"on the base encoder, got {base.normalize}")
        self.info = dict(info or {})

    def score(self, first: list[str], second: list[str]) -> np.ndarray:
        """Head scores of sentence pairs (teacher scale when the head's affine map was learned)."""
        return self.head.score(self.encode_queries(first), self.encode_documents(second))

    def describe(self) -> dict:
        return {"base": self.base.describe(), "module": KIND, "head": self.head.describe()}

    def save(self, folder: str | Path) -> dict:
        """Student weights in `model/` (SentenceTransformer.save), head and training info in the manifest."""

        def fill(tmp: Path) -> dict:
            record = save_model_inside(tmp, self.base)
            return {"kind": KIND, "dim": int(self.dim), "head": self.head.describe(), "base": record, "info": self.info}

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused


def load_encoder(folder: Path, manifest: dict, **options) -> DSEEncoder:
    """`encoders.load_encoder` for a saved DSE student (options go to the inner SentenceEncoder)."""
    if "head" not in manifest:
        raise IndexLoadError(f"{folder}: a DSE folder needs 'head' in its manifest; save it with DSEEncoder.save")
    head = DSEHead(**manifest["head"])
    options["normalize"] = head.similarity == "cosine"
    return DSEEncoder(load_base(folder, manifest.get("base"), **options), head, info=manifest.get("info"))


# ---------------------------------------------------------------------------------------- teacher


class CrossEncoderScorer:
    """The teacher: a transformers sequence classifier with one output scoring (a, b) jointly.

    Args:
        model: a folder (MiniLM to start fine-tuning, or a saved teacher) or a loaded model.
        tokenizer: needed when `model` is a loaded model.
        max_length: pair truncation (tokens of both sentences together).
        batch_size: pairs per forward pass when scoring.
    """

    def __init__(self, model, tokenizer=None, max_length: int = 128, batch_size: int = 32, device: str = "cpu"):
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from retrieval.models import model_path

            folder = model_path(str(model))
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a loaded model")
        if model.config.num_labels != 1:
            raise ValueError(f"a DSE teacher has one output, this model has {model.config.num_labels}")
        self.model, self.tokenizer = model.to(device), tokenizer
        self.max_length, self.batch_size, self.device = max_length, batch_size, device

    def features(self, first: list[str], second: list[str]):
        return self.tokenizer(list(first), list(second), padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt").to(self.device)

    def logits(self, first: list[str], second: list[str]):
        """Raw outputs (n,) with gradients, in the model's current mode (training uses this)."""
        return self.model(**self.features(first, second)).logits.squeeze(-1)

    def score(self, first: list[str], second: list[str], progress: bool = False) -> np.ndarray:
        """Raw teacher outputs for pairs (first_i, second_i), float32, eval mode, no gradients."""
        import torch
        from tqdm import tqdm

        if len(first) != len(second):
            raise ValueError(f"{len(first)} first sentences but {len(second)} second ones")
        was_training = self.model.training
        self.model.eval()
        out = []
        with torch.no_grad():
            for start in tqdm(range(0, len(first), self.batch_size), desc="teacher scores", disable=not progress):
                end = start + self.batch_size
                out.append(self.logits(first[start:end], second[start:end]).float().cpu().numpy())
        self.model.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def save(self, folder: str | Path, info: dict | None = None) -> dict:
        """save_pretrained (model + tokenizer) into a checksummed folder of kind "cross-encoder"."""

        def fill(tmp: Path) -> dict:
            self.model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            return {"kind": TEACHER_KIND, "max_length": self.max_length, "info": dict(info or {})}

        return write_index_dir(folder, fill, overwrite=True)  # a module folder of ours; anything else is refused

    @classmethod
    def load(cls, folder: str | Path, **options) -> CrossEncoderScorer:
        """A saved teacher; its files are verified against the manifest first."""
        from indexes.manifest import open_index

        saved = open_index(folder)
        manifest, folder = saved.manifest, saved.folder
        if manifest["kind"] != TEACHER_KIND:
            raise IndexLoadError(f"{folder}: a {manifest['kind']!r} folder, not a {TEACHER_KIND}")
        options.setdefault("max_length", manifest.get("max_length", 128))
        scorer = cls(Path(folder), **options)
        scorer.info = manifest.get("info", {})
        return scorer
