"""Task prompts for UGR: tell one key model which retrieval granularity a query is for.

Chen, Zhang, Guo, de Rijke, Liu, Fan, Cheng, "A Unified Generative Retriever for Knowledge-Intensive
Language Tasks via Prompt Learning" (SIGIR 2023, arXiv 2304.14856; ict-bigdatalab/UGR holds only a README).
UGR serves four retrieval tasks (document, passage, sentence, entity retrieval) with one seq2seq model,
n-gram identifiers and an FM-index, and adds task-specific prompt tokens to the query. The paper compares
three prompt designs; all three are here, plus "none" (plain SEAL):

- "discrete": natural-language words for the task, prepended to the query text
  (`[CLS] sentence retrieval <query> || body [SEP]`);
- "soft" (continuous): `length` trainable vectors per task, prepended to the encoder's input embeddings
  (before `[CLS]`; BERT's position embeddings are then added to them as to any input embedding);
  the attention mask grows by `length` ones. The decoder never sees them except through cross-attention;
- "hybrid": both, soft vectors first, then the discrete words and the query.

What we followed and what we could not check (see docs/ugr.md):
- followed (abstract / introduction, reachable in stored copies): four granularities, one prompt per
  *task* shared by every dataset of that granularity, multi-task supervised training of one model with
  the prompts, the three designs (discrete, continuous, hybrid);
- NOT found in the stored text (only the abstract and introduction were retrievable): the exact prompt
  wording, the continuous prompt length and initialisation, and whether the backbone is frozen.
  Our choices, all options: discrete text "<task> retrieval" (`DISCRETE_TEXT`); `length=10`;
  soft vectors initialised from the embeddings of the task's discrete words, repeated to `length`
  (Lester et al. 2021's "class label" initialisation; `init="random-vocab"` draws random vocabulary
  rows instead); the backbone is tuned together with the prompt (`tune_model=True`; False freezes it,
  i.e. prompt tuning proper).

Soft prompts need an encoder (bert2bert). The causal SmolLM2 path takes discrete prompts only; soft and
hybrid prompts are refused there with a clear error.

Which task a source is for: a `TaskSource` (a str that carries `.granularity`, so mixed multi-task
batches go through the unchanged trainer), else the key model's active `task` (what a UGR retriever sets).

Example:
    >>> km = KeyModel.create("bert2bert")
    >>> TaskPrompt.create(km, "hybrid", length=10).attach(km, task="sentence")
    >>> km.loss([TaskSource("aspirin prevents stroke || body", "sentence")], [km.tokens("aspirin") + [km.eos_id]])
    >>> km.save("model")   # model/prompts.json + model/prompts.pt beside the weights
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

GRANULARITIES = ("document", "passage", "sentence", "entity")  # UGR's four retrieval tasks
DESIGNS = ("none", "discrete", "soft", "hybrid")
# unit corpus names (training/ugr_data.py) and task names -> the task whose prompt they use
TASK_OF = {"document": "document", "page": "document", "passage": "passage", "paragraph": "passage",
           "sentence": "sentence", "entity": "entity"}
DISCRETE_TEXT = {task: f"{task} retrieval" for task in GRANULARITIES}  # our wording (the paper's not found)
PROMPT_CONFIG = "prompts.json"
PROMPT_VECTORS = "prompts.pt"
MODULE_NAME = "task_prompt"  # the soft vectors' name as a submodule of the transformers model


def task_of(name: str) -> str:
    """The prompt task of a granularity or unit-corpus name ("paragraph" -> "passage")."""
    try:
        return TASK_OF[name]
    except KeyError:
        raise ValueError(f"unknown granularity {name!r}: choose one of {', '.join(TASK_OF)}") from None


class TaskSource(str):
    """A model source (query text with its SEAL marker) tagged with the task its prompt is for.

    It is a `str`, so every code path that takes sources takes it; `KeyModel` reads `.granularity`."""

    granularity: str

    def __new__(cls, text: str, granularity: str):
        source = super().__new__(cls, text)
        source.granularity = task_of(granularity)
        return source

    def __getnewargs__(self):  # pickling (e.g. DataLoader workers) keeps the tag
        return (str(self), self.granularity)


class TaskPrompt:
    """One prompt per retrieval task, in one of the designs "none", "discrete", "soft", "hybrid".

    Args:
        design: see the module docstring.
        length: soft vectors per task (soft, hybrid).
        texts: discrete words per task (discrete, hybrid); default `DISCRETE_TEXT`.
        tasks: the tasks that get a prompt; default all four.
        tune_model: train the backbone with the prompt (True) or the prompt alone (False).
        init: "text" (soft vectors from the embeddings of the task's discrete words) or "random-vocab".
    """

    def __init__(self, design: str = "hybrid", *, length: int = 10, texts: dict[str, str] | None = None,
                 tasks: Sequence[str] = GRANULARITIES, tune_model: bool = True, init: str = "text"):
        if design not in DESIGNS:
            raise ValueError(f"unknown prompt design {design!r}: choose one of {', '.join(DESIGNS)}")
        if init not in ("text", "random-vocab"):
            raise ValueError(f"unknown soft prompt init {init!r}: choose 'text' or 'random-vocab'")
        if _has_vectors(design) and length < 1:
            raise ValueError(f"a {design} prompt needs length >= 1, got {length}")
        self.design = design
        self.length = int(length) if _has_vectors(design) else 0
        self.tasks = tuple(task_of(t) for t in tasks)
        self.texts = {t: (texts or DISCRETE_TEXT)[t] for t in self.tasks} if design in ("discrete", "hybrid") else {}
        self.tune_model = tune_model
        self.init = init
        self.vectors = None  # torch.nn.ParameterDict {task: (length x hidden)} once built

    # ------------------------------------------------------------------ properties
    @property
    def uses_text(self) -> bool:
        return bool(self.texts)

    @property
    def uses_vectors(self) -> bool:
        return self.length > 0

    def config(self) -> dict:
        return {"design": self.design, "length": self.length, "texts": self.texts, "tasks": list(self.tasks),
                "tune_model": self.tune_model, "init": self.init}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, keymodel, design: str = "hybrid", *, seed: int = 0, **options) -> "TaskPrompt":
        """A prompt with its soft vectors (if any) initialised for `keymodel`'s encoder embeddings."""
        prompt = cls(design, **options)
        if prompt.uses_vectors:
            prompt._init_vectors(keymodel, seed)
        return prompt

    def _init_vectors(self, keymodel, seed: int) -> None:
        import torch

        if keymodel.causal:
            raise ValueError(f"{self.design} prompts prepend vectors to an encoder's input embeddings; the causal "
                             f"{keymodel.backbone} backbone has no encoder: use design='discrete' or bert2bert")
        table = encoder_embeddings(keymodel).weight.detach()
        generator = torch.Generator().manual_seed(seed)
        vectors = {}
        for task in self.tasks:
            if self.init == "text":
                words = keymodel.tokenizer(DISCRETE_TEXT[task] if not self.texts else self.texts[task],
                                           add_special_tokens=False)["input_ids"]
                rows = [words[i % len(words)] for i in range(self.length)]
            else:
                rows = torch.randint(0, table.shape[0], (self.length,), generator=generator).tolist()
            vectors[task] = torch.nn.Parameter(table[rows].clone().float())
        self.vectors = torch.nn.ParameterDict(vectors)

    def attach(self, keymodel, task: str | None = None):
        """Make `keymodel` apply this prompt everywhere (training, scoring, generation); returns it.

        The soft vectors become a submodule of the transformers model, so `keymodel.model.parameters()`
        (what `train_keymodel` optimises) and `.to(device)` include them; `KeyModel.save` keeps them out
        of the weights file and writes them beside it."""
        keymodel.set_prompt(self, task)
        return keymodel

    # ------------------------------------------------------------------ application
    def text_ids(self, keymodel, task: str) -> list[int]:
        """Token ids of the task's discrete words ([] when the design has none)."""
        if not self.uses_text:
            return []
        return keymodel.tokenizer(self.texts[self._check(task)], add_special_tokens=False)["input_ids"]

    def embed(self, keymodel, ids, mask, tasks: Sequence[str]):
        """(inputs_embeds, attention_mask): each row's task vectors, then its token embeddings."""
        import torch

        words = encoder_embeddings(keymodel)(ids)
        soft = torch.stack([self.vectors[self._check(t)] for t in tasks]).to(words.dtype)
        ones = mask.new_ones(mask.shape[0], self.length)
        return torch.cat([soft, words], 1), torch.cat([ones, mask], 1)

    def _check(self, task: str | None) -> str:
        if task is None:
            raise ValueError("the key model has a task prompt but no task: tag sources with TaskSource(text, "
                             "granularity) or set keymodel.task")
        task = task_of(task)
        if task not in self.tasks:
            raise ValueError(f"this prompt has no {task!r} task; it knows {', '.join(self.tasks)}")
        return task

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> None:
        """prompts.json (the design) and, for soft/hybrid prompts, prompts.pt (the vectors, on the CPU)."""
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PROMPT_CONFIG).write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        if self.uses_vectors:
            torch.save({t: v.detach().cpu() for t, v in self.vectors.items()}, folder / PROMPT_VECTORS)

    @classmethod
    def load(cls, folder: str | Path) -> "TaskPrompt":
        import torch

        folder = Path(folder)
        config = json.loads((folder / PROMPT_CONFIG).read_text(encoding="utf-8"))
        prompt = cls(config["design"], length=config["length"], texts=config["texts"] or None,
                     tasks=config["tasks"], tune_model=config["tune_model"], init=config["init"])
        if prompt.uses_vectors:
            path = folder / PROMPT_VECTORS
            if not path.is_file():
                raise FileNotFoundError(f"{folder}: {PROMPT_CONFIG} names a {prompt.design} prompt but {PROMPT_VECTORS} "
                                        "is missing")
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if set(saved) != set(prompt.tasks) or any(v.shape[0] != prompt.length for v in saved.values()):
                raise ValueError(f"{path}: vectors for {sorted(saved)} do not match {PROMPT_CONFIG} "
                                 f"(tasks {list(prompt.tasks)}, length {prompt.length})")
            prompt.vectors = torch.nn.ParameterDict({t: torch.nn.Parameter(v) for t, v in saved.items()})
        return prompt

    def __repr__(self) -> str:
        return f"TaskPrompt({self.design!r}, length={self.length}, tasks={list(self.tasks)})"


def _has_vectors(design: str) -> bool:
    return design in ("soft", "hybrid")


def encoder_embeddings(keymodel):
    """The word-embedding table the encoder reads its input ids through."""
    return keymodel.model.get_encoder().get_input_embeddings()
