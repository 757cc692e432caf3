"""What the generative retrievers (SEAL, CorpusBrain, UGR) share: a key model named in the config, and
search-time options with defaults that a built or loaded index can change."""
from __future__ import annotations

from typing import ClassVar

from retrieval.api import Retriever
from retrieval.generative.keymodel import BACKBONES, KeyModel


class GenerativeRetriever(Retriever):
    """A retriever over a `KeyModel`: `config["model"]` is a saved model folder, or a backbone name for an
    untrained model (only useful for tests); `search_defaults` are its search-time options."""

    search_defaults: ClassVar[dict]
    method: ClassVar[str]  # the method's name in messages

    def __init__(self, model: str, search: dict, **config):
        self._check_options(search)
        super().__init__(model=str(model), **config, **{**self.search_defaults, **search})
        self._keymodel: KeyModel | None = None

    def _check_options(self, options: dict) -> None:
        unknown = set(options) - set(self.search_defaults)
        if unknown:
            raise ValueError(f"unknown {self.method} option(s) {sorted(unknown)}; known: {sorted(self.search_defaults)}")

    def set_search_options(self, **options) -> None:
        """Change search-time options of a built or loaded index (beam, ablation switches, ...)."""
        self._check_options(options)
        self.config.update(options)

    @property
    def keymodel(self) -> KeyModel:
        if self._keymodel is None:
            name = self.config["model"]
            self._keymodel = KeyModel.create(name) if name in BACKBONES else KeyModel.load(name)
        return self._keymodel
