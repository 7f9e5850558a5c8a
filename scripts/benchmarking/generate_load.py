"""The generation benchmark's workload, how each mode is driven and timed, and its figures (``generate_bench.py``
runs them; ``generate_report.py`` reads the targets and writes the reports).

Every streamed mode is driven the same way: ``closed_loop`` runs ``c`` workers, each sending its next request when the
previous one ends, and ``measure`` times one request from the moment it is sent: TTFT to its first chunk with text,
then each gap between chunks with text (ITL, per chunk as vLLM's benchmark_serving counts it: a byte-level token
that ends inside a UTF-8 character adds to the next chunk). A stream is an async iterator of ``Chunk``: the engine
in process (``engine_stream``), TorchServe's NDJSON lines, or Triton's ``generate_stream`` server-sent events.
``static_levels`` is the one mode that is not streamed: padded ``model.generate`` batches of c, answered whole.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import NamedTuple

import httpx
import numpy as np
import torch

from handlers.generation.engine import Engine
from handlers.generation.loop import EngineLoop
from handlers.generation.sampling import SamplingParams
from scripts.training.lm_artifact import context_length, plain_greedy

IN_PROCESS, SERVERS = ("in-process", "naive", "static", "in-process-served"), ("torchserve", "triton")
# The same server without continuous batching, at the target level: the serving overrides of its build.
SERVED_BASELINES = {"naive": {"max_batch_size": 1},
                    "static": {"static_batching": 1, "max_batch_delay_ms": 10}}  # fmt: skip
TARGET_C = 16  # where the targets are read (the highest level measured when 16 is not)
WARMUP_TOKENS = 4
MIN_OUTPUT = 4  # planned new tokens, at least
SNIPPET_TOKENS = 8  # the shortest snippet prompt; the longest is MAX_SNIPPET_TOKENS or a quarter of the context
MAX_SNIPPET_TOKENS = 128


@dataclass(frozen=True)
class Request:
    prompt: str
    prompt_tokens: int
    output_tokens: int  # planned: sent as max_tokens with ignore_eos, so exactly this many come back
    source: str  # "held_out" | "snippet"


def make_workload(tokenizer, held_out: Sequence[str], text: str, n: int, mean_output: float, max_output: int,
                  max_context: int, max_tokens_limit: int, seed: int) -> list[Request]:  # fmt: skip
    """``n`` seeded requests: half the prompts are held-out prompts as recorded (short, as people type them), half
    are runs of whole words of ``text`` of about a log-uniform number of tokens; output lengths are exponential with
    mean ``mean_output``, clipped to [MIN_OUTPUT, max_output] and to what the context and the server allow."""
    if not held_out:
        raise ValueError("no held-out prompts to build the workload from")
    rng = np.random.default_rng(seed)
    words = [w for w in text.split() if "\ufffd" not in w] or list(held_out)  # no half characters
    per_word = len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) / len(words)
    longest = max(SNIPPET_TOKENS, min(MAX_SNIPPET_TOKENS, max_context // 4))
    requests = []
    for _ in range(n):  # the same draws in the same order whatever each request's source
        pick, size, start, choice = rng.random(), rng.random(), rng.random(), rng.integers(len(held_out))
        wanted = rng.exponential(mean_output)
        prompt, source = held_out[choice], "held_out"
        if pick >= 0.5:
            tokens = math.exp(math.log(SNIPPET_TOKENS) + size * math.log(longest / SNIPPET_TOKENS))
            k = max(1, round(tokens / per_word))
            first = int(start * len(words))
            prompt, source = " ".join((words * (k // len(words) + 2))[first : first + k]), "snippet"
        prompt_tokens = len(tokenizer(prompt)["input_ids"])  # as the server encodes it (BOS and all)
        output = min(max(round(wanted), MIN_OUTPUT), max_output, max_context - prompt_tokens, max_tokens_limit)
        if output < 1:
            raise ValueError(f"prompt of {prompt_tokens} tokens leaves no room in a {max_context}-token context")
        requests.append(Request(prompt, prompt_tokens, output, source))
    return requests


def describe_workload(seed: int, fixed_n: bool, mean_output: float, max_output: int) -> str:
    return (f"seed {seed}; per level N = {'--requests' if fixed_n else 'max(16, 8c)'} requests, the first N of one "
            "sequence; prompts: half the artifact's held-out prompts as recorded, half runs of whole words of its "
            f"held-out prompts and recorded continuations of about {SNIPPET_TOKENS}..{MAX_SNIPPET_TOKENS} tokens "
            f"(log-uniform, at most a quarter of the context); output tokens exponential with mean {mean_output:g}, "
            f"clipped to [{MIN_OUTPUT}, {max_output}] and to the context; greedy with ignore_eos, so each request "
            "generates exactly its planned tokens")  # fmt: skip


def request_body(request: Request) -> dict:
    """The JSON both servers take (handlers/generation/service.py): streamed, greedy, exactly the planned length."""
    return {"text_input": request.prompt, "stream": True, "exclude_input_in_output": True,
            "max_tokens": request.output_tokens, "temperature": 0, "ignore_eos": True}  # fmt: skip


# ---- one request, timed ----------------------------------------------------------------------------------
class Chunk(NamedTuple):
    text: str
    completion_tokens: int | None = None  # when the answer says so (its last chunk)


class RequestFailed(Exception):
    pass


@dataclass
class RequestResult:
    planned: int
    ttft_s: float | None = None
    latency_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    completion_tokens: int | None = None
    error: str | None = None

    def raw(self) -> dict:
        ms = lambda s: None if s is None else round(s * 1e3, 3)  # noqa: E731
        return {"planned": self.planned, "completion_tokens": self.completion_tokens, "ttft_ms": ms(self.ttft_s),
                "latency_ms": ms(self.latency_s), "itl_ms": [ms(g) for g in self.gaps_s],
                "error": self.error}  # fmt: skip


Stream = Callable[[Request], AsyncIterator[Chunk]]


async def measure(stream: Stream, request: Request, timeout: float) -> RequestResult:
    times: list[float] = []
    tokens = None
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout), aclosing(stream(request)) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    times.append(time.perf_counter())
                if chunk.completion_tokens is not None:
                    tokens = chunk.completion_tokens
    except Exception as exc:  # a refusal, a broken stream, the timeout: an error, and the run goes on
        error = f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return RequestResult(request.output_tokens, error=error[:300])
    end = time.perf_counter()
    first = times[0] if times else end
    return RequestResult(request.output_tokens, first - sent, end - sent, np.diff(times).tolist(), tokens)


async def closed_loop(stream: Stream, requests: Sequence[Request], concurrency: int,
                      timeout: float) -> tuple[list[RequestResult], float]:  # fmt: skip
    """``concurrency`` clients, each sending its next request when its previous one ends; the level's wall time."""
    results: list[RequestResult | None] = [None] * len(requests)
    pending = iter(range(len(requests)))

    async def client() -> None:
        for i in pending:
            results[i] = await measure(stream, requests[i], timeout)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(requests)))))
    return results, time.perf_counter() - start


# ---- the streams -----------------------------------------------------------------------------------------
def engine_stream(loop: EngineLoop) -> Stream:
    """The engine in this process, as a server adapter drives it: events come from its thread into asyncio."""
    ids = itertools.count()

    async def stream(request: Request) -> AsyncIterator[Chunk]:
        events: asyncio.Queue = asyncio.Queue()
        here, request_id, done = asyncio.get_running_loop(), f"bench-{next(ids)}", False
        params = SamplingParams(max_tokens=request.output_tokens, temperature=0.0, ignore_eos=True)
        loop.submit(request_id, request.prompt, params,
                    on_event=lambda event: here.call_soon_threadsafe(events.put_nowait, event))  # fmt: skip
        try:
            while not done:
                event = await events.get()
                done = event.finished
                if event.finish_reason in ("error", "cancelled"):
                    raise RequestFailed(event.error or event.finish_reason)
                yield Chunk(event.text, event.completion_tokens if done else None)
        finally:
            if not done:
                loop.cancel(request_id)

    return stream


def http_stream(kind: str, client: httpx.AsyncClient, url: str) -> Stream:
    """TorchServe (continuous batching): an NDJSON line per step with new text, the last one with ``usage``; Triton
    ``generate_stream``: a ``data: {...}`` server-sent event per response, each with ``completion_tokens``."""

    async def stream(request: Request) -> AsyncIterator[Chunk]:
        async with client.stream("POST", url, json=request_body(request)) as response:
            if response.status_code != 200:
                raise RequestFailed(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if kind == "triton" and not line.startswith("data:") or not line.strip():
                    continue
                data = json.loads(line.removeprefix("data:"))
                if "error" in data:
                    raise RequestFailed(str(data["error"])[:200])
                tokens = data.get("completion_tokens", (data.get("usage") or {}).get("completion_tokens"))
                yield Chunk(data.get("text_output") or "", tokens[0] if isinstance(tokens, list) else tokens)

    return stream


async def served_level(kind: str, url: str, headers: dict, requests: Sequence[Request], concurrency: int,
                       timeout: float) -> tuple[list[RequestResult], float]:  # fmt: skip
    """One level against a server: an ``httpx.AsyncClient`` with a keep-alive connection per client."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        return await closed_loop(http_stream(kind, client, url), requests, concurrency, timeout)


def engine_levels(engine: Engine, timeout: float):
    """Each level on a fresh engine thread, warmed by one short request first (its thread pool, the allocator)."""

    def measure_level(requests: list[Request], c: int):
        loop = EngineLoop(engine, name="bench-engine")
        warm = Request(requests[0].prompt, requests[0].prompt_tokens, WARMUP_TOKENS, requests[0].source)
        try:
            asyncio.run(closed_loop(engine_stream(loop), [warm], 1, timeout))
            return asyncio.run(closed_loop(engine_stream(loop), requests, c, timeout))
        finally:
            loop.stop()

    return measure_level


def static_generate(model, tokenizer, group: list[Request]) -> int:
    """One padded batch through ``model.generate``: every row runs to the group's longest planned length."""
    from transformers import GenerationConfig

    encoded = tokenizer([r.prompt for r in group], return_tensors="pt", padding=True)
    # Every row runs as long as the longest, from its own position: the longest prompt bounds it by the context.
    room = context_length(model.config) - int(encoded["attention_mask"].sum(1).max())
    longest = min(max(r.output_tokens for r in group), room)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = GenerationConfig(do_sample=False, num_beams=1, min_new_tokens=longest, max_new_tokens=longest,
                                pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    with torch.inference_mode(), plain_greedy(model, settings):
        out = model.generate(**encoded, generation_config=settings)
    return out.shape[1] - encoded["input_ids"].shape[1]


def static_levels(model, tokenizer, warm: Request):
    """Static batching: c clients, each waiting for the whole batch, are groups of c run one after the other. On a
    thread of its own, as the engine runs: torch's main-thread OpenMP team spin-waits, ~30x slower on a busy CPU."""
    tokenizer.padding_side = "left"

    def level(requests: list[Request], c: int) -> tuple[list[RequestResult], float]:
        results, start = [], time.perf_counter()
        for i in range(0, len(requests), c):
            group, sent = requests[i : i + c], time.perf_counter()
            generated = static_generate(model, tokenizer, group)
            took = time.perf_counter() - sent  # not streamed: the first token arrives with the whole batch
            # a row the context cut short counts only the tokens it got
            results += [RequestResult(min(generated, r.output_tokens), took, took, [], min(generated, r.output_tokens))
                        for r in group]  # fmt: skip
        return results, time.perf_counter() - start

    def measure_level(requests: list[Request], c: int) -> tuple[list[RequestResult], float]:
        with ThreadPoolExecutor(1, thread_name_prefix="bench-static") as pool:
            pool.submit(level, [Request(warm.prompt, warm.prompt_tokens, WARMUP_TOKENS, warm.source)], 1).result()
            return pool.submit(level, requests, c).result()

    return measure_level


# ---- figures ---------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation (numpy's default); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def summarize(results: Sequence[RequestResult], wall_s: float) -> dict:
    """A level's figures: planned tokens of the completed requests over the level's wall time, requests/s, and
    TTFT / ITL / latency percentiles over every completed request (ITL: every gap of every request, pooled)."""
    done = [r for r in results if r.error is None]
    ttft = [r.ttft_s * 1e3 for r in done if r.ttft_s is not None]
    itl = [g * 1e3 for r in done for g in r.gaps_s]
    latency = [r.latency_s * 1e3 for r in done if r.latency_s is not None]
    # vLLM's TPOT: a request's time after its first chunk per token after the first; unlike ITL, chunks that
    # arrive in bursts (a server that buffers) do not make it look small
    tpot = [(r.latency_s - r.ttft_s) * 1e3 / (r.planned - 1) for r in done if r.planned > 1 and r.ttft_s is not None]
    tokens = sum(r.planned for r in done)
    per_s = lambda x: x / wall_s if wall_s > 0 else 0.0  # noqa: E731
    summary = {
        "requests": len(results), "completed": len(done), "errors": len(results) - len(done),
        "wall_s": round(wall_s, 4), "output_tokens": tokens, "tokens_per_s": per_s(tokens),
        "requests_per_s": per_s(len(done)),
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50), "itl_p99_ms": percentile(itl, 99),
        "tpot_p50_ms": percentile(tpot, 50), "tpot_p99_ms": percentile(tpot, 99),
        "latency_p50_ms": percentile(latency, 50), "latency_p99_ms": percentile(latency, 99),
        "tokens_match": all(r.completion_tokens == r.planned for r in done),
    }  # fmt: skip
    errors = [r.error for r in results if r.error]
    if errors:
        summary["first_error"] = errors[0]
    return summary
