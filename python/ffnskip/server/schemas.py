"""Request bodies in OpenAI's shapes (pydantic), plus the `ffnskip` extension object.

Unknown top-level fields are ignored (clients send fields this server has no use
for); known fields with the wrong type or out of range are a 400. The `ffnskip`
object is strict: an unknown key there is a 400, since it is ours.
"""
from __future__ import annotations

from typing import List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class SkipOptions(BaseModel):
    """Per-request skip settings; fields left out keep the server's setting.
    Names and meanings as in SkipConfig (see `ffnskip.skip`)."""

    model_config = ConfigDict(extra="forbid")

    policy: Optional[Literal["full", "ffn_skip", "random", "static", "layers", "shortgpt", "skipdecode"]] = None
    threshold: Optional[float] = Field(None, ge=0.0, le=1.0)
    target_ratio: Optional[float] = Field(None, ge=0.0, le=1.0)
    warmup: Optional[StrictInt] = Field(None, ge=-1)
    cold_start: Optional[StrictInt] = Field(None, ge=0)
    cold_end: Optional[StrictInt] = Field(None, ge=0)
    refresh_every: Optional[StrictInt] = Field(None, ge=0)
    max_skip: Optional[StrictInt] = Field(None, ge=-1)
    skipdecode_span: Optional[StrictInt] = Field(None, ge=0)
    seed: Optional[StrictInt] = None
    layers: Optional[List[StrictInt]] = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[StrictStr] = None
    max_tokens: Optional[StrictInt] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    stop: Optional[Union[StrictStr, List[StrictStr]]] = None
    seed: Optional[StrictInt] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    n: StrictInt = Field(1, ge=1, le=1, description="only n = 1 is served")
    logprobs: Optional[Union[StrictBool, StrictInt]] = None
    user: Optional[str] = None
    # llama.cpp-style extensions
    top_k: Optional[StrictInt] = Field(None, ge=0)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repeat_penalty: Optional[float] = Field(None, gt=0.0)
    repeat_last_n: Optional[StrictInt] = Field(None, ge=-1)
    ignore_eos: StrictBool = False
    ffnskip: Optional[SkipOptions] = None


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, List[StrictInt], List[StrictStr]]
    echo: StrictBool = False
    suffix: Optional[str] = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[StrictStr, List[TextPart], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=0)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
