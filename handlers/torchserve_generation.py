"""TorchServe adapter for language models: continuous batching, one decoding step per ``handle`` call.

The archive sets ``continuousBatching: true`` (``scripts/packaging/generation_build.py``). TorchServe then calls
``handle`` with every request in flight: new ones carry their body and join the engine at this step; running ones
come back with their id only. Each call is one engine step, and each request gets this step's chunk: a streamed
request an NDJSON line per step with new text (``{"text_output": delta, ...}``), a whole-answer request nothing until
its one JSON answer. ``context.stopping_criteria`` tells TorchServe which requests have ended. A client that
disconnects (HTTP) or cancels (gRPC) is dropped by TorchServe: its id is missing from the next call, and its
sequence is cancelled at that step, freeing its slot.

Why this mode and not ``asyncCommunication``: TorchServe tells an async handler nothing when a client goes away,
so a generation would run on for nobody.

HTTP only: TorchServe 0.12's gRPC job reports a live stream as closed (``GRPCJob.isOpen`` returns ``isCancelled``),
so the continuous-batching loop drops a gRPC request after its first chunk and the call hangs until its deadline.
A request without HTTP headers came over gRPC: it is refused at once, with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from handlers.errors import InvalidInput, ServingError, as_serving_error
from handlers.generation.engine import Event
from handlers.generation.metrics import GenerationMetrics, publish_torchserve
from handlers.generation.service import Answers, GenerateRequest, GenerationService
from handlers.log_limit import rate_limited
from handlers.torchserve_handler import request_body

log = rate_limited(__name__)
STREAM_TYPE, ANSWER_TYPE = "application/x-ndjson", "application/json"


@dataclass
class _Flight:
    request: GenerateRequest
    answers: Answers
    sent: bool = False  # a chunk went out: the answer is a chunked HTTP response from now on


@dataclass
class _Reply:
    body: str
    final: bool
    sent_before: bool
    content_type: str
    grpc: bool = False  # TorchServe's gRPC job needs an explicit end of stream even on a first, last reply


GRPC_REFUSAL = (
    "language models on TorchServe answer over HTTP only (POST /predictions/<model>): TorchServe 0.12's gRPC drops "
    "a continuous-batching request after its first chunk; Triton's gRPC streams them"
)


class GenerationHandler:
    def __init__(self):
        self.service: GenerationService | None = None
        self.flights: dict[str, _Flight] = {}
        self.metrics = GenerationMetrics()

    def initialize(self, context) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        device = f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu"
        self.service = GenerationService(Path(properties["model_dir"]) / "artifact", device=device)
        log.info("loaded language model %s on %s", self.service.name, device)

    def handle(self, data: list[dict], context) -> list[str]:
        engine = self.service.engine
        ids = [context.get_request_id(idx) for idx in range(len(data))]
        for gone in set(self.flights) - set(ids):  # TorchServe dropped it: the client went away
            engine.cancel(gone)  # its "cancelled" event comes out of this step (and is counted)
            del self.flights[gone]
        replies: dict[int, _Reply] = {}
        for idx, (request_id, item) in enumerate(zip(ids, data, strict=True)):
            if request_id not in self.flights:
                grpc = not any(k.lower() == "host" for k in context.get_all_request_header(idx))
                refused = InvalidInput(GRPC_REFUSAL) if grpc else self.admit(request_id, item)
                if refused is not None:
                    context.set_response_status(refused.http_status, refused.message, idx)
                    replies[idx] = _Reply(json.dumps({"error": refused.to_json()}), True, False, ANSWER_TYPE, grpc)
        stepped = engine.step() if engine.has_work else []
        events = {event.request_id: event for event in stepped}
        self.record_metrics(stepped, context)
        for idx, request_id in enumerate(ids):
            if idx not in replies:
                replies[idx] = self.reply(request_id, events.get(request_id))
        return self.respond([replies[idx] for idx in range(len(ids))], context)

    def admit(self, request_id: str, item: dict) -> ServingError | None:
        """Parse a new request and queue it in the engine; the error to answer at once if it is refused."""
        try:
            request = self.service.parse(request_body(item))
            self.service.engine.add(request_id, request.prompt, request.params)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.exception("could not queue a generation request")
            return as_serving_error(exc)
        self.flights[request_id] = _Flight(request, Answers(request))
        self.metrics.arrived(request_id)
        return None

    def record_metrics(self, events: list[Event], context) -> None:
        """Never fails a step: a fault here is logged, and the chunks still go out."""
        try:
            engine = self.service.engine
            publish_torchserve(context.metrics, self.metrics.step(events, engine.running, engine.waiting))
        except Exception:
            log.exception("could not record metrics")

    def reply(self, request_id: str, event: Event | None) -> _Reply:
        """This step's chunk for one request: a stream's NDJSON line (or nothing new), or its whole answer."""
        flight = self.flights[request_id]
        request = flight.request
        content_type = STREAM_TYPE if request.stream else ANSWER_TYPE
        sent_before, flight.sent = flight.sent, True
        if event is None or not event.finished:
            body = flight.answers.next(event) if event is not None else None
            return _Reply(json.dumps(body) + "\n" if body else "", False, sent_before, content_type)
        del self.flights[request_id]
        if event.finish_reason == "error":
            body = {"error": {"code": 500, "type": "InternalError", "message": event.error}, "finish_reason": "error"}
        else:
            body = flight.answers.next(event)
        return _Reply(json.dumps(body) + ("\n" if request.stream else ""), True, sent_before, content_type)

    @staticmethod
    def respond(replies: list[_Reply], context) -> list[str]:
        """Set each reply's content type and whether its stream goes on: TorchServe sends a request's first reply
        with its status line, and a reply that is both first and last as one plain (non-chunked) response."""
        for idx, reply in enumerate(replies):
            context.set_response_content_type(idx, reply.content_type)
        outcome = [None if r.final and not r.sent_before and not r.grpc else r.final for r in replies]
        context.stopping_criteria = [lambda _, stop=stop: stop for stop in outcome]
        return [reply.body for reply in replies]
