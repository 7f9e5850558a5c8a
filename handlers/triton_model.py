"""Triton Python-backend adapter: one ``execute`` call gets every request of a dynamic batch.

The pipeline stacks all their rows into one forward pass; this file only moves tensors and errors between
Triton's objects and the pipeline. ``triton_python_backend_utils`` exists only inside the server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import triton_python_backend_utils as pb_utils

from handlers.pipeline import BatchTimings
from handlers.tasks import load_pipeline

log = logging.getLogger(__name__)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        artifact_dir = Path(args["model_repository"]) / args["model_version"] / "artifact"
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.pipeline = load_pipeline(artifact_dir, device=device)
        self.input_names = [spec["name"] for spec in config["input"]]
        # Output dtypes are read once from the config, so answers always match what the config declares.
        self.output_dtypes = {
            spec["name"]: pb_utils.triton_string_to_numpy(spec["data_type"]) for spec in config["output"]
        }
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
        model = {"model": args["model_name"]}
        self.stage_metrics = {
            stage: self.stage_family.Metric(labels={**model, "stage": stage}) for stage in BatchTimings().stages()
        }
        self.rows_metric = self.rows_family.Metric(labels=model)

    def execute(self, requests: list) -> list:
        inputs = []
        for request in requests:
            tensors = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            inputs.append(tensors)
        outcomes = self.pipeline.handle_tensors(inputs)
        self.record_metrics()
        responses = []
        for outcome in outcomes:
            if isinstance(outcome, dict):
                tensors = [pb_utils.Tensor(n, a.astype(self.output_dtypes[n])) for n, a in outcome.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            else:
                code = getattr(pb_utils.TritonError, outcome.triton_code)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(outcome.message, code)))
        return responses

    def record_metrics(self) -> None:
        """Metrics never fail a batch: a fault here is logged, and the answers still go out."""
        try:
            timings = self.pipeline.last_timings
            for stage, ms in timings.stages().items():
                self.stage_metrics[stage].increment(ms)
            self.rows_metric.increment(timings.rows)
        except Exception:
            log.exception("could not record metrics")
