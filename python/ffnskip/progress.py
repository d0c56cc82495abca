"""A progress line for long runs (calibration, evaluation): tqdm when it is installed,
else one rewritten stderr line; nothing when disabled."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int | None = None, enabled: bool = True, desc: str = "ffnskip",
                 unit: str = "step") -> None:
        self.enabled, self.total, self.count, self.desc = enabled, total, 0, desc
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm  # type: ignore[import-not-found]

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def step(self, what: str, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(what, refresh=False)
            self._bar.update(n)
        else:
            total = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r\x1b[Kffnskip {self.desc}: [{self.count}{total}] {what}")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()
