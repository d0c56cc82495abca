"""JSON files written atomically (a temporary file beside the target, then a rename), so a
reader never sees half a file; numpy scalars and arrays are written as plain numbers."""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_json_atomic(obj: Any, path: str | os.PathLike[str], *, allow_nan: bool) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=allow_nan, default=_numpy_to_json)
        f.write("\n")
    os.replace(tmp, path)


def _numpy_to_json(value: Any) -> Any:
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
