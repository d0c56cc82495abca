"""ffnskip: LLaMA-family GGUF inference whose decode loop skips saturated FFN blocks.

>>> from ffnskip import Session
>>> s = Session("model.gguf")
>>> for piece in s.stream("The capital of France is", max_tokens=32):
...     print(piece, end="")
"""
from __future__ import annotations

from ._core import FfnskipError, FormatError, Model, SkipConfig, available_backends, build_info
from .session import Completion, Session
from .skip import skip_config

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
