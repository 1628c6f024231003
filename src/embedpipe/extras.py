"""The optional extras of the install, and imports that fail with the command to install one.

`pip install embedpipe` (the core) loads, exports and evaluates artefacts; what builds them
(Spark, torch, Prefect, numba, the report's plots) comes with `embedpipe[pipeline]`, the
Hugging Face bridge with `embedpipe[hf]`. A core install that reaches for one of those
packages gets `MissingExtraError` naming the extra instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Top-level module -> the extra of pyproject.toml that installs it (tests/test_extras.py checks
# this against pyproject.toml).
EXTRA_OF = {
    "torch": "pipeline",
    "pyspark": "pipeline",
    "pandas": "pipeline",
    "numba": "pipeline",
    "llvmlite": "pipeline",
    "prefect": "pipeline",
    "pydantic": "pipeline",
    "matplotlib": "pipeline",
    "tensorboard": "pipeline",
    "transformers": "hf",
    "sentence_transformers": "hf",
    "huggingface_hub": "hf",
    "tokenizers": "hf",
    "PIL": "pipeline",
    "gensim": "gensim",
}


class MissingExtraError(ModuleNotFoundError):
    """A package of an optional extra is not installed; the message says how to get it."""


def install_hint(error: ModuleNotFoundError) -> str | None:
    """`pip install 'embedpipe[EXTRA]'` when the missing module comes with an extra, else None."""
    extra = EXTRA_OF.get((error.name or "").partition(".")[0])
    return None if extra is None else f"pip install 'embedpipe[{extra}]'"


def require(module: str, purpose: str) -> ModuleType:
    """`module`, imported; `MissingExtraError` saying which extra to install when it is absent.

    `purpose` says what needs it ("the report's plots"), for the message.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = install_hint(e)
        if hint is None:
            raise
        package = (e.name or module).partition(".")[0]
        raise MissingExtraError(
            f"{purpose} needs {package}, which the core install does not include: {hint}",
            name=e.name,
        ) from e
