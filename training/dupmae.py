"""DupMAE (RetroMAE v2) pre-training on an unlabeled corpus, then contrastive fine-tuning.

Xiao et al. 2023, "RetroMAE-2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language
Models", arXiv:2211.08769; reference github.com/staoxiao/RetroMAE (src/pretrain/modeling_duplex.py,
src/pretrain/data.py `DupMAECollator`, src/pretrain/arguments.py). See docs/dupmae.md.

Pre-training (a BERT-style AutoModelForMaskedLM, per document of the corpus):

    encoder  : whole-word masking at `encoder_mlm_probability` (0.3), BERT's 80/10/10 replacement;
               L_enc = cross-entropy of the MLM logits at the masked positions
    [CLS] decoding: a one-layer transformer whose queries are embed(h_cls + position) and whose keys/values
               are [h_cls, embed(x_1), ..., embed(x_n)] of the UNMASKED text; row i may attend only to the
               positions left visible by its own whole-word mask at `decoder_mlm_probability` (0.5), and
               never to itself (RetroMAE's enhanced decoding); L_dec = cross-entropy at every position but
               [CLS]/[SEP]; embeddings and MLM head shared with the encoder
    OT decoding: e_ot = max over positions 1: of the encoder's MLM logits; L_bow = -sum_v w_v log softmax(e_ot)_v,
               w_v = 1/n for every distinct token v of the text (n = its token count), averaged over the batch
    loss     = L_dec + bow_loss_weight * L_bow + L_enc          (bow_loss_weight 0.1, the reference default)

Fine-tuning (the same recipe from the pre-trained and the un-pre-trained start): InfoNCE with in-batch
negatives on SciFact TRAIN over the joint DupMAE representation (retrieval.dense.dupmae). Evaluation on
SciFact TEST of the cls / ot / joint representations from one corpus encoding per model.

    python -m training.dupmae --config training/configs/dupmae-scifact.yaml
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from training.contrastive import in_batch_infonce, linear_warmup, optimise
from training.recipe import read_recipe, saved_row, write_results

DEFAULTS = {
    "data": "../shared/data/scifact",
    "model": "minilm",
    "starts": ["none", "dupmae"],  # fine-tune from the plain model and from the DupMAE-pre-trained one
    "seed": 0,
    "threads": 1,
    # pre-training (reference: src/pretrain/arguments.py and examples/pretrain/README.md)
    "pretrain_epochs": 1,
    "pretrain_max_steps": None,  # stop early (tests, time budget); None = full epochs
    "pretrain_max_docs": None,  # use only the first N corpus documents (tests)
    "pretrain_batch_size": 16,
    "pretrain_max_length": 128,
    "pretrain_lr": 1e-4,
    "pretrain_warmup_ratio": 0.1,
    "pretrain_weight_decay": 0.01,
    "encoder_mlm_probability": 0.3,
    "decoder_mlm_probability": 0.5,
    "bow_loss_weight": 0.1,
    # fine-tuning
    "ft_epochs": 1,
    "ft_max_steps": None,
    "ft_batch_size": 16,
    "ft_lr": 2e-5,
    "temperature": 0.02,
    "query_max_length": 64,
    "doc_max_length": 128,
    "ot_dim": None,  # buckets of the reduced OT vector; None = the hidden size
    # evaluation
    "depth": 100,
    "encode_batch_size": 32,
    "base_row": True,  # plain `model` with its own (mean) pooling
    "pretrained_row": False,  # also the pre-trained model before fine-tuning (one more corpus encoding)
    "pretrained_dir": None,  # where the pre-trained model is (reused if finished); None = out/pretrained
    "cache": "results/cache",
    "out": "results/dupmae",
}
STARTS = ("none", "dupmae")


def load_config(path: str) -> dict:
    config = read_recipe(path, DEFAULTS)
    for key in ("encoder_mlm_probability", "decoder_mlm_probability"):
        if not 0.0 <= float(config[key]) <= 1.0:
            raise SystemExit(f"{path}: {key} must be in [0, 1], got {config[key]!r}")
    bad = [s for s in config["starts"] if s not in STARTS]
    if bad:
        raise SystemExit(f"{path}: starts: unknown {bad}; known: {list(STARTS)}")
    for key in ("pretrain_batch_size", "ft_batch_size", "pretrain_max_length", "doc_max_length", "query_max_length"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise SystemExit(f"{path}: {key} must be a positive integer, got {config[key]!r}")
    return config


# ------------------------------------------------------------------------------------ masking (pure)


def word_spans(tokens: list[str], special: set[str]) -> list[list[int]]:
    """Positions grouped into whole words ('##' pieces join the word before); special tokens excluded."""
    spans: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token in special:
            continue
        if token.startswith("##") and spans and spans[-1][-1] == i - 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    return spans


def whole_word_mask(spans: list[list[int]], n_tokens: int, probability: float, rng) -> np.ndarray:
    """0/1 per position: whole words in random order until round(n_tokens * p) positions (at least 1) are
    covered, a word that would overshoot skipped (transformers' DataCollatorForWholeWordMask._whole_word_mask,
    which the reference calls; n_tokens counts [CLS] and [SEP] as there)."""
    target = max(1, int(round(n_tokens * probability)))
    mask = np.zeros(n_tokens, dtype=np.int64)
    covered = 0
    for w in rng.permutation(len(spans)):
        if covered >= target:
            break
        if covered + len(spans[w]) > target:
            continue
        mask[spans[w]] = 1
        covered += len(spans[w])
    return mask


def decoder_attention_mask(spans: list[list[int]], n_tokens: int, probability: float, rng, samples: int = 256) -> np.ndarray:
    """(n, n) 0/1, 1 = row i may attend to column j: the reference's `DupMAECollator` matrix. min(n, 256)
    whole-word masks are drawn; row i takes one at random, also masks itself, and sees the rest."""
    pool = [whole_word_mask(spans, n_tokens, probability, rng) for _ in range(min(n_tokens, samples))]
    rows = np.stack([pool[rng.integers(len(pool))] for _ in range(n_tokens)]).copy()
    rows[np.arange(n_tokens), np.arange(n_tokens)] = 1
    return 1 - rows


def replace_masked(input_ids, mask, mask_token_id: int, vocab_size: int, generator):
    """BERT's corruption of the positions `mask` selects: 80% [MASK], 10% a random token, 10% unchanged.
    Returns (corrupted ids, labels with -100 off the mask) as transformers' `torch_mask_tokens`."""
    import torch

    mask = mask.bool()
    labels = input_ids.masked_fill(~mask, -100)
    ids = input_ids.clone()
    replaced = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & mask
    ids[replaced] = mask_token_id
    random = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & mask & ~replaced
    ids[random] = torch.randint(vocab_size, ids.shape, generator=generator)[random]
    return ids, labels


def bag_of_words_weights(token_ids: list[int], vocab_size: int) -> np.ndarray:
    """w_v = 1/n for each distinct ordinary token v of the text, n its token count (the reference's
    `bag_word_weight`: repeated tokens are set, not summed, so the weights sum to below 1 with repeats)."""
    weights = np.zeros(vocab_size, dtype=np.float32)
    if token_ids:
        weights[list(token_ids)] = 1.0 / len(token_ids)
    return weights


# ------------------------------------------------------------------------------------ losses (pure)


def mlm_loss(logits, labels):
    """Mean cross-entropy over the positions whose label is not -100 (nn.CrossEntropyLoss's default)."""
    import torch

    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def bow_loss(ot, weights):
    """L_bow = mean over the batch of -sum_v w_v log softmax(e_ot)_v (the reference's `decoder_ot_loss`)."""
    import torch

    return torch.mean(-torch.sum(weights * torch.log_softmax(ot, dim=-1), dim=1))


def dupmae_loss(decoder_mlm, bow, encoder_mlm, bow_loss_weight: float = 0.1):
    """The reference's total: L_dec + bow_loss_weight * L_bow + L_enc."""
    return decoder_mlm + bow_loss_weight * bow + encoder_mlm


def additive_mask(matrix, dtype):
    """0/1 (batch, n, n) -> (batch, 1, n, n) additive mask: 0 where visible, dtype's min where not."""
    import torch

    return (1.0 - matrix[:, None].to(dtype)) * torch.finfo(dtype).min


# ------------------------------------------------------------------------------------ model


def duplex_classes():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build_classes()
    return _CLASSES


_CLASSES = None


def _build_classes():
    import torch
    from torch import nn

    class DecoderLayer(nn.Module):
        """One BERT layer whose attention takes queries from `query` and keys/values from `hidden`
        (the reference's `BertLayerForDecoder`): the residual of the attention block is the query."""

        def __init__(self, config):
            super().__init__()
            d, self.heads = config.hidden_size, config.num_attention_heads
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.attn_dropout = nn.Dropout(config.attention_probs_dropout_prob)
            self.attn_out, self.attn_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=config.layer_norm_eps)
            self.ffn_in, self.ffn_out = nn.Linear(d, config.intermediate_size), nn.Linear(config.intermediate_size, d)
            self.out_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
            self.dropout = nn.Dropout(config.hidden_dropout_prob)

        def _heads(self, x):
            b, n, d = x.shape
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        def forward(self, query, hidden, mask):
            q, k, v = self._heads(self.q(query)), self._heads(self.k(hidden)), self._heads(self.v(hidden))
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
            context = self.attn_dropout(torch.softmax(scores, dim=-1)) @ v
            context = context.transpose(1, 2).reshape(query.shape)
            attended = self.attn_norm(self.dropout(self.attn_out(context)) + query)
            return self.out_norm(self.dropout(self.ffn_out(nn.functional.gelu(self.ffn_in(attended)))) + attended)

    class DupMAEPretrainer(nn.Module):
        """BertForMaskedLM + the [CLS] decoder; `forward(batch)` returns the three losses and the total."""

        def __init__(self, lm, bow_loss_weight: float = 0.1):
            super().__init__()
            self.lm, self.bow_loss_weight = lm, float(bow_loss_weight)
            self.decoder = DecoderLayer(lm.config)
            self.decoder.apply(lm._init_weights)

        def forward(self, batch: dict) -> dict:
            bert, head = self.lm.bert, self.lm.cls
            states = bert(input_ids=batch["encoder_input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            logits = head(states)  # every position: the BoW needs all ordinary tokens
            encoder_mlm = mlm_loss(logits, batch["encoder_labels"])
            from retrieval.dense.dupmae import ot_embedding

            bow = bow_loss(ot_embedding(logits[:, 1:], batch["attention_mask"][:, 1:]), batch["bag_word_weight"])

            cls = states[:, :1]
            hidden = torch.cat([cls, bert.embeddings(input_ids=batch["input_ids"])[:, 1:]], dim=1)
            query = bert.embeddings(inputs_embeds=cls.expand(-1, hidden.shape[1], -1))
            decoded = self.decoder(query, hidden, additive_mask(batch["decoder_attention_mask"], hidden.dtype))
            labels = batch["decoder_labels"]
            keep = labels != -100  # logits only where there is a label: the vocabulary projection dominates the cost
            decoder_mlm = mlm_loss(head(decoded[keep]), labels[keep])
            return {"loss": dupmae_loss(decoder_mlm, bow, encoder_mlm, self.bow_loss_weight),
                    "decoder_mlm": decoder_mlm, "bow": bow, "encoder_mlm": encoder_mlm}

    return DecoderLayer, DupMAEPretrainer


class Collator:
    """Token ids of documents -> a pre-training batch (the reference's `DupMAECollator`)."""

    def __init__(self, tokenizer, encoder_p: float = 0.3, decoder_p: float = 0.5, seed: int = 0):
        import torch

        self.tokenizer = tokenizer
        self.encoder_p, self.decoder_p = encoder_p, decoder_p
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.special = set(tokenizer.all_special_tokens)
        self.special_ids = set(tokenizer.all_special_ids)

    def __call__(self, docs: list[list[int]]) -> dict:
        """`docs`: token ids WITH [CLS] ... [SEP] (already truncated)."""
        import torch

        tok = self.tokenizer
        n = max(len(d) for d in docs)
        ids = torch.full((len(docs), n), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(docs), n), dtype=torch.long)
        enc_mask = torch.zeros((len(docs), n), dtype=torch.long)
        dec_matrix = torch.zeros((len(docs), n, n), dtype=torch.long)
        dec_labels = torch.full((len(docs), n), -100, dtype=torch.long)
        bow = np.zeros((len(docs), len(tok)), dtype=np.float32)
        for b, doc in enumerate(docs):
            m = len(doc)
            tokens = tok.convert_ids_to_tokens(doc)
            spans = word_spans(tokens, self.special)
            ids[b, :m] = torch.tensor(doc)
            attention[b, :m] = 1
            enc_mask[b, :m] = torch.from_numpy(whole_word_mask(spans, m, self.encoder_p, self.rng))
            dec_matrix[b, :m, :m] = torch.from_numpy(decoder_attention_mask(spans, m, self.decoder_p, self.rng))
            dec_labels[b, 1 : m - 1] = torch.tensor(doc[1 : m - 1])  # the reference: -100 at [CLS] and [SEP]
            bow[b] = bag_of_words_weights([t for t in doc if t not in self.special_ids], len(tok))
        enc_ids, enc_labels = replace_masked(ids, enc_mask, tok.mask_token_id, len(tok), self.generator)
        return {"input_ids": ids, "attention_mask": attention, "encoder_input_ids": enc_ids, "encoder_labels": enc_labels,
                "decoder_attention_mask": dec_matrix, "decoder_labels": dec_labels, "bag_word_weight": torch.from_numpy(bow)}


def pretrain(config: dict, texts: list[str], folder: Path, progress: bool = True) -> dict:
    """DupMAE pre-training of `config['model']` on `texts`; saves the MLM model + tokenizer to `folder`."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from retrieval.models import model_path

    torch.manual_seed(config["seed"])
    source = str(model_path(config["model"]))
    tokenizer = AutoTokenizer.from_pretrained(source)
    lm = AutoModelForMaskedLM.from_pretrained(source)
    model = duplex_classes()[1](lm, config["bow_loss_weight"])
    if config["pretrain_max_docs"]:
        texts = texts[: config["pretrain_max_docs"]]
    docs = tokenizer(texts, truncation=True, max_length=config["pretrain_max_length"])["input_ids"]
    collate = Collator(tokenizer, config["encoder_mlm_probability"], config["decoder_mlm_probability"], config["seed"])
    batch = config["pretrain_batch_size"]
    per_epoch = math.ceil(len(docs) / batch)
    total = per_epoch * config["pretrain_epochs"]
    if config["pretrain_max_steps"]:
        total = min(total, config["pretrain_max_steps"])
    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm", "norm"))]
    no_decay = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm", "norm"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config["pretrain_weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config["pretrain_lr"])
    schedule = linear_warmup(optimizer, total, config["pretrain_warmup_ratio"])
    rng = np.random.default_rng(config["seed"])
    model.train()
    history: dict[str, list[float]] = {"loss": [], "decoder_mlm": [], "bow": [], "encoder_mlm": []}
    step, started = 0, time.perf_counter()
    bar = tqdm(total=total, desc="dupmae pretrain", disable=not progress, file=sys.stderr)
    while step < total:
        order = rng.permutation(len(docs))
        for start in range(0, len(docs), batch):
            if step >= total:
                break
            losses = model(collate([docs[i] for i in order[start : start + batch]]))
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
            schedule.step()
            for k in history:
                history[k].append(float(losses[k].item()))
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{np.mean(v[-10:]):.3f}" for k, v in history.items()})
    bar.close()
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    info = {"paper": "Xiao et al. 2023, RetroMAE-2 / DupMAE, arXiv:2211.08769", "start_model": config["model"],
            "docs": len(docs), "steps": step, "batch_size": batch, "max_length": config["pretrain_max_length"],
            "lr": config["pretrain_lr"], "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, step), 2),
            "first10": {k: round(float(np.mean(v[:10])), 4) for k, v in history.items()},
            "last10": {k: round(float(np.mean(v[-10:])), 4) for k, v in history.items()},
            "every_step": {k: [round(x, 4) for x in v] for k, v in history.items()}}
    (folder / "dupmae-pretrain.json").write_text(json.dumps(info, indent=2), encoding="utf-8")  # written last: the done marker
    return info


# ------------------------------------------------------------------------------------ fine-tuning


def start_model(folder: str, max_length: int, seed: int):
    """(sentence-transformers model with [CLS] pooling, MLM head) from an MLM folder or the registry model."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoModelForMaskedLM

    from retrieval.dense.dupmae import mlm_head_class

    torch.manual_seed(seed)
    transformer = models.Transformer(folder, max_seq_length=max_length)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    st = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    lm = AutoModelForMaskedLM.from_pretrained(folder)  # the head transform is new (seeded) when folder has none
    config = lm.config
    head = mlm_head_class()(config.hidden_size, config.vocab_size, config.layer_norm_eps).load_from_mlm(lm)
    return st, head


def fine_tune(start_folder: str, config: dict, dataset, progress: bool = True):
    """InfoNCE with in-batch negatives over the joint DupMAE representation. Returns (st, head, info)."""
    import torch
    from tqdm import tqdm

    from retrieval.dense.dupmae import represent, tokenize
    from training.lexsembridge import training_pairs

    st, head = start_model(start_folder, config["doc_max_length"], config["seed"])
    ot_dim = config["ot_dim"] or st.get_embedding_dimension()
    optimizer = torch.optim.AdamW(list(st.parameters()) + list(head.parameters()), lr=config["ft_lr"], weight_decay=0.0)
    pairs, positives = training_pairs(dataset)
    batch = config["ft_batch_size"]
    per_epoch = len(pairs) // batch  # drop_last
    total = per_epoch * config["ft_epochs"]
    if config["ft_max_steps"]:
        total = min(total, config["ft_max_steps"])
    if total < 1:
        raise SystemExit(f"{len(pairs)} training pairs make no batch of {batch}")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
    generator = torch.Generator().manual_seed(config["seed"])
    st.train()
    head.train()
    losses, step, started = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc="dupmae fine-tune", disable=not progress, file=sys.stderr)
    while step < total:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, per_epoch * batch, batch):
            if step >= total:
                break
            chunk = [pairs[i] for i in order[start : start + batch]]
            st.max_seq_length = config["query_max_length"]
            q = represent(st, head, tokenize(st, [dataset.queries[q] for q, _ in chunk]), ot_dim, "joint")
            st.max_seq_length = config["doc_max_length"]
            d = represent(st, head, tokenize(st, [dataset.corpus[d].full_text for _, d in chunk]), ot_dim, "joint")
            loss = in_batch_infonce(q @ d.T, config["temperature"], [x for x, _ in chunk], [y for _, y in chunk], positives)
            optimise(loss, optimizer, schedule, losses, bar)
            step += 1
    bar.close()
    st.max_seq_length = config["doc_max_length"]
    st.eval()
    info = {"start": start_folder, "steps": step, "pairs": len(pairs), "batch_size": batch, "lr": config["ft_lr"],
            "temperature": config["temperature"], "ot_dim": ot_dim, "seed": config["seed"],
            "loss_first10": round(float(np.mean(losses[:10])), 4), "loss_last10": round(float(np.mean(losses[-10:])), 4),
            "seconds": round(time.perf_counter() - started, 1)}
    return st, head.eval(), info


def save_module(st, head, folder: Path, ot_dim: int, info: dict, representation: str = "joint") -> None:
    """A DupMAE module folder (model/ + MLM head + manifest) from a trained model, written atomically."""
    import shutil
    import tempfile

    from retrieval.dense.dupmae import DupMAEEncoder
    from retrieval.dense.encoder import SentenceEncoder

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.st-", dir=folder.parent))
    try:
        st.save(str(tmp))
        base = SentenceEncoder(str(tmp), device="cpu")
        base.model = st
        DupMAEEncoder(base, head, ot_dim=ot_dim, representation=representation, info=info).save(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ evaluation


def evaluate_representations(encoder, test, config: dict) -> dict:
    """nDCG@10 / R@100 of cls, ot and joint from ONE joint encoding of the corpus (cached)."""
    from eval.metrics import evaluate_run
    from retrieval.dense.cache import cached_embeddings
    from retrieval.dense.dupmae import split_joint
    from training.adapter import search_flat

    if encoder.representation != "joint":
        raise ValueError("evaluate_representations needs the joint representation")
    started = time.perf_counter()
    docs, queries, query_ids = cached_embeddings(encoder, test, config["cache"])
    seconds = time.perf_counter() - started
    d, q = split_joint(docs, encoder.cls_dim), split_joint(queries, encoder.cls_dim)
    out = {name: evaluate_run(test.qrels, search_flat(q[name], d[name], query_ids, test.corpus.ids, config["depth"]),
                              ks=(1, 10, config["depth"])) for name in ("cls", "ot", "joint")}
    out["encode_seconds"] = round(seconds, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="dengen train dupmae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="yaml: data, model, starts, pretrain_*, ft_*, out, ...")
    parser.add_argument("--verify", metavar="START", choices=STARTS, help="no training: reload out/ft-START in this "
                        "(new) process, re-encode every test query and compare the scores with results.json")
    parser.add_argument("--compare", action="store_true", help="no training: paired per-query nDCG@10 of ft-dupmae "
                        "minus ft-none (cls / ot / joint) from the cached vectors: bootstrap CI and Wilcoxon test")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.verify:
        return verify_reload(config, args.verify)
    if args.compare:
        return compare_starts(config)

    import torch

    from retrieval import load_dataset
    from retrieval.dense.encoder import SentenceEncoder
    from retrieval.dense.encoders import load_encoder
    from retrieval.models import model_path

    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_dataset(config["data"], "train"), load_dataset(config["data"], "test")
    if set(train.queries) & set(test.queries):
        raise SystemExit("queries are in both train and test")
    report = {"command": f"python -m training.dupmae --config {args.config}", "config": config, "rows": []}
    options = {"batch_size": config["encode_batch_size"], "device": "cpu"}

    pretrained = Path(config["pretrained_dir"] or out / "pretrained")
    if "dupmae" in config["starts"] or config["pretrained_row"]:
        if (pretrained / "dupmae-pretrain.json").is_file():  # resumable: pre-training is the long stage
            report["pretrain"] = json.loads((pretrained / "dupmae-pretrain.json").read_text(encoding="utf-8"))
            print(f"reusing {pretrained}", file=sys.stderr)
        else:
            report["pretrain"] = pretrain(config, [doc.full_text for doc in test.corpus], pretrained)  # unlabeled texts only
        report["pretrain"].pop("every_step", None)
        write_results(out, report)

    if config["pretrained_row"]:
        st, head = start_model(str(pretrained), config["doc_max_length"], config["seed"])
        save_module(st, head, out / "pretrained-module", config["ot_dim"] or st.get_embedding_dimension(),
                    {"start": str(pretrained), "fine_tuned": False})
        encoder = load_encoder(out / "pretrained-module", **options)
        report["rows"].append({"name": "DupMAE pre-trained, no fine-tuning", "folder": str(out / "pretrained-module"),
                               "results": evaluate_representations(encoder, test, config)})
        write_results(out, report)

    for start in config["starts"]:
        folder = out / f"ft-{start}"
        source = str(pretrained) if start == "dupmae" else str(model_path(config["model"]))
        if not (folder / "manifest.json").is_file():
            st, head, info = fine_tune(source, config, train)
            save_module(st, head, folder, info["ot_dim"], info)
            del st, head
        encoder = load_encoder(folder, **options)  # evaluate what was saved, reloaded
        name = "DupMAE pre-trained + fine-tuned" if start == "dupmae" else "fine-tuned, no pre-training"
        report["rows"].append({"name": name, "folder": str(folder), "train": encoder.info,
                               "results": evaluate_representations(encoder, test, config)})
        write_results(out, report)

    if config["base_row"]:
        from eval.metrics import evaluate_run
        from retrieval.dense.cache import cached_embeddings
        from training.adapter import search_flat

        base = SentenceEncoder(config["model"], **options)
        started = time.perf_counter()
        docs, queries, ids = cached_embeddings(base, test, config["cache"])
        result = evaluate_run(test.qrels, search_flat(queries, docs, ids, test.corpus.ids, config["depth"]), ks=(1, 10, config["depth"]))
        report["rows"].insert(0, {"name": f"plain {config['model']} (mean pooling, max_length {base.max_length})",
                                  "results": {"model": result, "encode_seconds": round(time.perf_counter() - started, 1)}})
    write_results(out, report)
    print_table(report)
    return report


def verify_reload(config: dict, start: str) -> dict:
    """Reload a saved fine-tuned module; every test query re-encoded, documents from the cache (which
    `cached_embeddings` spot-checks by re-encoding the first documents with the reloaded model)."""
    import torch

    from retrieval import load_dataset
    from retrieval.dense.cache import cache_paths
    from retrieval.dense.encoders import load_encoder

    torch.set_num_threads(config["threads"])
    out = Path(config["out"])
    row = saved_row(out, out / f"ft-{start}")
    started = time.perf_counter()
    encoder = load_encoder(out / f"ft-{start}", batch_size=config["encode_batch_size"], device="cpu")
    test = load_dataset(config["data"], "test")
    cache_paths(config["cache"], encoder, test)[1].unlink(missing_ok=True)  # re-encode the queries here
    now = evaluate_representations(encoder, test, config)
    diffs = {name: max(abs(now[name][k] - row["results"][name][k]) for k in now[name]) for name in ("cls", "ot", "joint")}
    result = {"start": start, "max_abs_diff": diffs, "same": all(d < 1e-6 for d in diffs.values()),
              "ndcg@10": {name: now[name]["ndcg@10"] for name in diffs}, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result, indent=2))
    (out / f"verify-{start}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if not result["same"]:
        raise SystemExit(f"{out / f'ft-{start}'}: reloaded scores differ from results.json")
    return result


def compare_starts(config: dict, resamples: int = 10000) -> dict:
    """Per-query nDCG@10 differences, DupMAE-pre-trained minus not, for each representation (cached vectors)."""
    from scipy import stats

    from eval.metrics import per_query
    from retrieval import load_dataset
    from retrieval.dense.cache import cached_embeddings
    from retrieval.dense.dupmae import split_joint
    from retrieval.dense.encoders import load_encoder
    from training.adapter import search_flat

    out = Path(config["out"])
    test = load_dataset(config["data"], "test")
    scores = {}
    for start in STARTS:
        encoder = load_encoder(out / f"ft-{start}", batch_size=config["encode_batch_size"], device="cpu")
        docs, queries, ids = cached_embeddings(encoder, test, config["cache"])
        d, q = split_joint(docs, encoder.cls_dim), split_joint(queries, encoder.cls_dim)
        for name in ("cls", "ot", "joint"):
            run = search_flat(q[name], d[name], ids, test.corpus.ids, config["depth"])
            scores[start, name] = per_query(test.qrels, run, ks=(10,))["ndcg@10"]
    rng = np.random.default_rng(config["seed"])
    result = {}
    for name in ("cls", "ot", "joint"):
        ids = sorted(scores["dupmae", name])
        a, b = np.array([scores["dupmae", name][i] for i in ids]), np.array([scores["none", name][i] for i in ids])
        diff = a - b
        boot = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(axis=1)
        result[name] = {"queries": len(ids), "mean_diff": round(float(diff.mean()), 4),
                        "ci95": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
                        "wilcoxon_p": float(stats.wilcoxon(a, b).pvalue) if diff.any() else 1.0, "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())}
    print(json.dumps(result, indent=2))
    (out / "paired.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def print_table(report: dict) -> None:
    print(f"{'':42}{'repr':>7}{'nDCG@10':>10}{'R@100':>8}")
    for row in report["rows"]:
        for name, r in row["results"].items():
            if isinstance(r, dict):
                print(f"{row['name']:42}{name:>7}{r['ndcg@10']:10.4f}{r.get('recall@100', float('nan')):8.4f}")


if __name__ == "__main__":
    main()
