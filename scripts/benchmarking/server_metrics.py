"""The servers' own account of a benchmark point: Prometheus counters before and after, and what they say."""

from __future__ import annotations

import re
import urllib.request
import zipfile
from pathlib import Path

import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


MODEL_LABELS = ("model", "model_name", "ModelName")


TORCHSERVE_COUNTERS = (
    "ts_inference_requests_total", "ts_queue_latency_microseconds", "ts_inference_latency_microseconds",
    "MaasPreprocessMs", "MaasForwardMs", "MaasPostprocessMs", "MaasRows", "MaasBatches",
)  # fmt: skip


TRITON_COUNTERS = (
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "maas_rows_total", "maas_stage_duration_ms_total",
)  # fmt: skip


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: ``(name, labels, value)``."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#") or not (match := SAMPLE.match(line)):
            continue
        name, labels, value = match.groups()
        try:
            samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
        except ValueError:
            continue
    return samples


def model_counters(samples, model: str, names) -> dict[str, float]:
    """One model's counters, summed over the other labels; a ``stage`` label becomes a ``name:stage`` key."""
    counters: dict[str, float] = {}
    for name, labels, value in samples:
        if name not in names or model not in (labels.get(k) for k in MODEL_LABELS):
            continue
        key = f"{name}:{labels['stage']}" if "stage" in labels else name
        counters[key] = counters.get(key, 0.0) + value
    return counters


def scrape(url: str) -> list:
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse_prometheus(response.read().decode())


def counter_delta(before: dict, after: dict) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def breakdown(server: str, delta: dict[str, float]) -> dict:
    """Where time goes, from counter deltas: rows per execution, queue and server time per request, ms per row."""
    get = delta.get
    if server == "torchserve":
        requests, rows, batches = get("ts_inference_requests_total"), get("MaasRows"), get("MaasBatches")
        stages = {s: get(f"Maas{s.title()}Ms") for s in ("preprocess", "forward", "postprocess")}
        queue_us, server_us = get("ts_queue_latency_microseconds"), get("ts_inference_latency_microseconds")
    else:
        requests, rows = get("nv_inference_request_success"), get("maas_rows_total", get("nv_inference_count"))
        batches = get("nv_inference_exec_count")
        stages = {s: get(f"maas_stage_duration_ms_total:{s}") for s in ("preprocess", "forward", "postprocess")}
        queue_us, server_us = get("nv_inference_queue_duration_us"), get("nv_inference_compute_infer_duration_us")
    handler_ms = sum(v for v in stages.values() if v is not None) if any(stages.values()) else None
    return {
        "requests": requests,
        "rows": rows,
        "batches": batches,
        "avg_batch": ratio(rows, batches),
        "queue_ms_per_request": ratio(queue_us, (requests or 0) * 1e3),
        "server_ms_per_request": ratio(server_us, (requests or 0) * 1e3),
        "handler_ms_per_batch": ratio(handler_ms, batches),
        **{f"{s}_ms_per_row": ratio(v, rows) for s, v in stages.items()},
    }


def sum_deltas(deltas: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for delta in deltas:
        for k, v in delta.items():
            total[k] = total.get(k, 0.0) + v
    return total


def served_settings(root: Path, name: str) -> dict:
    """The batch settings each server was given, read back from the built ``.mar`` and ``config.pbtxt``."""
    with zipfile.ZipFile(root / "model_store" / f"{name}.mar") as mar:
        ts = yaml.safe_load(mar.read(next(n for n in mar.namelist() if n.endswith("model-config.yaml"))))
    config = text_format.Parse((root / "model_repository" / name / "config.pbtxt").read_text(), mc.ModelConfig())
    triton = {"max_batch_size": config.max_batch_size, "dynamic_batching": config.HasField("dynamic_batching")}
    if triton["dynamic_batching"]:
        triton["max_queue_delay_us"] = config.dynamic_batching.max_queue_delay_microseconds
    return {
        "torchserve": {"batchSize": ts.get("batchSize"), "maxBatchDelay_ms": ts.get("maxBatchDelay")},
        "triton": triton,
    }


def describe_served(served: dict) -> str:
    """``served_settings`` in words, e.g. for the report's model sections."""
    parts = []
    for name, settings in served.items():
        ts, triton = settings["torchserve"], settings["triton"]
        delay = f"max_queue_delay {triton['max_queue_delay_us']} us" if triton["dynamic_batching"] else "none"
        parts.append(f"`{name}`: TorchServe batchSize {ts['batchSize']}, maxBatchDelay {ts['maxBatchDelay_ms']} ms; "
                     f"Triton max_batch_size {triton['max_batch_size']}, dynamic batching {delay}")  # fmt: skip
    return "; ".join(parts)
