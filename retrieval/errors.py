"""Errors users see: each names where the problem is."""
from __future__ import annotations

from pathlib import Path

from indexes.manifest import IndexLoadError, IndexSaveError  # noqa: F401  (re-exported: users catch them from here)


class DataError(ValueError):
    """Bad input data: names the file, the line (1-based) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = self.path if line is None else f"{self.path}, line {line}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ModelNotAvailable(RuntimeError):
    """A named model whose package is not installed; the message says what to pip install."""


class SpecError(ValueError):
    """A retriever spec, option or argument that cannot work (unknown key, wrong type, out of range);
    raised before any indexing or encoding starts."""


# what the CLI reports as one line and exit status 2; anything else is a bug and keeps its traceback
USER_ERRORS = (DataError, IndexLoadError, IndexSaveError, SpecError, ModelNotAvailable, FileNotFoundError)
