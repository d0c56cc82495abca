"""ffnskip: LLaMA-family GGUF inference whose decode loop skips saturated FFN blocks.

>>> from ffnskip import Session
>>> s = Session("model.gguf")
>>> for piece in s.stream("The capital of France is", max_tokens=32):
...     print(piece, end="")
"""
from __future__ import annotations

import os

from . import _core
from ._core import FfnskipError, FormatError, SkipConfig, available_backends, build_info
from .session import Completion, Session
from .skip import skip_config


class Model(_core.Model):
    """A GGUF model loaded into memory; ``path`` is a file or a registry name (``ffnskip models``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from .models import resolve_model  # a registry name is fetched once into the cache

        super().__init__(resolve_model(os.fspath(path)))


__all__ = [
    "Completion",
    "FfnskipError",
    "FormatError",
    "Model",
    "Session",
    "SkipConfig",
    "available_backends",
    "build_info",
    "skip_config",
]
__version__ = "0.1.0"
