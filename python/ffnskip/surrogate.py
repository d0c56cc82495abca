"""Low-rank FFN surrogates: a cheap stand-in that runs in place of a skipped FFN.

A skipped FFN normally contributes nothing (x' = h). A surrogate replaces its
output f = ffn(u), u = ffn_norm(h), with an affine estimate fitted in closed form
on calibration text:

    f ~= bias + down @ (up @ u)          up: (rank, n_embd), down: (n_embd, rank)

Fitting needs only sufficient statistics of the (u, f) pairs that the full model
produces (sums, u u^T, u f^T, |f|^2), so any amount of text streams through in
constant memory. The fit is a ridge regression with an unpenalised bias, reduced
to `rank` by projecting the fitted outputs onto their principal directions
(reduced-rank regression: the best rank-r map for the squared error). The ridge
is chosen by the error on held-out statistics, which the same sums give exactly.

Positions at the start of a sequence are left out of the statistics by default:
attention-sink tokens there have FFN outputs hundreds of times larger than
elsewhere and would dominate the fit.

Only numpy is imported here; writing the GGUF sidecar imports `gguf` lazily.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

SINK_POSITIONS = 4                       # first positions of a sequence left out of the fit
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)   # relative to the mean variance of u

SIDECAR_ARCH = "ffnskip-surrogate"
SIDECAR_VERSION = 1
KEY_PREFIX = "ffnskip.surrogate."


@dataclasses.dataclass
class FfnStats:
    """Sufficient statistics of one layer's (u, f) pairs, accumulated in float64."""

    n_embd: int
    n: int = 0
    sum_u: np.ndarray = None      # (n_embd)
    sum_f: np.ndarray = None      # (n_embd)
    uu: np.ndarray = None         # (n_embd, n_embd)  sum u u^T
    uf: np.ndarray = None         # (n_embd, n_embd)  sum u f^T
    ff: float = 0.0               # sum |f|^2

    def __post_init__(self) -> None:
        d = self.n_embd
        if self.sum_u is None:
            self.sum_u = np.zeros(d)
            self.sum_f = np.zeros(d)
            self.uu = np.zeros((d, d))
            self.uf = np.zeros((d, d))

    def add(self, u: np.ndarray, f: np.ndarray) -> None:
        """Add rows of (u, f) pairs, each (n_tokens, n_embd)."""
        u = np.asarray(u, dtype=np.float64)
        f = np.asarray(f, dtype=np.float64)
        if u.ndim != 2 or u.shape != f.shape or u.shape[1] != self.n_embd:
            raise ValueError(f"u and f must both be (n_tokens, {self.n_embd}), got {u.shape} and {f.shape}")
        if not (np.isfinite(u).all() and np.isfinite(f).all()):
            raise ValueError("u or f holds a NaN or an infinity")
        self.n += u.shape[0]
        self.sum_u += u.sum(axis=0)
        self.sum_f += f.sum(axis=0)
        self.uu += u.T @ u
        self.uf += u.T @ f
        self.ff += float(np.einsum("ij,ij->", f, f))

    def merge(self, other: "FfnStats") -> None:
        if other.n_embd != self.n_embd:
            raise ValueError(f"cannot merge statistics of width {other.n_embd} into width {self.n_embd}")
        self.n += other.n
        self.sum_u += other.sum_u
        self.sum_f += other.sum_f
        self.uu += other.uu
        self.uf += other.uf
        self.ff += other.ff


@dataclasses.dataclass
class Surrogate:
    """f ~= bias + down @ (up @ u) for one layer; rank 0 is the mean output alone."""

    bias: np.ndarray              # (n_embd)
    up: np.ndarray                # (rank, n_embd)
    down: np.ndarray              # (n_embd, rank)
    ridge: float = 0.0            # relative ridge the fit used
    held_out_error: float = math.nan   # squared error / squared norm of f, on held-out pairs

    @property
    def rank(self) -> int:
        return int(self.up.shape[0])

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """Apply to rows of u: (n_tokens, n_embd) -> (n_tokens, n_embd)."""
        u = np.asarray(u, dtype=np.float64)
        return self.bias + (u @ self.up.T) @ self.down.T

    def linear(self) -> np.ndarray:
        """The (n_embd, n_embd) matrix W with f ~= bias + W @ u."""
        return self.down @ self.up


def fit(stats: FfnStats, rank: int | None, ridge: float = 1e-3) -> Surrogate:
    """Ridge fit of f on u with an unpenalised bias, reduced to ``rank``
    (None = the full linear map; 0 = the mean output only). ``ridge`` is relative
    to the mean variance of u, so one grid suits every layer."""
    d = stats.n_embd
    if stats.n < 2:
        raise ValueError(f"need at least 2 (u, f) pairs to fit a surrogate, have {stats.n}")
    if rank is not None and not 0 <= rank <= d:
        raise ValueError(f"rank must be in [0, {d}], got {rank}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    n = stats.n
    mu_u = stats.sum_u / n
    mu_f = stats.sum_f / n
    if rank == 0:
        return Surrogate(bias=mu_f.copy(), up=np.zeros((0, d)), down=np.zeros((d, 0)), ridge=ridge)
    c_uu = stats.uu / n - np.outer(mu_u, mu_u)
    c_uf = stats.uf / n - np.outer(mu_u, mu_f)
    scale = max(float(np.trace(c_uu)) / d, np.finfo(np.float64).tiny)
    a = c_uu + (ridge * scale) * np.eye(d)
    # lstsq, not solve: with ridge 0 and rank-deficient u the minimum-norm solution is wanted.
    w = np.linalg.lstsq(a, c_uf, rcond=None)[0]              # (d_in, d_out): f - mu_f ~= w^T (u - mu_u)
    # Reduced-rank regression: keep the principal directions of the fitted outputs
    # (all of them for the full linear map, which is then stored as two factors too).
    keep = d if rank is None else rank
    fitted_cov = w.T @ c_uu @ w                              # (d_out, d_out)
    _, vecs = np.linalg.eigh((fitted_cov + fitted_cov.T) / 2)
    q = vecs[:, ::-1][:, :keep]                              # (d_out, keep), largest first
    up, down = q.T @ w.T, q                                  # (keep, d_in), (d_out, keep)
    bias = mu_f - down @ (up @ mu_u)
    return Surrogate(bias=bias, up=up, down=down, ridge=ridge)


def squared_error(s: Surrogate, stats: FfnStats) -> float:
    """Sum over the pairs behind ``stats`` of |f - s(u)|^2, from the statistics alone."""
    w = s.linear()                                           # f ~= b + w u
    b = s.bias
    cross = float(b @ stats.sum_f) + float(np.einsum("ij,ji->", w, stats.uf))   # sum f.(b + w u)
    pred = (stats.n * float(b @ b) + 2.0 * float(b @ (w @ stats.sum_u))
            + float(np.sum((w @ stats.uu) * w)))                               # sum |b + w u|^2
    return max(stats.ff - 2.0 * cross + pred, 0.0)


def relative_error(s: Surrogate, stats: FfnStats) -> float:
    """Squared error over squared norm of f (0 = exact, 1 = no better than nothing)."""
    if stats.ff <= 0:
        return 0.0 if squared_error(s, stats) == 0 else math.inf
    return squared_error(s, stats) / stats.ff


def fit_best(train: FfnStats, held_out: FfnStats, rank: int | None,
             ridges: Sequence[float] = RIDGE_GRID) -> Surrogate:
    """Fit with each ridge of the grid; keep the one with the least held-out error."""
    if not ridges:
        raise ValueError("the ridge grid is empty")
    best: Surrogate | None = None
    for ridge in ridges:
        s = fit(train, rank, ridge)
        s.held_out_error = relative_error(s, held_out)
        if best is None or s.held_out_error < best.held_out_error:
            best = s
    assert best is not None
    return best


def accumulate(stats: FfnStats, u: np.ndarray, f: np.ndarray, positions: Iterable[int],
               sink_positions: int = SINK_POSITIONS) -> int:
    """Add the pairs whose sequence position is >= ``sink_positions``; returns how many."""
    keep = np.asarray(list(positions)) >= sink_positions
    if keep.shape[0] != np.shape(u)[0]:
        raise ValueError(f"{keep.shape[0]} positions for {np.shape(u)[0]} (u, f) pairs")
    if keep.any():
        stats.add(np.asarray(u)[keep], np.asarray(f)[keep])
    return int(keep.sum())


# ---- fitting on a model: the engine records (u, f) on calibration text ----------------

def text_windows(ids: Sequence[int], window: int, n_tokens: int) -> list[list[int]]:
    """Consecutive windows of ``window`` tokens (the last may be shorter, at least 16)
    covering up to ``n_tokens`` tokens of ``ids``; each is traced from an empty cache."""
    out: list[list[int]] = []
    for start in range(0, min(len(ids), n_tokens), window):
        w = list(ids[start:min(start + window, n_tokens)])
        if len(w) >= 16:
            out.append(w)
    return out


def calibrate_surrogates(session: Any, ids: Sequence[int], *, rank: int | None,
                         layers: Sequence[int] | None = None, tokens: int = 16384, window: int = 512,
                         held_out_share: float = 0.125, sequential: bool = False,
                         ridges: Sequence[float] = RIDGE_GRID, sink_positions: int = SINK_POSITIONS,
                         progress: bool = False) -> tuple[dict[int, Surrogate], dict[str, Any]]:
    """Fit surrogates for ``layers`` (default: every layer) of the session's model on
    token ids; the last ``held_out_share`` of the windows chooses the ridge.

    ``sequential``: fit the layers in order, each on the inputs of the model whose
    earlier listed layers already run their surrogates, aimed at the full model's
    residual after that layer (f = x'_full - h). Meant for a fixed set of replaced FFNs
    (the ``layers`` policy); it traces the text once per layer.
    Returns (surrogates by layer, facts about the fit)."""
    import tempfile

    from .progress import Progress
    from .skip import skip_config

    n_layer = int(session.model.hparams.n_layer)
    n_embd = int(session.model.hparams.n_embd)
    layers = list(range(n_layer)) if layers is None else sorted({int(l) for l in layers})
    for l in layers:
        if not 0 <= l < n_layer:
            raise ValueError(f"layer {l} is out of range (the model has {n_layer})")
    window = min(window, session.n_ctx)
    wins = text_windows(ids, window, tokens)
    n_held = max(1, int(round(len(wins) * held_out_share))) if len(wins) > 1 else 0
    if len(wins) - n_held < 1:
        raise ValueError(f"the calibration text is too short: {len(ids)} tokens")
    held_from = len(wins) - n_held

    def fit_layers(todo: Sequence[int], spec: Any, target: Any) -> dict[int, Surrogate]:
        train = {l: FfnStats(n_embd) for l in todo}
        held = {l: FfnStats(n_embd) for l in todo}
        for wi, w in enumerate(wins):
            t = session.trace_ffn(w, spec)
            for l in todo:
                f = t["f"][l] if target is None else target(wi, l) - t["h"][l]
                accumulate(train[l] if wi < held_from else held[l], t["u"][l], f, range(len(w)), sink_positions)
            bar.step(f"traced window {wi + 1}/{len(wins)}")
        out = {}
        for l in todo:
            out[l] = fit_best(train[l], held[l] if n_held else train[l], rank, ridges)
        return out

    bar = Progress(enabled=progress, desc="surrogates", unit="window")
    try:
        if not sequential:
            fitted = fit_layers(layers, skip_config("full"), None)
        else:
            # The full model's residual after each listed layer, per window.
            full_after: list[dict[int, np.ndarray]] = []
            for w in wins:
                t = session.trace_ffn(w, skip_config("full"))
                full_after.append({l: t["h"][l] + t["f"][l] for l in layers})
            fitted = {}
            with tempfile.TemporaryDirectory(prefix="ffnskip-sur-") as tmp:
                for l in layers:
                    spec: Any = skip_config("full")
                    if fitted:
                        path = os.path.join(tmp, f"upto{l}.gguf")
                        save(path, fitted, n_embd=n_embd, n_layer=n_layer, dtype="f32")
                        spec = skip_config({"policy": "layers", "layers": sorted(fitted), "surrogates": path})
                    fitted.update(fit_layers([l], spec, lambda wi, layer: full_after[wi][layer]))
    finally:
        bar.close()
    n_fit = sum(len(w) - min(sink_positions, len(w)) for w in wins[:held_from])
    facts = {"rank": -1 if rank is None else rank, "windows": len(wins), "held_out_windows": n_held,
             "tokens": n_fit, "window": window, "sequential": sequential, "sink_positions": sink_positions,
             "held_out_error": {str(l): s.held_out_error for l, s in fitted.items()},
             "ridge": {str(l): s.ridge for l, s in fitted.items()}}
    return fitted, facts


def surrogates_beside(profile_path: str | os.PathLike[str]) -> str:
    """The sidecar's path for a profile: PROFILE.surrogates.gguf (".json" dropped)."""
    path = os.fspath(profile_path)
    return (path[:-5] if path.endswith(".json") else path) + ".surrogates.gguf"


def sequential_beside(profile_path: str | os.PathLike[str]) -> str:
    """The sequentially fitted sidecar's path: PROFILE.sequential.surrogates.gguf."""
    path = os.fspath(profile_path)
    return (path[:-5] if path.endswith(".json") else path) + ".sequential.surrogates.gguf"


def fit_and_save(session: Any, text: str, text_name: str, path: str | os.PathLike[str], *, rank: int | None,
                 tokens: int = 16384, layers: Sequence[int] | None = None, sequential: bool = False,
                 progress: bool = False) -> dict[str, Any]:
    """Fit surrogates on ``text`` and write them to ``path``; the sidecar records the
    model, the text (name and sha256) and the fit's facts. Returns the facts."""
    import hashlib

    ids = session.tokenize(text, add_special=False)
    fitted, facts = calibrate_surrogates(session, ids, rank=rank, layers=layers, tokens=tokens,
                                         sequential=sequential, progress=progress)
    hp = session.model.hparams
    meta = {"model": os.path.basename(session.model.path), "model_size": int(session.model.file_size),
            "text": os.path.basename(text_name), "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "rank": facts["rank"], "tokens": facts["tokens"], "sequential": bool(sequential)}
    save(path, fitted, n_embd=int(hp.n_embd), n_layer=int(hp.n_layer), meta=meta)
    return facts


# ---- sidecar file: a small GGUF beside the calibration profile --------------------

def tensor_names(layer: int) -> tuple[str, str, str]:
    """GGUF tensor names of one layer's surrogate: bias, up (rank x n_embd), down (n_embd x rank)."""
    return f"blk.{layer}.ffn_sur_bias", f"blk.{layer}.ffn_sur_up", f"blk.{layer}.ffn_sur_down"


def save(path: str | os.PathLike[str], surrogates: Mapping[int, Surrogate], *, n_embd: int,
         n_layer: int, meta: Mapping[str, Any] | None = None, dtype: str = "f16") -> None:
    """Write the surrogates of some layers to a GGUF sidecar (atomically).

    ``meta`` carries where they came from (model name and size, calibration text and
    its sha256, rank, ...): string, int and float values are stored under
    ``ffnskip.surrogate.<key>``."""
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - gguf is in the calibrate/test extras
        raise ImportError("writing surrogates needs the `gguf` package: pip install gguf") from e
    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}")
    np_type = np.float16 if dtype == "f16" else np.float32
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, SIDECAR_ARCH)
    writer.add_uint32(KEY_PREFIX + "version", SIDECAR_VERSION)
    writer.add_uint32(KEY_PREFIX + "n_embd", int(n_embd))
    writer.add_uint32(KEY_PREFIX + "n_layer", int(n_layer))
    writer.add_array(KEY_PREFIX + "layers", [int(i) for i in sorted(surrogates)])
    for key, value in (meta or {}).items():
        name = KEY_PREFIX + key
        if isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, int):
            writer.add_int64(name, value)
        elif isinstance(value, float):
            writer.add_float64(name, value)
        else:
            writer.add_string(name, str(value))
    for layer in sorted(surrogates):
        s = surrogates[layer]
        if not 0 <= layer < n_layer:
            raise ValueError(f"surrogate for layer {layer}, but the model has {n_layer} layers")
        if s.bias.shape != (n_embd,) or s.up.shape[1:] != (n_embd,) or s.down.shape != (n_embd, s.rank):
            raise ValueError(f"layer {layer}: surrogate shapes {s.bias.shape}, {s.up.shape}, "
                             f"{s.down.shape} do not fit n_embd {n_embd}")
        bias_name, up_name, down_name = tensor_names(layer)
        writer.add_tensor(bias_name, s.bias.astype(np.float32))
        if s.rank:
            writer.add_tensor(up_name, np.ascontiguousarray(s.up, dtype=np_type))
            writer.add_tensor(down_name, np.ascontiguousarray(s.down, dtype=np_type))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str | os.PathLike[str], *, n_embd: int | None = None,
         n_layer: int | None = None) -> tuple[dict[int, Surrogate], dict[str, Any]]:
    """Read a sidecar written by ``save``; checks it against the model's width and
    depth when given. Returns (surrogates by layer, metadata)."""
    try:
        import gguf
    except ImportError as e:  # pragma: no cover
        raise ImportError("reading surrogates needs the `gguf` package: pip install gguf") from e
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"surrogate file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable GGUF surrogate file ({e})") from e
    meta: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith(KEY_PREFIX):
            meta[name[len(KEY_PREFIX):]] = field.contents()
    if meta.get("version") != SIDECAR_VERSION:
        raise ValueError(f"{path}: not an ffnskip surrogate file of version {SIDECAR_VERSION} "
                         f"(found {meta.get('version')!r})")
    for key, want in (("n_embd", n_embd), ("n_layer", n_layer)):
        if want is not None and meta.get(key) != want:
            raise ValueError(f"{path}: surrogates were fitted for {key} {meta.get(key)}, the model has {want}")
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    out: dict[int, Surrogate] = {}
    d = int(meta["n_embd"])
    for layer in meta.get("layers", []):
        bias_name, up_name, down_name = tensor_names(int(layer))
        if bias_name not in tensors:
            raise ValueError(f"{path}: layer {layer} is listed but {bias_name} is missing")
        bias = tensors[bias_name].astype(np.float64).reshape(d)
        if up_name in tensors:
            up = tensors[up_name].astype(np.float64).reshape(-1, d)
            down = tensors[down_name].astype(np.float64).reshape(d, up.shape[0])
        else:
            up, down = np.zeros((0, d)), np.zeros((d, 0))
        out[int(layer)] = Surrogate(bias=bias, up=up, down=down)
    return out, meta
