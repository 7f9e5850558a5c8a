"""A language-model artifact made ready to serve: the engine, the request contract both servers share, the answers.

The contract is the one of Triton's own LLM backends (vLLM, TensorRT-LLM), so Triton's clients and tools that
speak to them work unchanged, and TorchServe takes the same fields as a JSON body:

* ``text_input`` (string, required): the prompt;
* ``stream`` (bool, default false): answer token by token;
* ``exclude_input_in_output`` (bool, default false): a whole answer's ``text_output`` is prompt + completion
  unless this is true (streamed answers never repeat the prompt, as in Triton's vLLM backend);
* ``sampling_parameters`` (an object, or its JSON as a string): ``max_tokens``, ``temperature``, ``top_p``,
  ``top_k``, ``seed``, ``stop``, ``ignore_eos``, ``logprobs`` (``handlers/generation/sampling.py``); the same keys
  may also come at the top level (Triton: as request parameters), and win there.

Every answer carries ``text_output``, ``finish_reason`` (``stop`` | ``length`` | ``error``) on the last one, and the
token counts; with ``logprobs``, ``logprobs``: one entry per new token (OpenAI's chat shape). A bad request is
refused (``InvalidInput``, a 400) before any token is generated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers.artifact import HELD_OUT_NAME, Manifest, read_manifest
from handlers.errors import InvalidInput
from handlers.generation.engine import Engine
from handlers.generation.sampling import SamplingParams
from handlers.self_check import SelfCheckFailed

TASK = "text_generation"
FIELDS = {"text_input", "stream", "exclude_input_in_output", "sampling_parameters"}
SAMPLING_KEYS = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "logprobs"}
# The self-check replays greedy generations recorded where the model was made. Another CPU may sum in another
# order: where two tokens' logits were closer than this, the pick may flip without anything being wrong.
MARGIN_TOLERANCE = 1e-3
SELF_CHECK_PROMPTS = 4
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    params: SamplingParams
    stream: bool = False
    exclude_input: bool = False


def engine_threads() -> int:
    """The default intra-op threads of a language model's steps: every core this process may use but one, which the
    server's front end and the delivery of chunks need while the engine steps. On 2 cores, one thread served 1.3-1.5x
    the tokens/s of two at concurrency 16 on both servers: two threads wait on each other whenever the front end
    takes one of their cores (docs/generative.md)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def intra_op_threads(serving) -> int:
    """The intra-op threads a language model's steps run on with these serving settings."""
    return serving.threads or engine_threads()


def load_engine(artifact_dir: Path, manifest: Manifest, device: str = "cpu") -> Engine:
    import torch  # imported here: a classifier's server never pays for transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load would clutter the server logs
    torch.set_num_threads(intra_op_threads(manifest.serving))
    model_dir = Path(artifact_dir) / manifest.model["dir"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return Engine(model, tokenizer, max_running=manifest.serving.max_batch_size,
                  max_context=manifest.model.get("max_context"), device=device,
                  max_queue_wait_s=manifest.serving.max_queue_wait_s,
                  static=bool(manifest.serving.static_batching),
                  fill_wait_s=manifest.serving.max_batch_delay_ms / 1e3)  # fmt: skip


class GenerationService:
    """One served language model: ``parse`` a request, run it on ``engine`` (directly, or through an EngineLoop),
    shape its answers with ``Answers``."""

    def __init__(self, artifact_dir: Path, device: str = "cpu", self_check: bool = True):
        self.manifest = read_manifest(artifact_dir)  # verifies every file's checksum
        if self.manifest.task != TASK:
            raise ValueError(f"{artifact_dir} is a {self.manifest.task} artifact, not a language model ({TASK})")
        self.engine = load_engine(artifact_dir, self.manifest, device)
        self.max_tokens_limit = self.manifest.serving.max_tokens_limit
        if self_check:
            check_generations(self.engine, Path(artifact_dir))

    @property
    def name(self) -> str:
        return self.manifest.name

    def parse(self, body: Any) -> GenerateRequest:
        """A request body (JSON bytes or an already-decoded object) as a checked request; InvalidInput names the
        field that is wrong."""
        if isinstance(body, (bytes, bytearray)):
            try:
                body = json.loads(bytes(body).decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput("the request body is not UTF-8") from None
            except ValueError as exc:
                raise InvalidInput(f"the request body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise InvalidInput(f"the request must be a JSON object with text_input, not {type(body).__name__}")
        unknown = sorted(set(body) - FIELDS - SAMPLING_KEYS)
        if unknown:
            raise InvalidInput(
                f"unknown field {', '.join(unknown)} (known: {', '.join(sorted(FIELDS | SAMPLING_KEYS))})"
            )
        sampling = body.get("sampling_parameters") or {}
        if isinstance(sampling, str):
            try:
                sampling = json.loads(sampling)
            except ValueError as exc:
                raise InvalidInput(f"sampling_parameters is not JSON ({exc})") from None
        if not isinstance(sampling, dict):
            raise InvalidInput(f"sampling_parameters must be an object, not {type(sampling).__name__}")
        sampling = {**sampling, **{k: v for k, v in body.items() if k in SAMPLING_KEYS}}
        params = SamplingParams.from_dict(sampling, self.max_tokens_limit)
        prompt = body.get("text_input")
        if not isinstance(prompt, str):
            raise InvalidInput(f"text_input must be a string, not {type(prompt).__name__}")
        flags = {name: body.get(name, False) for name in ("stream", "exclude_input_in_output")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false, not {value!r}")
        self.engine.prepare(prompt, params)  # empty, or too long for the context: refused before it is queued
        return GenerateRequest(prompt, params, flags["stream"], flags["exclude_input_in_output"])


def answer(request: GenerateRequest, text: str, finish_reason: str | None, prompt_tokens: int,
           completion_tokens: int, logprobs: list[dict] | None = None) -> dict:  # fmt: skip
    """A whole answer, or the last one of a stream (then ``text`` is the last delta)."""
    if not request.stream and not request.exclude_input:
        text = request.prompt + text
    body = {"text_output": text, "finish_reason": finish_reason,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}  # fmt: skip
    return body | ({"logprobs": logprobs} if request.params.logprobs is not None else {})


class Answers:
    """One request's answers from its engine events, the same on both servers: a stream's text deltas as they come,
    or one whole answer at the end, its deltas gathered here. Errors and cancellations are each server's own."""

    def __init__(self, request: GenerateRequest):
        self.request, self._text, self._logprobs = request, [], []

    def next(self, event) -> dict | None:
        """The answer this event makes: the last one when it ends, a stream's delta when there is new text (or a
        token's log-probability), else None (a whole answer still gathering, or text held back)."""
        logprobs = event.logprobs or []
        if self.request.stream:
            if event.finished:
                return answer(self.request, event.text, event.finish_reason, event.prompt_tokens,
                              event.completion_tokens, logprobs)  # fmt: skip
            delta = {"text_output": event.text, "finish_reason": None}
            return delta | ({"logprobs": logprobs} if logprobs else {}) if event.text or logprobs else None
        self._text.append(event.text)
        self._logprobs.extend(logprobs)
        if event.finished:
            return answer(self.request, "".join(self._text), event.finish_reason, event.prompt_tokens,
                          event.completion_tokens, self._logprobs)  # fmt: skip
        return None


def check_generations(engine: Engine, artifact_dir: Path) -> None:
    """Replay the greedy generations recorded with the artifact; refuse to serve when they differ where the
    recorded logits were not a near tie (``MARGIN_TOLERANCE``)."""
    path = artifact_dir / HELD_OUT_NAME
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][
        :SELF_CHECK_PROMPTS
    ]
    start = time.perf_counter()
    for record in records:
        spec = record["input"]
        params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0)
        _, ids, reason = engine.generate(spec["prompt"], params)
        if reason == "stop" and ids and ids[-1] in engine.eos_ids:
            ids = ids[:-1]  # the record leaves the end-of-text token out (its margin is the one after the last)
        expected, margins = record["token_ids"], record["margins"]
        first = next((i for i, (a, b) in enumerate(zip(ids, expected, strict=False)) if a != b), None)
        if first is None and len(ids) != len(expected):
            first = min(len(ids), len(expected))
        if first is None:
            continue
        margin = margins[first] if first < len(margins) else float("inf")
        if margin >= MARGIN_TOLERANCE:
            raise SelfCheckFailed(f"{artifact_dir}: the greedy generation for {spec['prompt']!r} differs from "
                                  f"the recorded one at token {first} (margin {margin:.2e})")  # fmt: skip
        log.warning("self-check: %r diverges at token %d, a near tie (margin %.1e)", spec["prompt"], first, margin)
    log.info("self-check passed: %d greedy generations in %.2fs", len(records), time.perf_counter() - start)
