"""The language model behind generative retrieval: a query laid out as a prompt in, a corpus n-gram out.

Any local Hugging Face language model serves: a causal LM (SmolLM2, GPT-2, Llama and Qwen families) or a
seq2seq model (BART, T5, or `bert2bert`, an encoder-decoder tied here from two MiniLM copies whose
cross-attention starts at random). It is named by a registry name (`retrieval.models`: "smollm2-135m"),
"bert2bert", or a folder path. Everything goes through Hugging Face `generate` with a
`prefix_allowed_tokens_fn`; given keys are scored teacher-forced; the model saves to and loads from a folder.

The *layout* says how a source becomes model input and is saved with the model, so SEAL, UGR and
CorpusBrain share it: a template per source marker (SEAL's sources are `query || body` and
`query || title`; CorpusBrain's have no marker), with `{query}` (the source before its marker, truncated
to `max_source_tokens` tokens) or `{source}` (the whole source). "plain" is the source itself (causal
models: then a newline, the target follows); "oneshot" lays the query out as a natural one-shot prompt,
which a pre-trained causal LM follows with no training (zero-shot SEAL, docs/seal.md).

A key model can carry LoRA adapters (`add_lora`, through `peft`): it then saves only the adapters and
the name of its base model, and loads them onto that base (merged, so search pays nothing for them).

Documents are tokenised with the model's own tokenizer (no special tokens; byte-level BPE tokenizers
with a leading space, as text continuing a prompt reads); the end-of-sequence token doubles as the
title terminator in the corpus stream, so a title key ends exactly where generation stops.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

BUILT = ("bert2bert",)  # key models assembled here; any other name is a registry model or a folder
CONFIG_FILE = "keymodel.json"
ADAPTER_CONFIG = "adapter_config.json"  # written by peft beside the adapter weights

# name -> {source marker (or "*" for any) -> template}; a template holds {query} or {source}
_BODY_EXAMPLE = ("Question: what do red blood cells carry?\n"
                 "A phrase from a passage that answers it: red blood cells carry oxygen from the lungs\n\n")
_TITLE_EXAMPLE = ("Question: what do red blood cells carry?\n"
                  "Title of an article that answers it: Red blood cell\n\n")
LAYOUTS = {
    "plain": {"*": "{source}"},  # causal models: "{source}\n" (CAUSAL_PLAIN)
    "oneshot": {
        "body": _BODY_EXAMPLE + "Question: {query}\nA phrase from a passage that answers it:",
        "title": _TITLE_EXAMPLE + "Question: {query}\nTitle of an article that answers it:",
        "*": _TITLE_EXAMPLE + "Question: {query}\nTitle of an article that answers it:",
    },
}
CAUSAL_PLAIN = {"*": "{source}\n"}


def layout_templates(layout: str | dict) -> dict[str, str]:
    """The templates of a layout name or of a {marker: template} dict, checked."""
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown key model layout {layout!r}: choose one of {', '.join(LAYOUTS)} "
                             "or give a {marker: template} dict")
        return dict(LAYOUTS[layout])
    if not isinstance(layout, dict) or "*" not in layout:
        raise ValueError("a key model layout dict maps source markers to templates and needs a '*' entry")
    for marker, template in layout.items():
        if not isinstance(template, str) or ("{query}" in template) == ("{source}" in template):
            raise ValueError(f"layout template for {marker!r} must hold exactly one of {{query}} or {{source}}")
    return dict(layout)


def _picked(full, target, mask):
    """The log-probability of each target token from the full log-softmax (B x T x V), 0 on padding."""
    return full.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0.0)


class KeyModel:
    """A seq2seq or causal LM that generates corpus n-grams for a query.

    Args:
        model: a transformers model (seq2seq or causal LM).
        tokenizer: its tokenizer.
        base: what it was created from ("bert2bert", a registry name or a folder), kept in messages and
            in saves of LoRA adapters.
        max_source_tokens: queries are truncated to this many tokens.
        layout: a LAYOUTS name or a {marker: template} dict ("plain": the source as it is).

    Example:
        >>> km = KeyModel.create("smollm2-135m", layout="oneshot")
        >>> km.generate(["aspirin and heart attacks || body"], num_beams=5, max_new_tokens=8)
    """

    def __init__(self, model, tokenizer, base: str, max_source_tokens: int = 64, layout: str | dict = "plain"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.base = base
        self.causal = not model.config.is_encoder_decoder
        self.max_source_tokens = max_source_tokens
        self.set_layout(layout)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.eos_id = int(tokenizer.sep_token_id if base == "bert2bert" else eos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        if self.causal:
            tokenizer.pad_token_id = self.pad_id
            tokenizer.padding_side = "left"  # generation continues every prompt from the same column
            self.start_id = None
        else:
            start = model.config.decoder_start_token_id
            self.start_id = int(start if start is not None else tokenizer.cls_token_id)  # decoder start
        # byte-level BPE (GPT-2, SmolLM2, BART) spells a word after a space differently: corpus text as it
        # continues a prompt starts with one; sentencepiece and WordPiece tokenizers need none
        plain, spaced = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("the", " the"))
        self.leading_space = plain != spaced and len(spaced) == 1
        self.specials = _special_tokens(tokenizer, self.causal)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.lora: dict | None = None  # LoRA settings once adapters are added (add_lora)
        self._tiktoken = None  # tokens_batch's tiktoken twin of the tokenizer (False: none), found at first use
        # whether the weights are this key model's own (bert2bert's fresh cross-attention, or trained fully:
        # the trainer sets it) or still its base's, which a save names instead of copying
        self.owns_weights = base == "bert2bert"
        self.prompt = None  # a UGR TaskPrompt (retrieval/generative/prompts.py) applied to every source
        self.task = None  # the prompt task of sources that carry none (TaskSource carries its own)

    @property
    def backbone(self) -> str:
        """The model's architecture family (config.model_type), for reports."""
        return "bert2bert" if self.base == "bert2bert" else self.model.config.model_type

    @property
    def continues_word(self) -> np.ndarray:
        """Per token id, whether it continues the word before it ("##ok" in WordPiece; "ok" without the
        space mark of byte-level BPE or sentencepiece); special tokens and punctuation do not."""
        if getattr(self, "_continues", None) is None:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            wordpiece = sum(bool(p) and p.startswith("##") for p in pieces) > len(pieces) // 10  # BPE has a few "##"
            self._continues = np.array([bool(p) and (p.startswith("##") if wordpiece else
                                                     (p[0].isalnum() and not p.startswith(("Ġ", "▁"))))
                                        for p in pieces], dtype=bool)
        return self._continues

    @property
    def device(self):
        """Where the model's weights are (`keymodel.model.to("cuda")` moves it; inputs follow)."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ creation and storage
    @classmethod
    def create(cls, name: str = "bert2bert", seed: int = 0, max_source_tokens: int = 64,
               layout: str | dict | None = None) -> "KeyModel":
        """A key model from offline weights: "bert2bert" (cross-attention initialised at random), a registry
        name ("smollm2-135m") or a local Hugging Face folder (causal or seq2seq, told by its config).
        `layout` None: "oneshot" for a causal LM (it follows a prompt untrained), "plain" for seq2seq."""
        import torch

        torch.manual_seed(seed)
        model, tokenizer = _bert2bert() if name == "bert2bert" else _pretrained(name)
        if layout is None:
            layout = "plain" if model.config.is_encoder_decoder else "oneshot"
        keymodel = cls(model, tokenizer, name, max_source_tokens, layout)
        keymodel._sync_generation_config()
        return keymodel

    def _sync_generation_config(self) -> None:
        gc = self.model.generation_config
        gc.eos_token_id, gc.pad_token_id = self.eos_id, self.pad_id
        if not self.causal:
            gc.decoder_start_token_id = gc.bos_token_id = self.start_id
        gc.max_length = None

    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                 targets: Sequence[str] | str = ("q_proj", "v_proj")) -> None:
        """Freeze the model and add trainable LoRA adapters (Hu et al., ICLR 2022) through `peft`
        on the named modules (names as in the model: q_proj/v_proj for Llama, c_attn for GPT-2, q/v for T5)."""
        from peft import LoraConfig, get_peft_model

        if self.lora is not None:
            raise ValueError("this key model has LoRA adapters already")
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(
            [targets] if isinstance(targets, str) else targets), bias="none")
        self.model = get_peft_model(self.model, config)
        self.lora = {"r": r, "alpha": alpha, "dropout": dropout, "targets": sorted(config.target_modules)}

    def save(self, folder: str | Path) -> None:
        """keymodel.json (the base model, layout, LoRA settings), the tokenizer, any UGR task prompt, and the
        weights only where they are the key model's own: fully trained (or bert2bert) weights are written;
        LoRA adapters are written without their base; an untrained pre-trained model writes none, its
        base is named (with the sha256 of its weight files, checked on loading)."""
        from retrieval.generative.prompts import MODULE_NAME, PROMPT_CONFIG, PROMPT_VECTORS

        from indexes.manifest import IndexSaveError

        folder = Path(folder)
        if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
            raise IndexSaveError(f"{folder}: holds files and no {CONFIG_FILE}; a key model is saved only to a new "
                                 f"or empty folder or over a key model")
        folder.mkdir(parents=True, exist_ok=True)
        if self.owns_weights or self.lora:
            inner = self.model.get_base_model() if self.lora else self.model
            soft = inner._modules.pop(MODULE_NAME, None)  # prompt vectors go beside the weights, not in them
            try:
                self.model.save_pretrained(folder)
            finally:
                if soft is not None:
                    inner.add_module(MODULE_NAME, soft)
        self.tokenizer.save_pretrained(folder)
        for name in (PROMPT_CONFIG, PROMPT_VECTORS):  # a prompt-less save over a prompted one
            (folder / name).unlink(missing_ok=True)
        if self.prompt is not None:
            self.prompt.save(folder)
        config = {"base": self.base, "weights": "own" if self.owns_weights else "base",
                  "base_sha256": None if self.owns_weights else _base_fingerprint(self.base),
                  "max_source_tokens": self.max_source_tokens, "layout": self.layout_name, "templates": self.templates,
                  "lora": self.lora}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, trainable: bool = False) -> "KeyModel":
        """A key model saved by `save`: its own weights, or its base's with its LoRA adapters on top
        (`trainable`: the adapters train on, e.g. a second training stage)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; not a saved generative key model")
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        base = config.get("base", config.get("backbone"))  # "backbone": saves before layouts existed
        own = config.get("weights", "own") == "own"
        if own:
            model = _auto_class(folder).from_pretrained(folder)
        else:
            found = _base_fingerprint(base)
            if config.get("base_sha256") and found != config["base_sha256"]:
                raise ValueError(f"{folder / CONFIG_FILE}: base model {base!r} is not the one this key model was "
                                 f"saved with (weights sha256 {found[:12]} != {config['base_sha256'][:12]})")
            model, _ = _pretrained(base)
        if config.get("lora"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
            if not trainable:  # folded into the base weights (kept apart, so a re-save still writes adapters only)
                model.merge_adapter()
        keymodel = cls(model, AutoTokenizer.from_pretrained(folder), base, config["max_source_tokens"],
                       config.get("templates") or "plain")
        keymodel.layout_name = config.get("layout", "plain")
        keymodel.owns_weights, keymodel.lora = own, config.get("lora")
        keymodel._sync_generation_config()
        from retrieval.generative.prompts import PROMPT_CONFIG, TaskPrompt

        if (folder / PROMPT_CONFIG).is_file():
            keymodel.set_prompt(TaskPrompt.load(folder))
        return keymodel

    def set_dtype(self, dtype: str) -> None:
        """Run the model in "float32" or "bfloat16" (search only: on CPUs with bf16 matrix units, such as
        this project's machines, SmolLM2's forward pass runs about 2.6x faster; log-probabilities are taken
        in float32 either way)."""
        import torch

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"key model dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        if next(self.model.parameters()).dtype != getattr(torch, dtype):
            self.model.to(getattr(torch, dtype))

    def set_layout(self, layout: str | dict) -> None:
        """Lay sources out with another LAYOUTS name or template dict (e.g. a zero-shot prompt)."""
        templates = layout_templates(layout)
        self.templates = CAUSAL_PLAIN if self.causal and templates == LAYOUTS["plain"] else templates
        self.layout_name = layout if isinstance(layout, str) else "custom"

    def set_prompt(self, prompt, task: str | None = None) -> None:
        """Apply a UGR `TaskPrompt` (None removes it) to every source; `task`: the default granularity."""
        from retrieval.generative.prompts import MODULE_NAME, task_of

        self.model._modules.pop(MODULE_NAME, None)
        if prompt is not None and prompt.uses_vectors:
            if self.causal:
                raise ValueError(f"{prompt.design} prompts prepend vectors to an encoder's input; the causal "
                                 f"{self.base} key model has none: use a discrete prompt or a seq2seq model")
            self.model.add_module(MODULE_NAME, prompt.vectors.to(self.device))
            prompt.vectors = self.model._modules[MODULE_NAME]
        for p in self.model.parameters() if self.lora is None else ():  # LoRA decides what trains itself
            p.requires_grad_(prompt is None or prompt.tune_model)  # prompt tuning proper freezes the backbone
        if prompt is not None and prompt.uses_vectors:
            prompt.vectors.requires_grad_(True)
        self.prompt = prompt
        self.task = task_of(task) if task is not None else self.task

    def _task(self, source: str) -> str | None:
        return getattr(source, "granularity", None) or self.task

    # ------------------------------------------------------------------ tokenisation
    def tokens(self, text: str) -> list[int]:
        """Token ids of corpus text as targets see it (no special tokens; a leading space for byte-level BPE)."""
        return self.tokenizer(self._as_corpus_text(text), add_special_tokens=False)["input_ids"]

    def _as_corpus_text(self, text: str) -> str:
        """For byte-level BPE, a leading space (a word inside running text); an empty text stays empty, not a
        lone space token (a UGR parent's header is `tokens(title) + eos + tokens("")`)."""
        if not self.leading_space:
            return text
        text = text.strip()
        return " " + text if text else ""

    def tokens_batch(self, texts: list[str]) -> list[list[int]]:
        """`tokens` of many texts in one call of the fast tokenizer (its own threads, no offsets tracked): the
        same ids (tests/test_keymodel.py), fewer Python calls per document."""
        texts = [self._as_corpus_text(t) for t in texts]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer
            return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        # the backend keeps the truncation and padding of the tokenizer's last call (or of tokenizer.json:
        # MiniLM's pads and cuts at 128); corpus text is never cut or padded, whoever called before
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        if self._tiktoken is None:  # found out once per key model: tiktoken runs byte-level BPE faster, same ids
            from retrieval.generative.tiktoken_bpe import TiktokenBPE

            self._tiktoken = TiktokenBPE.for_tokenizer(backend) or False
        if self._tiktoken:
            return self._tiktoken.encode_batch(texts)
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _source_ids(self, source: str) -> list[int]:
        """The source laid out by its marker's template: the text before {query}/{source}, the query truncated
        to max_source_tokens, the text after; then the UGR task words first and the tokenizer's specials."""
        query, marker = source, ""
        if " || " in source:
            query, marker = source.rsplit(" || ", 1)
        template = self.templates.get(marker, self.templates["*"])
        field = "{source}" if "{source}" in template else "{query}"
        before, after = template.split(field, 1)
        text = str(source) if field == "{source}" else query
        room = self.max_source_tokens - len(self.specials[0]) - len(self.specials[1])
        ids = self._encode(before) + self._encode(text)[:room] + self._encode(after)
        if self.prompt is not None and self.prompt.uses_text:  # discrete words first, untruncated
            ids = self.prompt.text_ids(self, self._task(source)) + ids
        return self.specials[0] + ids + self.specials[1]
    def _batch(self, sources: Sequence[str]):
        import torch

        rows = [self._source_ids(s) for s in sources]
        width = max(map(len, rows))
        pad_left = self.causal
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if pad_left else slice(0, len(row))
            ids[i, cols] = torch.tensor(row)
            mask[i, cols] = 1
        return ids.to(self.device), mask.to(self.device)

    def _encoder_inputs(self, sources: Sequence[str]) -> dict:
        """The encoder's keyword inputs: ids and mask, or embeddings (soft prompt vectors first) and mask."""
        ids, mask = self._batch(sources)
        if self.prompt is None or not self.prompt.uses_vectors:
            return {"input_ids": ids, "attention_mask": mask}
        embeds, mask = self.prompt.embed(self, ids, mask, [self._task(s) for s in sources])
        return {"inputs_embeds": embeds, "attention_mask": mask}

    # ------------------------------------------------------------------ training and scoring
    def target_logprobs(self, sources: Sequence[str], targets: Sequence[Sequence[int]]):
        """Per-token log-probabilities (B x T tensor, 0 on padding) of `targets` given `sources`, and the mask."""
        full, target, target_mask = self.target_distributions(sources, targets)
        return _picked(full, target, target_mask), target_mask

    def target_distributions(self, sources: Sequence[str], targets: Sequence[Sequence[int]]):
        """The log-softmax over the vocabulary at every target position (B x T x V, teacher-forced), the padded
        target ids (B x T) and their mask."""
        import torch

        if self.causal:
            ids, mask = self._batch(sources)
        else:
            encoder = self._encoder_inputs(sources)
        width = max(len(t) for t in targets)
        target = torch.full((len(targets), width), self.pad_id, dtype=torch.long)
        target_mask = torch.zeros((len(targets), width), dtype=torch.bool)
        for i, t in enumerate(targets):
            target[i, : len(t)] = torch.tensor(list(t), dtype=torch.long)
            target_mask[i, : len(t)] = True
        target, target_mask = target.to(self.device), target_mask.to(self.device)
        if self.causal:
            full = torch.cat([ids, target], 1)
            full_mask = torch.cat([mask, target_mask.long()], 1)
            positions = (full_mask.cumsum(1) - 1).clamp(min=0)
            logits = self.model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits
            logits = logits[:, ids.shape[1] - 1 : -1]  # the prediction for each target token
        else:
            start = torch.full((len(targets), 1), self.start_id, dtype=torch.long, device=self.device)
            decoder_in = torch.cat([start, target[:, :-1]], 1)
            logits = self.model(**encoder, decoder_input_ids=decoder_in,
                                decoder_attention_mask=torch.cat([start.new_ones(len(targets), 1), target_mask[:, :-1].long()], 1)).logits
        return logits.float().log_softmax(-1), target, target_mask

    def loss(self, sources: Sequence[str], targets: Sequence[Sequence[int]], label_smoothing: float = 0.0):
        """Mean token cross-entropy of `targets` (token ids, eos included by the caller where wanted).

        `label_smoothing` eps is fairseq's `label_smoothed_cross_entropy` (the criterion of CorpusBrain's and
        GENRE's training scripts, eps 0.1): the target keeps 1 - eps and every other token gets eps / (V - 1),
        loss = (1 - eps - eps_i) * nll + eps_i * sum over the vocabulary of -log p, eps_i = eps / (V - 1)."""
        full, target, mask = self.target_distributions(sources, targets)
        nll = -_picked(full, target, mask).sum()  # target_logprobs' sum: eps 0 trains exactly as before the option
        if not label_smoothing:
            return nll / mask.sum()
        eps_i = label_smoothing / (self.vocab_size - 1)
        return ((1.0 - label_smoothing - eps_i) * nll + eps_i * -full.sum(-1).masked_fill(~mask, 0.0).sum()) / mask.sum()

    def score_keys(self, source: str, keys: Sequence[Sequence[int]], batch_size: int = 256,
                   context: "SourceContext | None" = None, row: int = 0) -> list[float]:
        """log P(key | source): the sum of its tokens' log-probabilities, teacher-forced (SEAL's rescoring).
        The source is read once (`context`, row `row`, when the caller has it) and every key continues it."""
        import torch

        context = context if context is not None else self.context([source])
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(keys), batch_size):
                chunk = [list(k) for k in keys[start : start + batch_size]]
                width = max(map(len, chunk))
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                for i, key in enumerate(chunk):
                    ids[i, : len(key)] = torch.tensor(key)
                logprobs = self._continue(context, [row] * len(chunk), chunk).float().log_softmax(-1).cpu()
                picked = logprobs[:, :width].gather(-1, ids.unsqueeze(-1)).squeeze(-1)
                lengths = torch.tensor([len(k) for k in chunk])
                picked = picked.masked_fill(torch.arange(width)[None, :] >= lengths[:, None], 0.0)
                scores += picked.sum(1).tolist()
        return scores

    def first_token_logprobs(self, source: str) -> np.ndarray:
        """log P(t | source) for every token t at the first target position (SEAL's unigram scores)."""
        return self.context([source]).first[0].numpy()

    # ------------------------------------------------------------------ a source read once, continued many times
    def context(self, sources: Sequence[str]) -> "SourceContext":
        """Read `sources` once: a causal model's key/value cache of the laid-out prompts, or a seq2seq
        model's encoder states; every beam, key and step then continues it instead of re-reading it."""
        import torch

        with torch.inference_mode():
            encoder = self._encoder_inputs(sources)
            mask = encoder["attention_mask"]
            if self.causal:
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                # the last position's logits only: the output layer at every prompt position was ~20% of reading it
                out = self.model(**encoder, position_ids=positions, use_cache=True, logits_to_keep=1)
                layers = [(layer.keys, layer.values) for layer in _returned_cache(out).layers]
                first = out.logits[:, -1].float().log_softmax(-1).cpu()
                return SourceContext(list(sources), mask, layers, None, first)
            states = self.model.get_encoder()(**encoder).last_hidden_state
            context = SourceContext(list(sources), mask, None, states, None)
            context.first = self._continue(context, list(range(len(sources))), [[]] * len(sources))[:, 0].float().log_softmax(-1).cpu()
            return context

    def _cache_arg(self, cache) -> dict:
        """The cache keyword: `cache` in newer transformers 5 releases, `past_key_values` before."""
        if getattr(self, "_cache_name", None) is None:  # looked up once: this is on every decoding step
            import inspect

            inner = self.model.get_base_model() if self.lora else self.model
            self._cache_name = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
        return {self._cache_name: cache}

    def decoding_state(self, context: "SourceContext") -> dict:
        """The state `extend` grows: one row per source of `context`, no token generated yet."""
        if self.causal:
            return {"layers": context.layers, "mask": context.mask}
        return {"context": context, "sources": list(range(len(context.sources))), "prefixes": [()] * len(context.sources)}

    def extend(self, state: dict, parents: Sequence[int], tokens: Sequence[int]):
        """Append `tokens[i]` to row `parents[i]` of `state`: (log P(next | source, row's tokens), rows x vocab on
        the CPU; the new state). A causal model feeds the one new token over the rows' key/value cache;
        a seq2seq model re-runs the decoder over the short prefixes on the cached encoder states."""
        import torch
        from transformers import DynamicCache

        if not self.causal:
            prefixes = [state["prefixes"][p] + (t,) for p, t in zip(parents, tokens)]
            sources = [state["sources"][p] for p in parents]
            logprobs = self.continuation_logprobs(state["context"], sources, prefixes)
            return logprobs, {"context": state["context"], "sources": sources, "prefixes": prefixes}
        index = torch.tensor(list(parents), device=self.device)
        with torch.inference_mode():
            past = state["mask"][index]
            cache = DynamicCache([(k[index], v[index]) for k, v in state["layers"]])
            ids = torch.tensor(list(tokens), dtype=torch.long, device=self.device)[:, None]
            out = self.model(input_ids=ids, attention_mask=torch.cat([past, past.new_ones(len(parents), 1)], 1),
                             position_ids=past.sum(1, keepdim=True), **self._cache_arg(cache), use_cache=True)
            layers = [(layer.keys, layer.values) for layer in _returned_cache(out).layers]
            mask = torch.cat([past, past.new_ones(len(parents), 1)], 1)
        return out.logits[:, -1].float().log_softmax(-1).cpu(), {"layers": layers, "mask": mask}

    def continuation_logprobs(self, context: "SourceContext", rows: Sequence[int], prefixes: Sequence[Sequence[int]]):
        """log P(t | source, prefix) (len(rows) x vocab, on the CPU): the next token after each prefix, the
        prefix continuing source `rows[i]` of `context`."""
        import torch

        logits = self._continue(context, rows, prefixes)
        return logits[torch.arange(len(rows)), torch.tensor([len(p) for p in prefixes])].float().log_softmax(-1).cpu()

    def _continue(self, context: "SourceContext", rows: Sequence[int], prefixes: Sequence[Sequence[int]]):
        """Logits (R x (T + 1) x vocab; log-probabilities where they come from `context.first`, which
        log_softmax leaves as they are): position j predicts the token after prefix[:j]."""
        import torch
        from transformers import DynamicCache
        from transformers.modeling_outputs import BaseModelOutput

        width = max(len(p) for p in prefixes)
        index = torch.tensor(list(rows), device=self.device)
        with torch.inference_mode():
            if self.causal and width == 0:
                return context.first[index.cpu()].unsqueeze(1).to(self.device)
            ids = torch.full((len(prefixes), width + (0 if self.causal else 1)), self.pad_id, dtype=torch.long)
            shift = 0 if self.causal else 1
            for i, p in enumerate(prefixes):
                if not self.causal:
                    ids[i, 0] = self.start_id
                ids[i, shift : shift + len(p)] = torch.tensor(list(p), dtype=torch.long)
            ids, ones = ids.to(self.device), torch.ones_like(ids, device=self.device)  # pads follow: harmless
            if self.causal:
                past = context.mask[index]
                cache = DynamicCache([(k[index], v[index]) for k, v in context.layers])
                positions = past.sum(1, keepdim=True) + torch.arange(width, device=self.device)[None, :]
                logits = self.model(input_ids=ids, attention_mask=torch.cat([past, ones], 1),
                                    position_ids=positions, **self._cache_arg(cache), use_cache=True).logits
                return torch.cat([context.first[index.cpu()].unsqueeze(1).to(self.device), logits.float()], 1)
            logits = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=context.states[index]),
                                attention_mask=context.mask[index], decoder_input_ids=ids,
                                decoder_attention_mask=ones).logits
            return logits

    # ------------------------------------------------------------------ generation
    def generate(self, sources: Sequence[str], *, num_beams: int, max_new_tokens: int, min_new_tokens: int = 1,
                 allowed: Callable | None = None, recorder=None, length_penalty: float = 0.0) -> list[list[tuple[list[int], float]]]:
        """Beam search; per source, the final hypotheses as (generated token ids without eos/pad, score).

        `allowed(batch_id, generated_ids) -> list[int]` constrains every step (None: free generation);
        `recorder` is an extra LogitsProcessor that sees each step's masked log-probabilities. A score is the
        hypothesis's summed log-probability divided by its length (eos included) ** `length_penalty`, as in
        Hugging Face's and fairseq's beam search (0: the sum; fairseq's default lenpen is 1: the mean)."""
        import torch
        from transformers import LogitsProcessorList

        encoder = self._encoder_inputs(sources)  # with soft prompt vectors: inputs_embeds (bert2bert only)
        offset = encoder["input_ids"].shape[1] if self.causal else 1  # where generated tokens start in input_ids
        kwargs = {}
        if allowed is not None:
            kwargs["prefix_allowed_tokens_fn"] = lambda b, seq: allowed(b, seq[offset:].tolist())
        processors = None
        if recorder is not None:
            recorder.offset = offset
            processors = LogitsProcessorList([recorder])
        with torch.inference_mode():
            out = self.model.generate(
                **encoder, num_beams=num_beams, num_return_sequences=num_beams,
                max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False, early_stopping=False,
                length_penalty=length_penalty, output_scores=True, return_dict_in_generate=True, logits_processor=processors,
                **kwargs,
            )
        sequences = out.sequences[:, offset:].tolist()
        scores = out.sequences_scores.tolist()
        results = []
        for b in range(len(sources)):
            hyps = []
            for seq, score in zip(sequences[b * num_beams : (b + 1) * num_beams], scores[b * num_beams : (b + 1) * num_beams]):
                while seq and seq[-1] in (self.eos_id, self.pad_id):  # finished beams come padded
                    seq = seq[:-1]
                if seq:
                    hyps.append((seq, score))
            results.append(hyps)
        return results


class SourceContext:
    """Sources read once by a key model (`KeyModel.context`): their padded attention mask, a causal model's
    per-layer key/value tensors or a seq2seq model's encoder states, and the first target position's
    log-probabilities (`first`, sources x vocab, on the CPU)."""

    def __init__(self, sources: list[str], mask, layers, states, first):
        self.sources, self.mask, self.layers, self.states, self.first = sources, mask, layers, states, first


# ---------------------------------------------------------------------------------------- loading


def _special_tokens(tokenizer, causal: bool) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] ... [SEP] for BERT, <s> ... </s>
    for BART, ... </s> for T5, <s> ... for Llama); a causal model's input keeps only those before it."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if at is None:
        return [], []
    return full[:at], ([] if causal else full[at + len(plain):])


def _bert2bert():
    """An encoder-decoder tied from two MiniLM copies (the decoder's cross-attention starts at random)."""
    from transformers import AutoTokenizer, EncoderDecoderModel

    from retrieval.models import model_path

    folder = str(model_path("minilm"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(folder, folder)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    return model, tokenizer


def _pretrained(name: str):
    """(model, tokenizer) of a registry name or a local Hugging Face folder, in float32."""
    import torch
    from transformers import AutoTokenizer

    from retrieval.models import transformers_folder

    folder = transformers_folder(name)
    model = _auto_class(folder).from_pretrained(folder, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder)


def _returned_cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _base_fingerprint(base: str) -> str:
    from retrieval.models import model_fingerprint, transformers_folder

    return model_fingerprint(transformers_folder(base))


def _auto_class(folder: Path):
    """AutoModelForSeq2SeqLM for encoder-decoder configs (BART, T5, bert2bert), else AutoModelForCausalLM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, EncoderDecoderModel

    config = AutoConfig.from_pretrained(folder)
    if config.model_type == "encoder-decoder":
        return EncoderDecoderModel
    return AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
