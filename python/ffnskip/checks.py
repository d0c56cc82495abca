"""Argument checks at the Python edge: a bad argument raises an exception that names
it, instead of a pybind11 signature dump (or a string the native side cannot take)."""
from __future__ import annotations

import numbers
import operator
from typing import Any, Sequence


def text(value: Any, name: str) -> str:
    """`value` as a str that UTF-8 can encode (no lone surrogates such as "\\ud800")."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text: {e.reason} at index {e.start} "
                         f"({value[e.start:e.end]!r})") from None
    return value


def texts(value: Any, name: str) -> list[str]:
    """A str or a sequence of str (as `stop` takes) as a checked list."""
    if isinstance(value, str):
        return [text(value, name)]
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a str or a list of str, not {type(value).__name__}")
    return [text(v, f"{name}[{i}]") for i, v in enumerate(value)]


def tokens(value: Any, name: str, n_vocab: int) -> list[int]:
    """Token ids as a list of ints in [0, n_vocab)."""
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be token ids (a sequence of int), not {type(value).__name__}")
    out = []
    for i, t in enumerate(value):
        if isinstance(t, bool):
            raise TypeError(f"{name}[{i}] must be an int token id, not bool")
        try:
            t = operator.index(t)
        except TypeError:
            raise TypeError(f"{name}[{i}] must be an int token id, not {type(t).__name__}") from None
        if not 0 <= t < n_vocab:
            raise ValueError(f"{name}[{i}]: token id {t} is out of range [0, {n_vocab})")
        out.append(t)
    return out


def set_field(params: Any, key: str, value: Any, what: str = "argument") -> None:
    """setattr on a native params struct, with the field's type checked first: bool for
    bool fields only, no bool for numbers, ints within the native field's range."""
    current = getattr(params, key)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{what} {key}={value!r}: expected a bool")
    elif isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{what} {key}={value!r}: expected an int")
        value = operator.index(value)
    elif isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{what} {key}={value!r}: expected a number")
        value = float(value)
    try:
        setattr(params, key, value)
    except TypeError:
        if isinstance(value, int):   # the only int pybind11 refuses is one that does not fit
            raise ValueError(f"{what} {key}={value!r} is out of range") from None
        raise TypeError(f"{what} {key}={value!r}: expected {type(current).__name__}") from None
