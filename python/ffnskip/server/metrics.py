"""Counters for GET /metrics, written in Prometheus' text format by hand (no client
library needed)."""
from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Dict, Mapping, Tuple


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Dict[Tuple[str, int], int] = collections.Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.decode_seconds = 0.0
        self.ffn_total = 0
        self.ffn_skipped = 0
        self.cancelled = 0
        self.last_decode_tps = 0.0
        self.batch_steps = 0       # batched rounds that produced tokens
        self.batch_rows = 0        # tokens those rounds produced (requests served per round, summed)

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_generation(self, stats: Mapping[str, Any], cancelled: bool = False) -> None:
        with self._lock:
            self.prompt_tokens += int(stats.get("n_prompt_tokens", 0))
            self.generated_tokens += int(stats.get("n_generated", 0))
            self.decode_seconds += float(stats.get("decode_seconds", 0.0))
            self.ffn_total += int(stats.get("ffn_total", 0))
            self.ffn_skipped += int(stats.get("ffn_skipped", 0))
            if stats.get("n_generated", 0) > 1:
                self.last_decode_tps = float(stats.get("decode_tokens_per_second", 0.0))
            if cancelled:
                self.cancelled += 1

    def count_batch_step(self, rows: int) -> None:
        with self._lock:
            self.batch_steps += 1
            self.batch_rows += rows

    def render(self, gauges: Callable[[], Mapping[str, float]]) -> str:
        """Prometheus text exposition; `gauges()` gives the live slot/queue figures."""
        live = gauges()
        with self._lock:
            lines = [
                "# HELP ffnskip_requests_total HTTP requests by endpoint and status code.",
                "# TYPE ffnskip_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'ffnskip_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            tps = self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0
            ratio = self.ffn_skipped / self.ffn_total if self.ffn_total else 0.0
            rows = [
                ("ffnskip_prompt_tokens_total", "counter", "Prompt tokens evaluated (cached prefix excluded).", self.prompt_tokens),
                ("ffnskip_generated_tokens_total", "counter", "Tokens generated.", self.generated_tokens),
                ("ffnskip_decode_seconds_total", "counter", "Seconds spent in decode, summed over requests.", self.decode_seconds),
                ("ffnskip_cancelled_total", "counter", "Generations cancelled by a client disconnect.", self.cancelled),
                ("ffnskip_ffn_blocks_total", "counter", "FFN blocks due in decode steps.", self.ffn_total),
                ("ffnskip_ffn_blocks_skipped_total", "counter", "FFN blocks skipped in decode steps.", self.ffn_skipped),
                ("ffnskip_ffn_skip_ratio", "gauge", "Skipped share of FFN blocks over all decode steps so far.", ratio),
                ("ffnskip_decode_tokens_per_second", "gauge", "Decode speed per request stream, all requests so far.", tps),
                ("ffnskip_last_decode_tokens_per_second", "gauge", "Decode speed of the last finished request.", self.last_decode_tps),
                ("ffnskip_batch_steps_total", "counter", "Batched steps (one forward pass for the requests in flight).", self.batch_steps),
                ("ffnskip_batch_rows_total", "counter", "Tokens produced by batched steps (rows / steps = mean batch size).", self.batch_rows),
            ]
        for name, kind, help_, value in rows:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]
        for name, help_, value in (
            ("ffnskip_queue_length", "Requests waiting for a slot.", live["queue_length"]),
            ("ffnskip_slots_busy", "Slots generating now.", live["slots_busy"]),
            ("ffnskip_slots_total", "Slots: requests generating at once.", live["slots_total"]),
            ("ffnskip_queue_limit", "Most requests that may wait for a slot.", live["queue_limit"]),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {_num(value)}"]
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
