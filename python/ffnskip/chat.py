"""Chat prompts from the model's own template (`tokenizer.chat_template`), rendered
with jinja2 in a sandbox, as Hugging Face transformers renders them."""
from __future__ import annotations

import datetime
from typing import Any, Mapping, Sequence

# A plain ChatML template for models that ship none.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


def render_chat(model: Any, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True,
                template: str | None = None) -> str:
    """Return the prompt text for ``messages`` ([{"role": ..., "content": ...}, ...])."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not messages:
        raise ValueError("chat: no messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"chat: message {i} must be a mapping with 'role' and 'content'")
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise ValueError(f"chat: message {i}: 'role' and 'content' must be strings")
    source = template or model.metadata_string("tokenizer.chat_template") or CHATML_TEMPLATE
    # as transformers renders: trimmed blocks, {% break %} / {% continue %} allowed
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    bos = model.token_to_piece(model.bos).decode("utf-8", "replace") if model.bos >= 0 else ""
    eos = model.token_to_piece(model.eos).decode("utf-8", "replace") if model.eos >= 0 else ""
    return env.from_string(source).render(
        messages=[dict(m) for m in messages],
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )
