"""The language model behind generative retrieval: query (plus a marker) in, corpus n-gram out.

Two backbones exist offline (MODELS.md): `bert2bert` (an encoder-decoder tied from two MiniLM-L6 copies,
49M parameters, cross-attention fresh) and `smollm2-135m` (a decoder-only LM; source and target joined
by a separator, loss on the target only). Both go through Hugging Face `generate` with a
`prefix_allowed_tokens_fn`, both score given keys teacher-forced, and both save to / load from a folder.

Documents are tokenised with the model's own tokenizer (no special tokens); the end-of-sequence token
doubles as the title terminator in the corpus stream, so a title key ends exactly where generation stops.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

BACKBONES = ("bert2bert", "smollm2-135m")
CONFIG_FILE = "keymodel.json"


class KeyModel:
    """A seq2seq or causal LM that generates corpus n-grams for a query.

    Args:
        model: a transformers model (EncoderDecoderModel, or a causal LM).
        tokenizer: its tokenizer.
        backbone: "bert2bert" or "smollm2-135m" (decides the input layout).
        max_source_tokens: queries are truncated to this many tokens.
    """

    def __init__(self, model, tokenizer, backbone: str, max_source_tokens: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.causal = backbone != "bert2bert"
        self.max_source_tokens = max_source_tokens
        self.eos_id = int(tokenizer.sep_token_id if not self.causal else tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        if self.causal:
            tokenizer.pad_token_id = self.pad_id
            tokenizer.padding_side = "left"  # generation continues every prompt from the same column
            self.start_id = int(tokenizer("\n", add_special_tokens=False)["input_ids"][-1])  # source/target separator
        else:
            self.start_id = int(tokenizer.cls_token_id)  # decoder start
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.prompt = None  # a UGR TaskPrompt (retrieval/generative/prompts.py) applied to every source
        self.task = None  # the prompt task of sources that carry none (TaskSource carries its own)

    @property
    def device(self):
        """Where the model's weights are (`keymodel.model.to("cuda")` moves it; inputs follow)."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ creation and storage
    @classmethod
    def create(cls, backbone: str = "bert2bert", seed: int = 0, max_source_tokens: int = 64) -> "KeyModel":
        """A fresh model from the offline weights (the bert2bert cross-attention is initialised at random)."""
        import torch
        from transformers import AutoTokenizer

        from retrieval.models import model_path

        torch.manual_seed(seed)
        if backbone == "bert2bert":
            from transformers import EncoderDecoderModel

            folder = str(model_path("minilm"))
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(folder, folder)
            model.config.decoder_start_token_id = tokenizer.cls_token_id
            model.config.pad_token_id = tokenizer.pad_token_id
            model.config.eos_token_id = tokenizer.sep_token_id
            model.config.vocab_size = model.config.decoder.vocab_size
        elif backbone == "smollm2-135m":
            from retrieval.models import smollm2_folder

            from transformers import AutoModelForCausalLM

            folder = str(smollm2_folder())
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        else:
            raise ValueError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
        keymodel = cls(model, tokenizer, backbone, max_source_tokens)
        keymodel._sync_generation_config()
        return keymodel

    def _sync_generation_config(self) -> None:
        gc = self.model.generation_config
        gc.eos_token_id, gc.pad_token_id = self.eos_id, self.pad_id
        if not self.causal:
            gc.decoder_start_token_id = gc.bos_token_id = self.start_id
        gc.max_length = None

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from retrieval.generative.prompts import MODULE_NAME, PROMPT_CONFIG, PROMPT_VECTORS

        soft = self.model._modules.pop(MODULE_NAME, None)  # prompt vectors go beside the weights, not in them
        try:
            self.model.save_pretrained(folder)
        finally:
            if soft is not None:
                self.model.add_module(MODULE_NAME, soft)
        self.tokenizer.save_pretrained(folder)
        for name in (PROMPT_CONFIG, PROMPT_VECTORS):  # a prompt-less save over a prompted one
            (folder / name).unlink(missing_ok=True)
        if self.prompt is not None:
            self.prompt.save(folder)
        (folder / CONFIG_FILE).write_text(
            json.dumps({"backbone": self.backbone, "max_source_tokens": self.max_source_tokens}, indent=2), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: str | Path) -> "KeyModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer, EncoderDecoderModel

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; not a saved generative key model")
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        loader = EncoderDecoderModel if config["backbone"] == "bert2bert" else AutoModelForCausalLM
        keymodel = cls(loader.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), config["backbone"],
                       config["max_source_tokens"])
        keymodel._sync_generation_config()
        from retrieval.generative.prompts import PROMPT_CONFIG, TaskPrompt

        if (folder / PROMPT_CONFIG).is_file():
            keymodel.set_prompt(TaskPrompt.load(folder))
        return keymodel

    def set_prompt(self, prompt, task: str | None = None) -> None:
        """Apply a UGR `TaskPrompt` (None removes it) to every source; `task`: the default granularity."""
        from retrieval.generative.prompts import MODULE_NAME, task_of

        self.model._modules.pop(MODULE_NAME, None)
        if prompt is not None and prompt.uses_vectors:
            if self.causal:
                raise ValueError(f"{prompt.design} prompts prepend vectors to an encoder's input; the causal "
                                 f"{self.backbone} backbone has none: use a discrete prompt or bert2bert")
            self.model.add_module(MODULE_NAME, prompt.vectors.to(self.device))
            prompt.vectors = self.model._modules[MODULE_NAME]
        for p in self.model.parameters():  # prompt tuning proper (tune_model=False) freezes the backbone
            p.requires_grad_(prompt is None or prompt.tune_model)
        if prompt is not None and prompt.uses_vectors:
            prompt.vectors.requires_grad_(True)
        self.prompt = prompt
        self.task = task_of(task) if task is not None else self.task

    def _task(self, source: str) -> str | None:
        return getattr(source, "granularity", None) or self.task

    # ------------------------------------------------------------------ tokenisation
    def tokens(self, text: str) -> list[int]:
        """Token ids of corpus text as targets see it (no special tokens; a leading space for BPE)."""
        text = (" " + text.strip()) if self.causal else text
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _source_ids(self, source: str) -> list[int]:
        ids = self.tokenizer(source, add_special_tokens=not self.causal, truncation=True,
                             max_length=self.max_source_tokens)["input_ids"]
        if self.prompt is not None and self.prompt.uses_text:  # discrete words first (after [CLS]), untruncated
            words = self.prompt.text_ids(self, self._task(source))
            ids = words + ids if self.causal else ids[:1] + words + ids[1:]
        return ids + [self.start_id] if self.causal else ids

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
        logprobs = logits.float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return logprobs.masked_fill(~target_mask, 0.0), target_mask

    def loss(self, sources: Sequence[str], targets: Sequence[Sequence[int]]):
        """Mean token cross-entropy of `targets` (token ids, eos included by the caller where wanted)."""
        logprobs, mask = self.target_logprobs(sources, targets)
        return -logprobs.sum() / mask.sum()

    def score_keys(self, source: str, keys: Sequence[Sequence[int]], batch_size: int = 256) -> list[float]:
        """log P(key | source): the sum of its tokens' log-probabilities, teacher-forced (SEAL's rescoring)."""
        import torch

        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(keys), batch_size):
                chunk = keys[start : start + batch_size]
                logprobs, _ = self.target_logprobs([source] * len(chunk), chunk)
                scores += logprobs.sum(1).tolist()
        return scores

    def first_token_logprobs(self, source: str) -> np.ndarray:
        """log P(t | source) for every token t at the first target position (SEAL's unigram scores)."""
        import torch

        with torch.inference_mode():
            encoder = self._encoder_inputs([source])
            if self.causal:
                logits = self.model(**encoder).logits[0, -1]
            else:
                start = torch.full((1, 1), self.start_id, dtype=torch.long, device=self.device)
                logits = self.model(**encoder, decoder_input_ids=start).logits[0, -1]
        return logits.float().log_softmax(-1).cpu().numpy()

    def next_token_logprobs(self, sources: Sequence[str], prefixes: Sequence[Sequence[int]]):
        """log P(t | source, prefix) for every token t (rows x vocab tensor), one row per (source, prefix)."""
        import torch

        with torch.inference_mode():
            if self.causal:
                rows = [self._source_ids(s) + list(p) for s, p in zip(sources, prefixes)]
                width = max(map(len, rows))
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, row in enumerate(rows):
                    ids[i, width - len(row):] = torch.tensor(row)
                    mask[i, width - len(row):] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            else:
                encoder = self._encoder_inputs(sources)
                width = 1 + max(len(p) for p in prefixes)
                decoder_in = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
                decoder_mask = torch.zeros_like(decoder_in)
                for i, p in enumerate(prefixes):
                    decoder_in[i, : len(p) + 1] = torch.tensor([self.start_id, *p])
                    decoder_mask[i, : len(p) + 1] = 1
                logits = self.model(**encoder, decoder_input_ids=decoder_in.to(self.device),
                                    decoder_attention_mask=decoder_mask.to(self.device)).logits
                logits = logits[torch.arange(len(prefixes)), torch.tensor([len(p) for p in prefixes])]
        return logits.float().log_softmax(-1).cpu()

    # ------------------------------------------------------------------ generation
    def generate(self, sources: Sequence[str], *, num_beams: int, max_new_tokens: int, min_new_tokens: int = 1,
                 allowed: Callable | None = None, recorder=None) -> list[list[tuple[list[int], float]]]:
        """Beam search; per source, the final hypotheses as (generated token ids without eos/pad, score).

        `allowed(batch_id, generated_ids) -> list[int]` constrains every step (None: free generation);
        `recorder` is an extra LogitsProcessor that sees each step's masked log-probabilities."""
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
                length_penalty=0.0, output_scores=True, return_dict_in_generate=True, logits_processor=processors,
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
