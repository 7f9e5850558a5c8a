"""TorchServe adapter for language models: continuous batching, each ``handle`` call a round of chunks.

The archive sets ``continuousBatching: true`` (``scripts/packaging/generation_build.py``). TorchServe then calls
``handle`` with every request in flight: new ones carry their body and are handed to the engine; running ones come
back with their id only. The engine steps on its own thread (an ``EngineLoop``), so the next step is computed while
TorchServe writes this round's chunks; ``handle`` takes what the steps since the last call produced (one step's, or
several merged when the front end is the slower) and each request gets its chunk: a streamed request an NDJSON line
with the new text (``{"text_output": delta, ...}``), a whole-answer request nothing until its one JSON answer. The
engine runs at most ``STEPS_AHEAD`` steps past the last ``handle``. ``context.stopping_criteria`` tells TorchServe
which requests have ended. A client that disconnects (HTTP) is dropped by TorchServe: its id is missing from the next
call, and its sequence is cancelled before the next step, freeing its slot; when nothing else is in flight no call
comes, and the engine stops within ``STEPS_AHEAD`` steps all the same.

The OpenAI-compatible API comes through the same handler: TorchServe passes the path after
``/predictions/<model>/<version>/`` as the ``url_path`` header, so ``.../predictions/<model>/1.0/v1`` is a base URL
for OpenAI clients (``v1/completions``, ``v1/chat/completions``: Server-Sent Events or one JSON answer; ``v1/models``).
A request's ``n`` choices (or prompts) are as many sequences in the engine, under ids ``<request id>/<choice>``.

Why this mode and not ``asyncCommunication``: TorchServe tells an async handler nothing when a client goes away,
so a generation would run on for nobody.

HTTP only: TorchServe 0.12's gRPC job reports a live stream as closed (``GRPCJob.isOpen`` returns ``isCancelled``),
so the continuous-batching loop drops a gRPC request after its first chunk and the call hangs until its deadline.
A request without HTTP headers came over gRPC: it is refused at once, with a message saying so.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from handlers.errors import InternalError, InvalidInput, ServingError, as_serving_error
from handlers.generation import cores
from handlers.generation.loop import EngineLoop
from handlers.generation.mailbox import Mailbox
from handlers.generation.metrics import GenerationMetrics, StepMetrics, combine, publish_torchserve
from handlers.generation.openai_api import SSE_DONE, ModelCard, OpenAIError, error_body, models_list, parse, sse
from handlers.generation.openai_reply import Reply
from handlers.generation.sequence import Event
from handlers.generation.service import Answers, GenerateRequest, GenerationService
from handlers.log_limit import rate_limited
from handlers.torchserve_handler import VERSION_HEADER, request_body, served_version, version_dimensions

log = rate_limited(__name__)
STREAM_TYPE, ANSWER_TYPE, SSE_TYPE = "application/x-ndjson", "application/json", "text/event-stream"
OPENAI_PREFIX = "v1/"
TAKE_TIMEOUT_S = 1.0  # a round with no news by then goes out empty (TorchServe writes no chunk for an empty body)
STEPS_AHEAD = 2  # steps the engine may run past the last handle call: the overlap, and the run-on after a disconnect
GRPC_REFUSAL = (
    "language models on TorchServe answer over HTTP only (POST /predictions/<model>): TorchServe 0.12's gRPC drops "
    "a continuous-batching request after its first chunk; Triton's gRPC streams them"
)


class NativeOut:
    """The LLM-backend contract's answers: NDJSON lines when streaming, else one JSON answer."""

    def __init__(self, request: GenerateRequest):
        self.stream, self.done = request.stream, False
        self.content_type = STREAM_TYPE if request.stream else ANSWER_TYPE

    def add(self, index: int, answer: dict) -> str:
        self.done = answer["finish_reason"] is not None
        return json.dumps(answer) + "\n" if self.stream else json.dumps(answer) if self.done else ""

    def fail(self, error: ServingError) -> str:
        self.done = True
        return json.dumps({"error": error.to_json(), "finish_reason": "error"}) + ("\n" if self.stream else "")


class OpenAIOut:
    """An OpenAI-API answer: Server-Sent Events ending with ``data: [DONE]`` when streaming, else one JSON answer."""

    def __init__(self, reply: Reply):
        self.reply, self.stream, self.failed = reply, reply.request.stream, False
        self.content_type = SSE_TYPE if self.stream else ANSWER_TYPE

    @property
    def done(self) -> bool:
        return self.failed or self.reply.done

    def add(self, index: int, answer: dict) -> str:
        chunks = self.reply.add(index, answer)
        if self.stream:
            return "".join(map(sse, chunks)) + (SSE_DONE if self.reply.done else "")
        return json.dumps(self.reply.whole()) if self.reply.done else ""

    def fail(self, error: ServingError) -> str:
        self.failed = True
        return sse(error_body(error)) + SSE_DONE if self.stream else json.dumps(error_body(error))


@dataclass
class _Flight:
    choices: list[tuple[str, Answers]]  # each choice's engine id and its answers
    out: NativeOut | OpenAIOut
    sent: bool = False  # a chunk went out: the answer is a chunked HTTP response from now on


@dataclass
class _Reply:
    body: str
    final: bool
    sent_before: bool
    content_type: str
    grpc: bool = False  # TorchServe's gRPC job needs an explicit end of stream even on a first, last reply


class GenerationHandler:
    def __init__(self):
        self.service: GenerationService | None = None
        self.card: ModelCard | None = None
        self.flights: dict[str, _Flight] = {}
        self.metrics, self.version = GenerationMetrics(), "1"
        self.mailbox = Mailbox()
        self.steps: deque[StepMetrics] = deque()  # measured on the engine thread, published by handle
        self.published = 0.0  # when handle last published them (time.monotonic)
        self.loop: EngineLoop | None = None

    def initialize(self, context) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        device = f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu"
        self.service = GenerationService(Path(properties["model_dir"]) / "artifact", device=device)
        engine = self.service.engine
        self.card = ModelCard(context.model_name, engine.tokenizer, engine.max_context, self.service.max_tokens_limit)
        self.version = served_version(context)
        cores.share_interpreter()  # this process serves the one model: see cores.py
        self.loop = EngineLoop(engine, name=f"engine-{context.model_name}", on_step=self.after_step,
                               pace=lambda: self.mailbox.wait_room(STEPS_AHEAD),
                               bind_cores=bool(self.service.manifest.serving.bind_cores))  # fmt: skip
        log.info("loaded language model %s on %s", self.service.name, device)

    def handle(self, data: list[dict], context) -> list[str]:
        ids = [context.get_request_id(idx) for idx in range(len(data))]
        for gone in set(self.flights) - set(ids):  # TorchServe dropped it: the client went away
            for engine_id, _ in self.flights.pop(gone).choices:
                self.loop.cancel(engine_id)  # its "cancelled" event is counted, and answers nobody
        replies: dict[int, _Reply] = {}
        for idx, (request_id, item) in enumerate(zip(ids, data, strict=True)):
            if request_id not in self.flights:
                headers = context.get_all_request_header(idx)
                if not any(k.lower() == "host" for k in headers):
                    refused = InvalidInput(GRPC_REFUSAL)
                    context.set_response_status(refused.http_status, refused.message, idx)
                    body = json.dumps({"error": refused.to_json()})
                    replies[idx] = _Reply(body, True, False, ANSWER_TYPE, grpc=True)
                elif (early := self.admit(request_id, item, headers.get("url_path") or "")) is not None:
                    status, body, retry_after = early
                    context.set_response_status(status, "OK" if status == 200 else "Refused", idx)
                    if retry_after:  # refused for load (429): when to come back
                        context.set_response_header(idx, "Retry-After", str(retry_after))
                    replies[idx] = _Reply(body, True, False, ANSWER_TYPE)
        events: dict[str, list[Event]] = {}
        if any(request_id in self.flights for request_id in ids):  # something is generating: wait for its news
            for event in self.mailbox.take(timeout=TAKE_TIMEOUT_S):
                events.setdefault(event.request_id, []).append(event)
        for idx, request_id in enumerate(ids):
            if idx not in replies:
                replies[idx] = self.reply(request_id, events)
        self.publish_metrics(context)
        return self.respond([replies[idx] for idx in range(len(ids))], context)

    def admit(self, request_id: str, item: dict, route: str) -> tuple[int, str, int | None] | None:
        """Parse a new request and queue its choices in the engine; an answer to send at once (a refusal, or the
        model list) as (status, JSON body, Retry-After seconds or None)."""
        submitted: list[str] = []
        try:
            if route == "v1/models":
                return 200, json.dumps(models_list([self.card.name])), None
            choices, out = self.plan(route, request_body(item))
            self.loop.admit(len(choices))  # Overloaded (429): they would wait too long for a slot
            for index, choice in enumerate(choices):
                submitted.append(f"{request_id}/{index}")
                self.metrics.arrived(submitted[-1])
                self.loop.submit(submitted[-1], choice.prompt, choice.params, self.mailbox.put, admitted=True)
        except Exception as exc:
            for engine_id in submitted:  # the choices queued before one failed: nobody will read them
                self.metrics.forget(engine_id)
                self.loop.cancel(engine_id)
            if not isinstance(exc, ServingError):
                log.exception("could not queue a generation request")
            error = as_serving_error(exc)
            body = json.dumps(error_body(error) if route else {"error": error.to_json()})
            return error.http_status, body, getattr(error, "retry_after_s", None)
        self.flights[request_id] = _Flight(list(zip(submitted, map(Answers, choices), strict=True)), out)
        return None

    def plan(self, route: str, body) -> tuple[list[GenerateRequest], NativeOut | OpenAIOut]:
        """A request's engine requests, every one checked (nothing is queued when one is refused), and its out."""
        if not route:
            request = self.service.parse(body)
            return [request], NativeOut(request)
        if not route.startswith(OPENAI_PREFIX):
            raise OpenAIError(f"no such endpoint /{route} (a language model answers at /predictions/<model> and "
                              "/predictions/<model>/<version>/v1/...)", status=404)  # fmt: skip
        request = parse(route[len(OPENAI_PREFIX) :], body, self.card)
        for choice in request.choices:
            self.service.engine.prepare(choice.prompt, choice.params)
        # Each choice streams its deltas to the Reply, which gathers them when the client wants one answer.
        choices = [GenerateRequest(c.prompt, c.params, stream=True, exclude_input=True) for c in request.choices]
        return choices, OpenAIOut(Reply(request))

    def after_step(self, events: list[Event]) -> None:
        """On the engine thread: the step's metrics for the next ``handle`` to publish; never fails the step."""
        self.mailbox.step_done()
        try:
            engine = self.service.engine
            self.steps.append(self.metrics.step(events, engine.running, engine.waiting))
        except Exception:
            log.exception("could not measure a step")

    def publish_metrics(self, context) -> None:
        """The steps since the last time, combined, at most every ``serving.metrics_interval_s`` while requests are
        in flight, and at once when none is left. Each observation is a log line that the worker writes and the
        front end parses; published every round (a step, ~150 a second) they cost ~6% of the tokens/s at 16
        requests. Never fails a round: a fault here is logged, and the chunks still go out."""
        now = time.monotonic()
        if self.flights and now - self.published < self.service.manifest.serving.metrics_interval_s:
            return
        self.published = now
        steps = [self.steps.popleft() for _ in range(len(self.steps))]  # the engine thread may append meanwhile
        try:
            if steps:
                publish_torchserve(context.metrics, combine(steps), version_dimensions(self.version))
        except Exception:
            log.exception("could not record metrics")

    def reply(self, request_id: str, events: dict[str, list[Event]]) -> _Reply:
        """This round's chunk for one request: what its choices' events make (maybe nothing new), or its end."""
        flight = self.flights[request_id]
        out, parts = flight.out, []
        for index, (engine_id, answers) in enumerate(flight.choices):
            for event in events.get(engine_id, []):
                if event.finish_reason == "error":
                    for other, _ in flight.choices:
                        self.loop.cancel(other)
                    parts.append(out.fail(InternalError(event.error or "generation failed")))
                    break
                if (answer := answers.next(event)) is not None:
                    parts.append(out.add(index, answer))
            if out.done:
                break
        sent_before, flight.sent = flight.sent, True
        if out.done:
            del self.flights[request_id]
        return _Reply("".join(parts), out.done, sent_before, out.content_type)

    def respond(self, replies: list[_Reply], context) -> list[str]:
        """Set each reply's content type and whether its stream goes on: TorchServe sends a request's first reply
        with its status line, and a reply that is both first and last as one plain (non-chunked) response."""
        for idx, reply in enumerate(replies):
            if not reply.sent_before:  # headers go out with the status line only: later chunks need none
                context.set_response_content_type(idx, reply.content_type)
                context.set_response_header(idx, VERSION_HEADER, self.version)
        outcome = [None if r.final and not r.sent_before and not r.grpc else r.final for r in replies]
        context.stopping_criteria = [lambda _, stop=stop: stop for stop in outcome]
        return [reply.body for reply in replies]
