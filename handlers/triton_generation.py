"""Triton adapter for language models: a decoupled Python model over the engine's own thread.

``execute`` parses each request, hands it to the ``EngineLoop`` and returns at once (as Triton's vLLM backend
does), so requests join the running batch at the next decoding step while others decode. Answers go out through
each request's response sender on the loop's delivery thread, not the engine's (each send is a round trip to the
server process): a response with the new text when streaming (``generate_stream``, gRPC ``ModelStreamInfer``), one
step's worth or, when sending lags behind the engine, several steps' merged; one whole answer otherwise
(``generate``); the last carries ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``. The delivery thread also asks
``request.is_cancelled()`` every few milliseconds: a client that closes its stream or cancels its call ends its
sequence at the next step, and its slot is free for the next request.

Tensors follow Triton's LLM backends: inputs ``text_input``, ``stream``, ``sampling_parameters`` (JSON),
``exclude_input_in_output``; output ``text_output``; the last answer (or a whole one) adds ``finish_reason``,
``prompt_tokens`` and ``completion_tokens`` (what an OpenAI-style answer needs), and any answer ``logprobs`` (JSON)
when the request asked for them. Request parameters (``max_tokens``, ``temperature``, ..., ``stream``) are read too.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from handlers.errors import InternalError, InvalidInput, ServingError, as_serving_error
from handlers.generation import cores
from handlers.generation.loop import EngineLoop
from handlers.generation.metrics import (
    FINISH_REASONS,
    ITL_BUCKETS,
    PREFIX,
    TTFT_BUCKETS,
    GenerationMetrics,
    Publisher,
    StepMetrics,
)
from handlers.generation.sequence import Event
from handlers.generation.service import Answers, GenerateRequest, GenerationService
from handlers.log_limit import rate_limited
from handlers.triton_model import artifact_dir, device, log_to_triton

log = rate_limited(__name__)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
INPUTS = ("text_input", "stream", "sampling_parameters", "exclude_input_in_output")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        log_to_triton()
        self.service = GenerationService(artifact_dir(args), device=device(args))
        self.metrics = GenerationMetrics()
        published = TritonMetrics(args["model_name"], str(args["model_version"]))
        self.publisher = Publisher(published.publish, name=f"metrics-{args['model_name']}",
                                   interval_s=self.service.manifest.serving.metrics_interval_s)  # fmt: skip
        cores.share_interpreter()  # this process serves the one model: see cores.py
        bind = bool(self.service.manifest.serving.bind_cores)
        self.loop = EngineLoop(self.service.engine, name=f"engine-{args['model_name']}", on_step=self.record_metrics,
                               deliver_apart=True, bind_cores=bind)  # fmt: skip
        self.ids = itertools.count()
        log.info("loaded language model %s", self.service.name)

    def execute(self, requests: list) -> None:
        for request in requests:
            self.start(request)
        return None  # decoupled: every answer goes through the request's response sender

    def start(self, request) -> None:
        sender, request_id = request.get_response_sender(), f"triton-{next(self.ids)}"
        try:
            parsed = self.service.parse(request_fields(request))
            self.metrics.arrived(request_id)
            self.loop.submit(request_id, parsed.prompt, parsed.params,
                             on_event=Replier(parsed, sender), is_cancelled=request.is_cancelled)  # fmt: skip
        except Exception as exc:  # refused before any token
            self.metrics.forget(request_id)
            if not isinstance(exc, ServingError):
                log.exception("could not queue a generation request")
            sender.send(error_response(as_serving_error(exc)), flags=FINAL)

    def record_metrics(self, events: list[Event]) -> None:
        """On the engine thread, after each step: measured here, published on the publisher's thread; never fails
        the step."""
        try:
            engine = self.service.engine
            self.publisher.put(self.metrics.step(events, engine.running, engine.waiting))
        except Exception:
            log.exception("could not record metrics")

    def finalize(self) -> None:
        self.loop.stop()


class TritonMetrics:
    """The generation metrics as Triton metric families (on its /metrics with the server's own)."""

    def __init__(self, model: str, version: str = "1"):
        family = pb_utils.MetricFamily
        labels = {"model": model, "version": version}  # each loaded version its own series

        def make(name: str, kind, description: str, **metric):
            self.families.append(family(name=f"{PREFIX}{name}", description=description, kind=kind))
            return self.families[-1].Metric(labels={**labels, **metric.pop("labels", {})}, **metric)

        self.families: list = []  # a family must outlive its metrics
        self.ttft = make("time_to_first_token_seconds", family.HISTOGRAM, "Arrival to first token",
                         buckets=TTFT_BUCKETS)  # fmt: skip
        self.itl = make("inter_token_latency_seconds", family.HISTOGRAM, "Gap between decoding steps",
                        buckets=ITL_BUCKETS)  # fmt: skip
        self.prompt = make("prompt_tokens_total", family.COUNTER, "Prompt tokens of started requests")
        self.generated = make("generation_tokens_total", family.COUNTER, "Generated tokens")
        finished = family(name=f"{PREFIX}request_finished_total", description="Requests ended",
                          kind=family.COUNTER)  # fmt: skip
        self.families.append(finished)
        self.finished = {r: finished.Metric(labels={**labels, "finished_reason": r}) for r in FINISH_REASONS}
        self.running = make("num_requests_running", family.GAUGE, "Sequences in the running batch")
        self.waiting = make("num_requests_waiting", family.GAUGE, "Requests waiting for a slot")

    def publish(self, step: StepMetrics) -> None:
        for value in step.time_to_first_token:
            self.ttft.observe(value)
        for value in step.inter_token_latency:
            self.itl.observe(value)
        if step.prompt_tokens:
            self.prompt.increment(step.prompt_tokens)
        if step.generation_tokens:
            self.generated.increment(step.generation_tokens)
        for reason, count in step.finished.items():
            self.finished[reason].increment(count)
        self.running.set(step.running)
        self.waiting.set(step.waiting)


class Replier:
    """Sends one request's events as responses (called on the engine thread)."""

    def __init__(self, request: GenerateRequest, sender):
        self.sender, self.answers = sender, Answers(request)

    def __call__(self, event: Event) -> None:
        if event.finish_reason == "cancelled":
            self.sender.send(flags=FINAL)  # the client is gone: close the request, nothing to say
        elif event.finish_reason == "error":
            self.sender.send(error_response(InternalError(event.error or "generation failed")), flags=FINAL)
        elif (body := self.answers.next(event)) is not None:
            self.sender.send(response(body), flags=FINAL if event.finished else 0)


def response(body: dict):
    """A stream's delta holds ``text_output`` alone, as Triton's vLLM backend sends it: each tensor is work for the
    stub and the server on every token (the three left out cost ~10% of the tokens/s at c=16). The last answer, or
    a whole one, has ``finish_reason`` and the token counts too."""
    tensors = [string_tensor("text_output", body["text_output"])]
    if "usage" in body:
        tensors.append(string_tensor("finish_reason", body["finish_reason"] or ""))
        tensors += [pb_utils.Tensor(name, np.array([body["usage"][name]], dtype=np.int32))
                    for name in ("prompt_tokens", "completion_tokens")]  # fmt: skip
    if "logprobs" in body:
        tensors.append(string_tensor("logprobs", json.dumps(body["logprobs"])))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def string_tensor(name: str, text: str):
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


def error_response(error: ServingError):
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(error.message, getattr(pb_utils.TritonError, error.triton_code))
    )


def request_fields(request) -> dict:
    """The request as the service's JSON contract: its input tensors, then its parameters on top."""
    fields = {}
    for name in INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        values = tensor.as_numpy().reshape(-1)
        if len(values) != 1:
            raise InvalidInput(f"{name} must hold one value, not {len(values)}")
        value = values[0]
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"{name} is not UTF-8") from None
        fields[name] = value.item() if isinstance(value, np.generic) else value
    parameters = json.loads(request.parameters() or "{}")
    fields.update({k: v for k, v in parameters.items() if not k.startswith("triton_")})
    return fields
