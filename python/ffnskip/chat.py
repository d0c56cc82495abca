"""Chat prompts from the model's own template (`tokenizer.chat_template`), rendered
with jinja2 in a sandbox, as Hugging Face transformers renders them.

The template comes from the model file, so it is treated as untrusted code: the
sandbox, a time limit, a limit on the rendered size and on `*` / `**` results keep a
hostile template from hanging or exhausting the process. Message contents are text:
`chat_tokens` parses special tokens ("<|im_start|>") only in the template's own
markup, so a user cannot forge turns by writing them.
"""
from __future__ import annotations

import datetime
import re
import sys
import time
import uuid
from typing import Any, Mapping, Sequence

from . import checks

# A plain ChatML template for models that ship none.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

RENDER_SECONDS = 2.0         # a chat template renders in milliseconds; past this it is looping
MAX_REPEAT = 1_000_000       # largest str/list a template may build with `*`
MAX_POWER_EXPONENT = 256


class ChatTemplateError(ValueError):
    """The chat template failed, took too long or grew too large."""


def _raise(message: str) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _environment() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class Limited(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                        raise SecurityError(f"'*' would build {len(seq) * n:,} items (at most {MAX_REPEAT:,})")
            elif isinstance(right, int) and abs(right) > MAX_POWER_EXPONENT and left not in (0, 1, -1):
                raise SecurityError(f"'**' exponent {right} is too large (at most {MAX_POWER_EXPONENT})")
            return super().call_binop(context, operator, left, right)

    # as transformers renders: trimmed blocks, {% break %} / {% continue %} allowed
    env = Limited(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("chat: messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"chat: message {i} must be a mapping with 'role' and 'content'")
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise ValueError(f"chat: message {i}: 'role' and 'content' must be strings")
        checks.text(message["role"], f"messages[{i}].role")
        checks.text(message["content"], f"messages[{i}].content")


def _render(model: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, source: str,
            max_chars: int, seconds: float) -> str:
    """Render in this thread under a deadline: a trace function checks the clock at each
    call and at each line of the template's own code (jinja compiles it to Python, so a
    loop with an empty body still runs lines)."""
    env = _environment()
    bos = model.token_to_piece(model.bos).decode("utf-8", "replace") if model.bos >= 0 else ""
    eos = model.token_to_piece(model.eos).decode("utf-8", "replace") if model.eos >= 0 else ""
    deadline = time.monotonic() + seconds

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise ChatTemplateError(f"chat template: rendering took longer than {seconds:g} s")
        return tracer if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    try:
        template = env.from_string(source)
        out: list[str] = []
        size = 0
        sys.settrace(tracer)
        try:
            for chunk in template.generate(messages=[dict(m) for m in messages],
                                           add_generation_prompt=add_generation_prompt,
                                           bos_token=bos, eos_token=eos):
                size += len(chunk)
                if size > max_chars:
                    raise ChatTemplateError(f"chat template: the prompt grew beyond {max_chars:,} characters")
                out.append(chunk)
        finally:
            sys.settrace(previous)
        return "".join(out)
    except ChatTemplateError:
        raise
    except RecursionError:
        raise ChatTemplateError("chat template: recursion too deep") from None
    except Exception as e:   # jinja2 syntax/undefined/security errors and whatever the template raises
        raise ChatTemplateError(f"chat template: {type(e).__name__}: {e}") from None


def _max_chars(messages: Sequence[Mapping[str, Any]], source: str) -> int:
    return 4 * sum(len(m["content"]) + len(m["role"]) for m in messages) + 16 * len(source) + (1 << 20)


def render_chat(model: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True,
                template: str | None = None, seconds: float = RENDER_SECONDS) -> str:
    """Return the prompt text for ``messages`` ([{"role": ..., "content": ...}, ...]).
    Raises ValueError (ChatTemplateError) when the template fails or runs too long."""
    _check_messages(messages)
    source = template or model.metadata_string("tokenizer.chat_template") or CHATML_TEMPLATE
    return _render(model, messages, add_generation_prompt, source, _max_chars(messages, source), seconds)


def _special_texts(model: Any, text: str) -> list[str]:
    """The texts of the control tokens that special-token parsing finds in `text`."""
    parsed = model.tokenize(text, False, True)
    if not parsed:
        return []
    plain = set(model.tokenize(text, False, False))
    ids = {t for t in parsed if t not in plain}
    return sorted({model.token_to_piece(t, True).decode("utf-8", "replace") for t in ids}, key=len, reverse=True)


def chat_tokens(model: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True,
                template: str | None = None, add_special: bool = False,
                seconds: float = RENDER_SECONDS) -> list[int]:
    """The prompt token ids for ``messages``: the template's markup with special tokens
    parsed, message contents as plain text. A content that spells a special token
    ("<|im_end|>") keeps it as text: it is swapped for a marker before rendering and
    tokenized without special parsing afterwards."""
    _check_messages(messages)
    source = template or model.metadata_string("tokenizer.chat_template") or CHATML_TEMPLATE
    literals: list[str] = []
    tag = uuid.uuid4().hex
    marker = re.compile("\U000F0000" + tag + r"(\d+)\U000F0001")
    safe = []
    for m in messages:
        content = m["content"]
        for special in _special_texts(model, content):
            parts = content.split(special)
            pieces = [parts[0]]
            for part in parts[1:]:
                pieces.append(f"\U000F0000{tag}{len(literals)}\U000F0001")
                literals.append(special)
                pieces.append(part)
            content = "".join(pieces)
        safe.append({**m, "content": content})
    text = _render(model, safe, add_generation_prompt, source, _max_chars(messages, source) + 64 * len(literals),
                   seconds)
    out: list[int] = []
    pieces = marker.split(text)
    for i, piece in enumerate(pieces):
        if i % 2:   # a marker: the literal it stands for, as text
            index = int(piece)
            if index >= len(literals):
                raise ChatTemplateError("chat template: a content marker was altered")
            out += model.tokenize(literals[index], False, False)
        elif piece:
            out += model.tokenize(piece, add_special and not out, True)
    if add_special and not out:
        out = model.tokenize("", True, False)
    return out
