"""What the generative retrievers (SEAL, CorpusBrain, UGR) share: a key model named in the config, and
search-time options with defaults that a built or loaded index can change."""
from __future__ import annotations

from typing import ClassVar

from retrieval.api import Retriever
from pathlib import Path

from retrieval.generative.keymodel import CONFIG_FILE, KeyModel, layout_templates


class GenerativeRetriever(Retriever):
    """A retriever over a `KeyModel`: `config["model"]` is a saved key model folder (one with keymodel.json),
    or an untrained model ("bert2bert", a registry name such as "smollm2-135m", or a Hugging Face folder);
    `layout` (None: the saved model's own; for an untrained one "oneshot" if causal, else "plain") lays
    queries out for it, e.g. "oneshot" for a
    zero-shot prompt; `search_defaults` are its search-time options."""

    search_defaults: ClassVar[dict]
    method: ClassVar[str]  # the method's name in messages

    def __init__(self, model: str, search: dict, **config):
        self._check_options(search)
        super().__init__(model=str(model), **config, **{**self.search_defaults, **search})
        if self.layout is not None:
            layout_templates(self.layout)  # fails early on an unknown name
        self._keymodel: KeyModel | None = None

    def _check_options(self, options: dict) -> None:
        unknown = set(options) - set(self.search_defaults)
        if unknown:
            raise ValueError(f"unknown {self.method} option(s) {sorted(unknown)}; known: {sorted(self.search_defaults)}")
        for name, value in options.items():
            default = self.search_defaults[name]
            # a number where a float is expected is fine; a bool is not a number here (beam=true is a typo)
            expected = (int, float) if type(default) is float else type(default)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
                raise ValueError(f"{self.method} option {name}={value!r}: expected {type(default).__name__} "
                                 f"(its default is {default!r})")

    def set_search_options(self, **options) -> None:
        """Change search-time options of a built or loaded index (beam, ablation switches, ...)."""
        self._check_options(options)
        self.config.update(options)

    @property
    def layout(self) -> str | dict | None:
        """The key model layout asked for (SEAL and CorpusBrain call it `prompt`; UGR, whose `prompt` is
        its task prompt design, calls it `layout`)."""
        return self.config.get("prompt")

    @property
    def keymodel(self) -> KeyModel:
        if self._keymodel is None:
            name, layout = self.config["model"], self.layout
            if (Path(name) / CONFIG_FILE).is_file():
                self._keymodel = KeyModel.load(name)
                if layout is not None:
                    self._keymodel.set_layout(layout)
            else:
                self._keymodel = KeyModel.create(name, layout=layout)
        return self._keymodel
