"""Calibration profile files and skip="auto": which profile a model uses.

The lookup order is `<model>.ffnskip.json` beside the model, then a cached profile,
then a quick calibration that is cached. Only the last step needs the calibration
code, imported then; this module itself needs neither it nor the session, so that
skip.py can resolve "auto" without an import loop through them.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
from typing import Any, Callable

from .jsonfile import write_json_atomic

AUTO_BUDGET = 0.02   # the quick calibration's perplexity budget (2%)


def load_profile_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The skip settings stored in a calibration profile (`ffnskip calibrate`)."""
    with open(path, encoding="utf-8") as f:
        profile = json.load(f)
    config = profile.get("config") if isinstance(profile, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{os.fspath(path)}: not a calibration profile (no 'config' object)")
    surrogates = config.get("surrogates")
    if surrogates:
        # A sidecar named in the profile is found beside the profile.
        config = dict(config, surrogates=os.path.join(os.path.dirname(os.path.abspath(path)), surrogates))
    return config


def save_profile(profile: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a profile as JSON (atomically: a temporary file beside it, then a rename)."""
    write_json_atomic(profile, path, allow_nan=False)


def beside_model_path(model_path: str | os.PathLike[str]) -> pathlib.Path:
    """`<model>.ffnskip.json`: a profile stored next to the model file."""
    return pathlib.Path(os.fspath(model_path) + ".ffnskip.json")


def cached_profile_path(model_path: str | os.PathLike[str]) -> pathlib.Path:
    """The cache file of the automatic profile, keyed by the model's name, size and mtime."""
    from .models import cache_dir

    st = os.stat(model_path)
    name = pathlib.Path(model_path).name
    key = hashlib.sha1(f"{os.path.abspath(model_path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "profiles" / f"{name}.{st.st_size}.{st.st_mtime_ns}.{key}.json"


def auto_profile_path(model_path: str | os.PathLike[str], progress: bool = True,
                      runner: Callable[..., dict[str, Any]] | None = None) -> pathlib.Path:
    """The profile skip="auto" uses: `<model>.ffnskip.json` when present, else the cached
    one, else a quick calibration (2% perplexity budget on the built-in sample) that is
    then cached."""
    model_path = os.fspath(model_path)
    beside = beside_model_path(model_path)
    if beside.is_file():
        return beside
    cached = cached_profile_path(model_path)
    if cached.is_file():
        return cached
    from .calibrate import calibrate, sample_text

    if progress:
        print(f"ffnskip: no calibration profile for {model_path}; calibrating (2% perplexity budget, "
              f"built-in text sample), cached at {cached}", file=sys.stderr, flush=True)
    run = runner or calibrate
    profile = run(model_path, sample_text(), max_ppl_increase=AUTO_BUDGET, tokens=128, held_out_tokens=256,
                  generate_tokens=256, max_evals=6, progress=progress)
    profile["auto"] = {"text": "built-in sample", "budget": AUTO_BUDGET}
    save_profile(profile, cached)
    return cached


def auto_profile_config(model: Any) -> dict[str, Any]:
    """SkipConfig fields for skip="auto" (model: a GGUF path or a loaded Model)."""
    path = getattr(model, "path", model)
    if path is None:
        raise ValueError('skip="auto" needs the model: pass model= (a GGUF path or a Model)')
    return load_profile_config(str(auto_profile_path(path)))
