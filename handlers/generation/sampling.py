"""Sampling parameters (checked once, at the door) and the per-row sampler.

The parameters follow vLLM's and OpenAI's names and defaults, so a client of either API gets what it expects. Every
bad value is refused with an ``InvalidInput`` naming the field and the value, before the request is queued.

Each request samples with its own ``torch.Generator``: seeded with ``seed`` when given, so the same seed gives the
same tokens whatever else shares the batch; the softmax is computed in float32 from that request's row only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from handlers.errors import InvalidInput

MAX_STOP_STRINGS = 16  # each one is searched after every token: keep the per-token cost bounded
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's top_logprobs limit); each is decoded after every token
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it ends. ``temperature == 0`` means greedy; ``top_k == 0`` is off."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the sampled token's log-probability and the k most likely ones

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        _check_int("max_tokens", self.max_tokens, least=1)
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise InvalidInput(f"temperature must be at least 0 (0 is greedy), not {self.temperature!r}")
        _check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], not {self.top_p!r}")
        _check_int("top_k", self.top_k, least=0)
        if self.seed is not None:
            _check_int("seed", self.seed, least=0)
            if self.seed > MAX_SEED:
                raise InvalidInput(f"seed must be at most {MAX_SEED}, not {self.seed!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise InvalidInput(f"stop must be a string or a list of strings, not {self.stop!r}")
        if any(s == "" for s in self.stop):
            raise InvalidInput("stop must not hold an empty string")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidInput(f"stop holds {len(self.stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidInput(f"ignore_eos must be true or false, not {self.ignore_eos!r}")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, least=0)
            if self.logprobs > MAX_LOGPROBS:
                raise InvalidInput(f"logprobs must be at most {MAX_LOGPROBS}, not {self.logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, max_tokens_limit: int) -> SamplingParams:
        """Parse a client's parameters (JSON), refusing unknown keys and values out of range with their names.

        ``null`` values mean "the default", as in OpenAI's API.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidInput(f"sampling parameters must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - _NAMES)
        if unknown:
            raise InvalidInput(
                f"unknown sampling parameter {', '.join(map(str, unknown))} (known: {', '.join(sorted(_NAMES))})"
            )
        values = {k: v for k, v in data.items() if v is not None}
        stop = values.get("stop", ())
        if isinstance(stop, list):
            values["stop"] = tuple(stop)
        elif not isinstance(stop, (str, tuple)):
            raise InvalidInput(f"stop must be a string or a list of strings, not {stop!r}")
        params = cls(**values)
        if params.max_tokens > max_tokens_limit:
            raise InvalidInput(f"max_tokens must be at most {max_tokens_limit}, not {params.max_tokens}")
        return params

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """This request's own random source (None when greedy: nothing is drawn)."""
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()  # from a nondeterministic source
        else:
            generator.manual_seed(self.seed)
        return generator


_NAMES = {f.name for f in fields(SamplingParams)}


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, not {value!r}")
    if value < least:
        raise InvalidInput(f"{name} must be at least {least}, not {value!r}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, not {value!r}")


def token_logprobs(logits: torch.Tensor, token: int, top: int, decode) -> dict:
    """The sampled token's log-probability under the model's distribution (before temperature, top-k and top-p, as
    vLLM reports it) and the ``top`` most likely tokens', in OpenAI's chat format; ``decode`` maps an id to text."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)

    def entry(token_id: int, value: float) -> dict:
        text = decode(token_id)
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    best = torch.topk(logprobs, top) if top else None
    alternatives = [] if best is None else zip(best.indices.tolist(), best.values.tolist(), strict=True)
    return entry(token, float(logprobs[token])) | {"top_logprobs": [entry(i, v) for i, v in alternatives]}


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from one row of logits ``[vocab]``: temperature, then top-k, then top-p, then a draw."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if params.top_p < 1:
        # Nucleus: keep the smallest set of top tokens whose probability reaches top_p; a token is kept when the
        # probability before it is still short of top_p, so the top token always stays.
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        sorted_scores = sorted_scores.masked_fill(before >= params.top_p, -math.inf)
        scores = torch.full_like(scores, -math.inf).scatter(0, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
