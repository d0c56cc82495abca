"""Skip settings: which FFN blocks a decode step leaves out (see SkipConfig)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Union

from . import _core
from .profiles import auto_profile_config, load_profile_config

SkipSpec = Union[None, str, "os.PathLike[str]", Mapping[str, Any], _core.SkipConfig]

POLICIES = ("full", "ffn_skip", "random", "static", "layers", "shortgpt", "skipdecode")
FIELDS = ("policy", "threshold", "cold_start", "cold_end", "warmup", "refresh_every", "max_skip",
          "target_ratio", "skipdecode_span", "seed", "layers", "record_masks", "record_cosines",
          "surrogates")


def skip_config(spec: SkipSpec = None, *, model: Any = None, **overrides: Any) -> _core.SkipConfig:
    """Build a SkipConfig from None / "full" (no skipping), a policy name
    ("ffn_skip", "random", ...), a calibration profile (a .json path), "auto" (the
    model's profile: `<model>.ffnskip.json`, else a cached one, else a quick
    calibration; needs ``model``, a GGUF path or a Model), a mapping of fields, or a
    SkipConfig; keyword arguments override single fields.

    The defaults reproduce the FFN-SkipLLM authors' setting: threshold 0.95, 5 + 5
    cold layers, warm-up n_ctx / 64 tokens, a full refresh every 6th token. For
    ``ffn_skip``, ``layers`` (optional) lists the only FFNs the gate may leave out.
    """
    config = _core.SkipConfig()
    fields: dict[str, Any] = {}
    if spec is None:
        pass
    elif isinstance(spec, _core.SkipConfig):
        fields = {name: getattr(spec, name) for name in FIELDS}
    elif isinstance(spec, Mapping):
        fields = dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.endswith(".json"):
            fields = load_profile_config(text)
        elif text == "auto":
            if model is None:
                raise ValueError('skip="auto" needs the model (a GGUF path or a Model) to find or make its profile')
            fields = auto_profile_config(model)
        else:
            fields = {"policy": text}
    else:
        raise TypeError(f"skip must be None, a policy name, a profile path, a mapping or a SkipConfig, not {type(spec).__name__}")
    fields.update(overrides)
    for name, value in fields.items():
        if name not in FIELDS:
            raise ValueError(f"unknown skip setting {name!r} (known: {', '.join(FIELDS)})")
        if value is None:
            continue
        if name == "layers":
            value = [int(v) for v in value]
            config.layers = value
            continue
        if name == "policy":
            config.policy = value
            continue
        if name == "surrogates" and isinstance(value, os.PathLike):
            value = os.fspath(value)
        from .checks import set_field

        set_field(config, name, value, "skip setting")
    return config


def config_dict(config: _core.SkipConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in FIELDS}


def stats_dict(stats: _core.SkipStats) -> dict[str, Any]:
    out = {
        "skip_steps": stats.n_steps,
        "skip_steps_after_warmup": stats.n_steps_after_warmup,
        "ffn_total": stats.ffn_total,
        "ffn_skipped": stats.ffn_skipped,
        "ffn_total_after_warmup": stats.ffn_total_after_warmup,
        "ffn_skipped_after_warmup": stats.ffn_skipped_after_warmup,
        "layers_skipped": stats.layers_skipped,
        "surrogates_run": stats.surrogates_run,
        "skip_ratio": stats.skip_ratio,
        "skip_ratio_after_warmup": stats.skip_ratio_after_warmup,
        "skipped_per_layer": list(stats.skipped_per_layer),
    }
    masks = stats.masks
    if masks.size:
        out["skip_masks"] = masks
    cosines = stats.cosines
    if cosines.size:
        out["cosines"] = cosines
    return out
