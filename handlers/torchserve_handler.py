"""TorchServe adapter: maps TorchServe's request dicts to pipeline bodies, and answers back with per-request status.

The archive's entry module subclasses ``MaasHandler``; the archive also carries the ``handlers`` package and the
artifact under ``artifact/``, so it loads on a stock TorchServe whose Python has only the third-party libraries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from handlers.batched_counters import BatchedCounters
from handlers.deadline import DeadlineGate, counts, header, lower_names
from handlers.errors import as_serving_error
from handlers.explain import EXPLAIN_HEADERS, is_true, load_explainer
from handlers.log_limit import rate_limited
from handlers.tasks import load_pipeline

log = rate_limited(__name__)  # a client can trigger these: a flood must not flood the log
VERSION_HEADER = "X-Model-Version"  # which version of the model answered (maas serve deploy adds versions)
EXPLAIN = "explain"  # TorchServe sets it: "True" on /explanations, "False" on /predictions (whatever a client sent)
ASK_EXPLAIN = "X-Explain"  # a client's flag on /predictions: "true" asks for the explanation


def served_version(context) -> str:
    """The model's version as this worker serves it: TorchServe's ``N.0`` as the integer ``N`` it stands for."""
    version = str((getattr(context, "manifest", None) or {}).get("model", {}).get("modelVersion", "1.0"))
    return version.removesuffix(".0")


def version_dimensions(version: str) -> list:
    """The label our metrics carry beside TorchServe's own ``ModelName`` and ``Level``: the version that served."""
    return [Dimension("ModelVersion", version)]


class MaasHandler:
    """One instance per worker. TorchServe calls ``initialize`` once, then ``handle`` for every batch."""

    def __init__(self):
        self.pipeline, self.version = None, "1"
        self._explainer: Any = None  # built at the first explanation asked for: predictions never load Captum

    def initialize(self, context) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        device = f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu"
        self.model_dir, self.device = Path(properties["model_dir"]), device
        self.pipeline = load_pipeline(self.model_dir / "artifact", device=device)
        self.version = served_version(context)
        self.dimensions = version_dimensions(self.version)
        self.counters = BatchedCounters(self.pipeline.manifest.serving.metrics_interval_s, self.emit_metrics, True)
        self.metrics = None  # TorchServe's metrics cache, from the latest batch's context
        self.deadlines = DeadlineGate.for_serving(self.pipeline.manifest.serving)
        log.info("loaded %s (%s) on %s", self.pipeline.manifest.name, self.pipeline.manifest.task, device)

    def handle(self, data: list[dict], context) -> list[str]:
        headers = [lower_names(context.get_all_request_header(idx)) for idx in range(len(data))]
        explains = [asks_explanation(h) for h in headers]
        predicted = []  # the requests the pipeline ran (its timings are theirs)

        def run(keep: list[int]) -> list:  # explanations and predictions of one batch: each answered its way
            explain = [i for i in keep if explains[i]]
            explained = self.explain([data[i] for i in explain], [headers[i] for i in explain])
            answers = dict(zip(explain, explained, strict=True))
            predicted.extend(i for i in keep if i not in answers)
            if predicted:
                bodies = [request_body(data[i]) for i in predicted]
                answers.update(zip(predicted, self.pipeline.handle_json(bodies), strict=True))
            return [answers[i] for i in keep]

        deadlines, explaining = [header(h) for h in headers], any(explains)
        answers, refusals = self.deadlines.run(deadlines, run, lambda refused: (refused.http_status,
                                               {"error": refused.to_json()}), timed=not explaining)  # fmt: skip
        responses = []
        for idx, (status, body) in enumerate(answers):
            if status != 200:  # {"error": {...}}, or {"error": "..."} for an Open Inference Protocol request
                error = body["error"]
                context.set_response_status(status, error["message"] if isinstance(error, dict) else error, idx)
            context.set_response_content_type(idx, "application/json")
            context.set_response_header(idx, VERSION_HEADER, self.version)
            responses.append(json.dumps(body))
        self.record_metrics(context, len(predicted), counts(refusals)[1])
        return responses

    def explain(self, requests: list[dict], headers: list[dict]) -> list[tuple[int, Any]]:
        if not requests:
            return []
        try:
            if self._explainer is None:
                self._explainer = load_explainer(self.model_dir, self.device, self.pipeline)
        except Exception as exc:  # no explainer (an ONNX model: 501), or it failed to load: these requests' answer
            unavailable = as_serving_error(exc)
            if unavailable is not exc:
                log.exception("could not build the explainer")
            return [(unavailable.http_status, {"error": unavailable.to_json()})] * len(requests)
        options = [{k: header(h, name) for k, name in EXPLAIN_HEADERS.items()} for h in headers]
        return self._explainer.explain_json([request_body(r) for r in requests], options)

    def record_metrics(self, context, requests: int, expired: int) -> None:
        """Cumulative per-stage time and row counts (Prometheus counters with ``model_metrics_auto_detect``), handed
        to TorchServe at most every ``serving.metrics_interval_s`` (``BatchedCounters``); TorchServe itself reports
        queue time (``ts_queue_latency_microseconds``). ``requests``: those the pipeline ran (none: it did not run);
        ``expired``: those refused for their deadline."""
        timings = self.pipeline.last_timings
        values = {"MaasExpired": expired}
        if requests:  # else every request was refused for its deadline: the pipeline did not run
            values |= {f"Maas{stage.title()}Ms": ms for stage, ms in timings.stages().items()}
            values |= {"MaasRows": timings.rows, "MaasBatches": 1}
            log.debug("batch of %d requests, %d rows: %s", requests, timings.rows, timings)
        self.metrics = context.metrics
        self.counters.add(values)

    def emit_metrics(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if name.endswith("Ms"):
                self.metrics.add_time(name, value, None, "ms", self.dimensions, MetricTypes.COUNTER)
            else:
                self.metrics.add_counter(name, value, None, self.dimensions)


def asks_explanation(headers: dict) -> bool:
    return any(is_true(header(headers, name)) for name in (EXPLAIN, ASK_EXPLAIN))


def request_body(request: dict) -> Any:
    """The payload of one request: the raw body, or the first form field when sent as multipart."""
    for key in ("body", "data"):
        if request.get(key) is not None:
            return request[key]
    values = [v for v in request.values() if v is not None]
    return values[0] if values else b""
