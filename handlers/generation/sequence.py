"""What the engine keeps per request and hands back per step, how it checks a prompt, and how it groups newcomers
for prefill."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handlers.errors import InvalidInput

if TYPE_CHECKING:  # hints only: the adapters and metrics that take an Event need no torch
    import torch

    from handlers.generation.detokenize import Detokenizer
    from handlers.generation.sampling import SamplingParams

PAD_BUDGET = 2.0  # a prefill batch computes at most this many padded tokens per real one


@dataclass
class Event:
    """What one request produced in one step: a text delta, its new token ids, and whether (and why) it ended."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    logprobs: list[dict] | None = None  # one per token of ``token_ids`` when the request asked for them


@dataclass
class SequenceState:
    """One request inside the engine: its prompt, sampling state, output so far and how it ended."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    detokenizer: Detokenizer
    generator: torch.Generator | None
    output_ids: list[int] = field(default_factory=list)
    cached: int = 0  # real tokens in the KV cache; the last sampled token is not in it yet
    cancelled: bool = False
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[dict] | None = None  # the last sampled token's, for its event
    # When it joined the batch: the admission's mean counts a request's time running, not its wait before, which
    # the estimate adds for itself (counting it twice over-refused: 32 of 64 requests at c=16 with one slot).
    joined_at: float | None = None

    def event(self, text: str, token_ids: list[int]) -> Event:
        """This step's news: ``text`` and ``token_ids`` with the request's state now."""
        return Event(self.request_id, text, token_ids, self.finish_reason is not None, self.finish_reason,
                     len(self.prompt_ids), len(self.output_ids), self.error,
                     self.logprobs if token_ids else None)  # fmt: skip


def prompt_ids(tokenizer: Any, prompt: str | list[int], params: SamplingParams, vocab_size: int,
               max_context: int) -> list[int]:  # fmt: skip
    """A prompt's token ids, checked against the model: a bad one raises ``InvalidInput`` naming what is wrong.

    A text is encoded with the tokenizer's defaults (``add_special_tokens=True``, as vLLM's completions do):
    GPT-2 adds nothing, Llama-style tokenizers prepend BOS. A list of token ids is taken as it is.
    """
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidInput("prompt is empty")
        ids = list(tokenizer(prompt)["input_ids"])
    elif isinstance(prompt, list):
        for i, t in enumerate(prompt):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
                raise InvalidInput(f"prompt token {i} is {t!r}; token ids are 0..{vocab_size - 1}")
        ids = list(prompt)
    else:
        raise InvalidInput(f"prompt must be a string or a list of token ids, not {type(prompt).__name__}")
    if not ids:
        raise InvalidInput("prompt is empty")
    n = len(ids)
    if n + 1 > max_context:
        raise InvalidInput(f"prompt is {n} tokens; this model's context is {max_context}")
    if n + params.max_tokens > max_context:
        raise InvalidInput(f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) is {n + params.max_tokens}; "
                           f"this model's context is {max_context}")  # fmt: skip
    return ids


def prefill_groups(seqs: list[SequenceState]) -> list[list[SequenceState]]:
    """Newcomers in prefill batches, shortest first, so that padding never makes a pass more than twice its real
    work: one left-padded pass is much faster than one pass per prompt, unless one long prompt pads many short ones
    (measured on CPU, GPT-2 6x512: 8 prompts of 16..128 tokens 1.1-1.6 s batched vs 1.5-4.8 s one by one; seven of
    8 tokens and one of 256: 1.8-2.0 s batched vs 0.9-1.7 s one by one)."""
    groups: list[list[SequenceState]] = []
    for seq in sorted(seqs, key=lambda s: len(s.prompt_ids)):
        group = groups[-1] if groups else []
        real = sum(len(s.prompt_ids) for s in group) + len(seq.prompt_ids)
        if group and len(seq.prompt_ids) * (len(group) + 1) <= PAD_BUDGET * real:
            group.append(seq)
        else:
            groups.append([seq])
    return groups


def eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    """The tokenizer's EOS and the generation config's (an id or a list of them: Llama 3 has several)."""
    config = getattr(model, "generation_config", None)
    found = [getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)]
    flat = [v for value in found for v in (value if isinstance(value, (list, tuple)) else [value])]
    return frozenset(v for v in flat if isinstance(v, int))
