"""The OpenAI-compatible API over a served language model, the same for both servers.

``parse`` turns a ``/v1/completions`` or ``/v1/chat/completions`` body into an ``OpenAIRequest``: its choices, each
one engine request (prompt + ``SamplingParams``). Each choice's answers in the LLM-backend contract of
``service.py`` (streamed: text deltas, then the last one with ``finish_reason`` and ``usage``) go to
``Reply.add``, which returns the chunks to stream; ``Reply.whole`` is the non-streamed answer. TorchServe's handler
feeds it from the engine's events, the Triton frontend (``scripts/serving/openai_frontend.py``) from Triton's gRPC
responses: the two servers cannot answer differently.

What is not supported is refused by name, with OpenAI's error body and a 400 (``OpenAIError``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from handlers.errors import InvalidInput, ServingError
from handlers.generation.sampling import SamplingParams

MAX_CHOICES = 16  # prompts x n of one request: each is a sequence in the running batch
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's limit
# top_k and ignore_eos: vLLM's extensions, which its users' code sends
COMMON = {"model", "stream", "stream_options", "n", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed",
          "ignore_eos", "user", "presence_penalty", "frequency_penalty", "logit_bias"}  # fmt: skip
ROUTES = {
    "completions": COMMON | {"prompt", "echo", "logprobs", "best_of", "suffix"},
    "chat/completions": COMMON
    | {
        "messages",
        "max_completion_tokens",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
    },  # fmt: skip
}
ROLES = {"system", "developer", "user", "assistant"}
SSE_DONE = "data: [DONE]\n\n"


class OpenAIError(InvalidInput):
    """A refused request, as OpenAI's API words it: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.http_status = param, code, status


def error_body(error: ServingError) -> dict:
    # a 429 is the server's load, not the request's fault: retry it (after its Retry-After)
    kind = "invalid_request_error" if error.http_status < 500 and error.http_status != 429 else "server_error"
    return {"error": {"message": error.message, "type": kind, "param": getattr(error, "param", None),
                      "code": getattr(error, "code", None)}}  # fmt: skip


def model_not_found(name: Any, served: list[str]) -> OpenAIError:
    return OpenAIError(f"the model {name!r} does not exist; served here: {', '.join(served) or 'none'}",
                       param="model", code="model_not_found", status=404)  # fmt: skip


def sse(chunk: dict) -> str:
    return f"data: {json.dumps(chunk)}\n\n"


def models_list(names: list[str]) -> dict:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "maas"} for n in names]}


@dataclass(frozen=True)
class ModelCard:
    """What parsing needs of a served model: its name, its tokenizer (chat template, prompt length) and limits."""

    name: str
    tokenizer: Any
    max_context: int
    max_tokens_limit: int


@dataclass(frozen=True)
class Choice:
    prompt: str
    params: SamplingParams


@dataclass(frozen=True)
class OpenAIRequest:
    chat: bool
    model: str
    choices: list[Choice]
    stream: bool
    include_usage: bool
    n: int = 1  # choices per prompt: choice i of prompt p is choices[p * n + i]
    echo: bool = False
    logprobs: bool = False


def parse(route: str, body: Any, model: ModelCard) -> OpenAIRequest:
    if route not in ROUTES:
        raise OpenAIError(f"no such endpoint /v1/{route} (there are /v1/completions, /v1/chat/completions and "
                          "/v1/models)", code="unknown_url", status=404)  # fmt: skip
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(bytes(body).decode("utf-8") or "null")
        except ValueError as exc:
            raise OpenAIError(f"the request body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object")
    unknown = sorted(set(body) - ROUTES[route])
    if unknown:
        raise OpenAIError(f"unrecognized request argument {unknown[0]}", param=unknown[0])
    if body.get("model") != model.name:
        raise model_not_found(body.get("model"), [model.name])
    _refuse_unsupported(body)
    chat = route == "chat/completions"
    prompts = [_render_chat(body.get("messages"), model.tokenizer)] if chat else _prompts(body.get("prompt"))
    n = body.get("n") or 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES // len(prompts):
        raise OpenAIError(f"n must be an integer from 1 to {MAX_CHOICES // len(prompts)}, not {n!r}", param="n")
    if body.get("best_of") not in (None, n):
        raise OpenAIError("best_of is not supported (other than equal to n)", param="best_of")
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise OpenAIError("stream_options supports include_usage only", param="stream_options")
    if options and not stream:
        raise OpenAIError("stream_options is only allowed with stream: true", param="stream_options")
    logprobs = _logprobs(body, chat)
    echo = _flag(body, "echo")
    if echo and logprobs is not None:
        raise OpenAIError("echo with logprobs is not supported (no log-probabilities of the prompt)", param="echo")
    seed = body.get("seed")
    choices = []
    for prompt in prompts:
        used = _prompt_tokens(prompt, model, "messages" if chat else "prompt")
        sampling = {k: body.get(k) for k in ("temperature", "top_p", "top_k", "stop", "ignore_eos")}
        sampling["max_tokens"] = _max_tokens(body, chat, used, model)
        for i in range(n):  # choice i of a seeded request is seeded seed+i: different, and reproducible
            seeded = {"seed": seed + i if isinstance(seed, int) and not isinstance(seed, bool) else seed}
            params = _sampling(sampling | seeded | {"logprobs": logprobs}, model.max_tokens_limit)
            choices.append(Choice(prompt, params))
        if used + choices[-1].params.max_tokens > model.max_context:
            raise OpenAIError(f"the prompt ({used} tokens) + max_tokens ({choices[-1].params.max_tokens}) is more "
                              f"than this model's context of {model.max_context} tokens", param="max_tokens",
                              code="context_length_exceeded")  # fmt: skip
    include_usage = _flag(options, "include_usage")
    return OpenAIRequest(chat, model.name, choices, stream, include_usage, n, echo, logprobs is not None)


def _sampling(values: dict, max_tokens_limit: int) -> SamplingParams:
    try:
        return SamplingParams.from_dict(values, max_tokens_limit)
    except InvalidInput as exc:  # its message starts with the name of the field it refuses
        name = exc.message.split(" ", 1)[0]
        raise OpenAIError(exc.message, param=name if name in values else None) from None


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise OpenAIError(f"{name} must be true or false, not {value!r}", param=name)


def _refuse_unsupported(body: dict) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise OpenAIError(f"{name} is not supported (only 0)", param=name)
    for name in ("logit_bias", "tools", "functions", "suffix"):
        if body.get(name):
            raise OpenAIError(f"{name} is not supported by this server", param=name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise OpenAIError(f"{name} is not supported by this server (no tools)", param=name)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise OpenAIError('response_format supports {"type": "text"} only', param="response_format")


def _prompts(prompt: Any) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise OpenAIError("prompt must be a string or a non-empty list of strings (token ids are not supported)",
                          param="prompt")  # fmt: skip
    if len(prompts) > MAX_CHOICES:
        raise OpenAIError(f"prompt holds {len(prompts)} prompts; at most {MAX_CHOICES}", param="prompt")
    return prompts


def _render_chat(messages: Any, tokenizer: Any) -> str:
    """The messages through the tokenizer's chat template, ready for the assistant's turn."""
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("messages must be a non-empty list", param="messages")
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise OpenAIError(f"messages[{i}] must be an object with a role of {', '.join(sorted(ROLES))}",
                              param=f"messages[{i}]")  # fmt: skip
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only, this is a text model
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):  # fmt: skip
                raise OpenAIError(f"messages[{i}].content: only text parts are supported",
                                  param=f"messages[{i}].content")  # fmt: skip
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise OpenAIError(f"messages[{i}].content must be a string or text parts", param=f"messages[{i}].content")
        plain.append({"role": message["role"], "content": content})
    if not getattr(tokenizer, "chat_template", None):
        raise OpenAIError("this model's tokenizer has no chat template; use /v1/completions", param="messages")
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos) :]  # the engine's tokenization adds it again: keep one
    return text


def _logprobs(body: dict, chat: bool) -> int | None:
    """How many alternatives per token to report (None: no log-probabilities)."""
    if not chat:
        value = body.get("logprobs")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= MAX_COMPLETION_LOGPROBS):  # fmt: skip
            raise OpenAIError(f"logprobs must be an integer from 0 to {MAX_COMPLETION_LOGPROBS}", param="logprobs")
        return value
    top = body.get("top_logprobs")
    if not _flag(body, "logprobs"):
        if top is not None:
            raise OpenAIError("top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return 0 if top is None else top  # SamplingParams checks its range


def _prompt_tokens(prompt: str, model: ModelCard, param: str) -> int:
    """The prompt's length in tokens, as the engine will count it; an empty prompt or one that fills the context is
    refused here, before anything is queued."""
    used = len(model.tokenizer(prompt)["input_ids"])
    if not used:
        raise OpenAIError("the prompt is empty", param=param)
    if used >= model.max_context:
        raise OpenAIError(f"the prompt is {used} tokens; this model's context is {model.max_context}",
                          param=param, code="context_length_exceeded")  # fmt: skip
    return used


def _max_tokens(body: dict, chat: bool, used: int, model: ModelCard) -> int:
    """The client's limit, else 16 for completions (OpenAI's default) or, for chat, the room left in the context."""
    value = body.get("max_completion_tokens") if chat else None
    value = body.get("max_tokens") if value is None else value
    if value is not None:
        return value
    return min(model.max_tokens_limit, model.max_context - used) if chat else 16
