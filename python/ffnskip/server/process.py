"""`ffnskip serve` in a subprocess on a free loopback port (for tests and benchmarks)."""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Callable, Mapping, Optional, Sequence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m ffnskip serve MODEL ...` on 127.0.0.1; use as a context manager."""

    def __init__(self, model: str | os.PathLike[str], args: Sequence[str] = (), timeout: float = 60.0,
                 env: Optional[Mapping[str, str]] = None, preexec_fn: Optional[Callable[[], None]] = None) -> None:
        import ffnskip

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        package_root = str(pathlib.Path(ffnskip.__file__).resolve().parent.parent)
        base_env = dict(os.environ)
        base_env.update(env or {})
        env = base_env
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "ffnskip", "serve", os.fspath(model), "--port", str(self.port),
               "--log-level", "warning", *args]
        self._final_output = ""
        self.log = tempfile.TemporaryFile(mode="w+")   # a pipe nobody reads could fill and stall the server
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=preexec_fn)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                out = self.output()
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer /health within {timeout} s")
            time.sleep(0.1)

    def output(self) -> str:
        if self.log.closed:
            return self._final_output
        self.log.seek(0)
        return self.log.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self._final_output = self.output()
            self.log.close()
        return self._final_output

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
