"""ffnskip: LLaMA-family GGUF inference whose decode loop skips saturated FFN blocks."""
from __future__ import annotations

from ._core import FfnskipError, FormatError

__all__ = ["FfnskipError", "FormatError"]
__version__ = "0.1.0"
