"""Triton Python-backend adapter: one ``execute`` call gets every request of a dynamic batch.

The pipeline stacks all their rows into one forward pass; this file only moves tensors and errors between
Triton's objects and the pipeline. ``triton_python_backend_utils`` exists only inside the server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from handlers.batched_counters import BatchedCounters
from handlers.deadline import DEADLINE_PARAMETER, DeadlineGate, counts
from handlers.log_limit import rate_limited
from handlers.pipeline import BatchTimings
from handlers.tasks import load_pipeline

log = rate_limited(__name__)  # a client can trigger these: a flood must not flood the log


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        log_to_triton()
        config = json.loads(args["model_config"])
        self.pipeline = load_pipeline(artifact_dir(args), device=device(args))
        self.input_names = [spec["name"] for spec in config["input"]]
        self.output_dtypes = output_dtypes(config)
        # Per-stage time on Triton's /metrics, beside its own queue and compute durations. The families must
        # outlive their metrics, so they are kept on the instance too.
        self.stage_family = pb_utils.MetricFamily(
            name="maas_stage_duration_ms_total",
            description="Cumulative wall time of each pipeline stage, in milliseconds",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.rows_family = pb_utils.MetricFamily(
            name="maas_rows_total", description="Rows run through the model", kind=pb_utils.MetricFamily.COUNTER
        )
        model = {"model": args["model_name"], "version": str(args["model_version"])}  # two versions may be loaded
        self.stage_metrics = {
            stage: self.stage_family.Metric(labels={**model, "stage": stage}) for stage in BatchTimings().stages()
        }
        self.rows_metric = self.rows_family.Metric(labels=model)
        self.expired_family = pb_utils.MetricFamily(  # kept: a Metric outliving its family fails every increment
            name="maas_expired_total", description="Requests refused uncomputed: their deadline had passed",
            kind=pb_utils.MetricFamily.COUNTER,
        )  # fmt: skip
        self.expired_metric = self.expired_family.Metric(labels=model)
        self.counters = BatchedCounters(self.pipeline.manifest.serving.metrics_interval_s, self.emit_metrics, False)
        self.deadlines = DeadlineGate.for_serving(self.pipeline.manifest.serving)

    def execute(self, requests: list) -> list:
        def run(keep: list[int]) -> list:
            return self.pipeline.handle_tensors([read_inputs(requests[i], self.input_names) for i in keep])

        outcomes, refusals = self.deadlines.run([request_deadline(r) for r in requests], run,
                                                 lambda refused: refused)  # fmt: skip
        ran, expired = counts(refusals)
        self.record_metrics(ran=ran > 0, expired=expired)
        return respond(outcomes, self.output_dtypes)

    def record_metrics(self, ran: bool = True, expired: int = 0) -> None:
        """Add this batch's stage times and rows, handed to the server at most every ``serving.metrics_interval_s``
        (``BatchedCounters``; the stub's metrics API is called on the request thread only, so after an idle spell a
        counter lags until the next batch). ``ran``: the pipeline ran (not when every request of the batch was
        refused for its deadline); ``expired``: requests refused for their deadline."""
        values = {"expired": expired}
        if ran:
            timings = self.pipeline.last_timings
            values |= {**timings.stages(), "rows": timings.rows}
        self.counters.add(values)

    def emit_metrics(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if name in self.stage_metrics:
                self.stage_metrics[name].increment(value)
        if values.get("rows"):
            self.rows_metric.increment(values["rows"])
        if values.get("expired"):
            self.expired_metric.increment(values["expired"])


# ---- shared with the ensemble stages (handlers/triton_stages.py) -------------------------------------------
class TritonLogHandler(logging.Handler):
    """Python logging into the server's own log (the stub's stderr goes nowhere a user looks)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def log_to_triton() -> None:
    """Send this package's INFO and above (model loads, self-checks, failures) to tritonserver's log, once."""
    package = logging.getLogger("handlers")
    if not any(isinstance(h, TritonLogHandler) for h in package.handlers):
        package.addHandler(TritonLogHandler())
        package.setLevel(logging.INFO)


def artifact_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"] / "artifact"


def device(args: dict) -> str:
    return f"cuda:{args['model_instance_device_id']}" if args.get("model_instance_kind") == "GPU" else "cpu"


def output_dtypes(config: dict) -> dict:
    """Output dtypes, read once from the config, so answers always match what the config declares."""
    return {spec["name"]: pb_utils.triton_string_to_numpy(spec["data_type"]) for spec in config["output"]}


def request_deadline(request):
    """The request's ``deadline`` parameter (Unix ms), or None."""
    try:
        return json.loads(request.parameters() or "{}").get(DEADLINE_PARAMETER)
    except (AttributeError, ValueError):
        return None


def read_inputs(request, names: list[str]) -> dict[str, np.ndarray]:
    """The request's inputs that were sent (optional ones may be absent), as numpy arrays."""
    tensors = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            tensors[name] = tensor.as_numpy()
    return tensors


def respond(outcomes: list, dtypes: dict) -> list:
    """One InferenceResponse per outcome: its tensors, or its error with the error's Triton code."""
    responses = []
    for outcome in outcomes:
        if isinstance(outcome, dict):
            tensors = [pb_utils.Tensor(n, a.astype(dtypes[n])) for n, a in outcome.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        else:
            code = getattr(pb_utils.TritonError, outcome.triton_code)
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(outcome.message, code)))
    return responses
