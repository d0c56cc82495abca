"""Which ffnskip the benchmarks import. This checkout's python/ when the native module
has been built there (the developer build puts python/ffnskip/_core*.so beside the
sources), otherwise the installed package: an unbuilt python/ (a fresh clone next to
`pip install .`) is taken off sys.path and PYTHONPATH, since its ffnskip cannot import.

    import checkout
    checkout.use()            # before `import ffnskip`
    env = checkout.env()      # for worker processes
"""
from __future__ import annotations

import importlib.machinery
import os
import pathlib
import sys

IN_TREE = pathlib.Path(__file__).resolve().parent.parent / "python"
# the native module itself, not its type stub (_core.pyi), which every checkout has
BUILT_IN_TREE = any((IN_TREE / "ffnskip" / f"_core{suffix}").is_file()
                    for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _is_in_tree(entry: str) -> bool:
    try:
        return pathlib.Path(entry or ".").resolve() == IN_TREE
    except OSError:
        return False


def use() -> bool:
    """Put the checkout first on sys.path when it is built, else take it off; True when
    the checkout's ffnskip is the one imported."""
    sys.path[:] = [p for p in sys.path if not _is_in_tree(p)]
    if BUILT_IN_TREE:
        sys.path.insert(0, str(IN_TREE))
    return BUILT_IN_TREE


def env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment whose PYTHONPATH makes the same choice as use()."""
    out = dict(os.environ if base is None else base)
    parts = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and not _is_in_tree(p)]
    if BUILT_IN_TREE:
        parts.insert(0, str(IN_TREE))
    if parts:
        out["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        out.pop("PYTHONPATH", None)
    return out
