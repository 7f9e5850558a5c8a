"""Benchmark the served models against the bare pipeline: in-process limit, TorchServe, Triton, naive baselines.

    maas bench serving [--models sentiment,digits] [--duration 6] [--concurrency 1,2,4,8,16,32]
                                          [--out reports/] [--serving [torchserve.|triton.]KEY=VALUE] [--no-naive]

In one run on this machine:

1. the in-process limit: each model's pipeline loaded here, ``handle_tensors`` called with 1, 2, 4 ... 32 one-item
   requests per call (what a server batch is), before the servers start and again after they stop; the better of
   the two passes is the limit (one pass can be slowed by anything else the machine runs);
2. each artifact built twice into a temporary directory: batched (its manifest's serving settings, plus any
   ``--serving`` override: ``max_batch_delay_ms=2`` for both servers, ``triton.max_batch_delay_ms=0`` for one) and
   naive, ``<name>_naive``, one request per forward pass (``max_batch_size`` 1);
3. ONE TorchServe and ONE tritonserver on free loopback ports serving all of them, TorchServe warmed up first;
4. per model, server/protocol (TorchServe REST, Triton HTTP, Triton gRPC; batched and naive) and concurrency: a
   closed loop of async clients (``scripts.benchmarking.loadgen``), one item per request, a warm-up, then
   ``--duration`` seconds;
   the servers' own metrics are read before and after each point (batch size, queue time, time per stage);
5. ``benchmark.json``, ``benchmark.md`` (summary, targets with PASS/FAIL, per-point tables, where time goes) and
   ``benchmark.png`` (throughput against concurrency) written to ``--out``.

The servers are stopped on every exit path. The client shares the machine with the servers: compare the ratios
measured within one run, not absolute figures across machines or runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import re
import signal
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import read_manifest
from handlers.tasks import load_pipeline
from scripts import ARTIFACTS_DIR, REPO_ROOT
from scripts.benchmarking.loadgen import TorchServeClient, TritonClient, Workload, closed_loop, send_count
from scripts.packaging.build import build, for_server
from scripts.serving.samples import digit_png, triton_image_input, triton_text_input
from scripts.serving.servers import bearer, free_port, start_torchserve, stop_process
from scripts.serving.triton_server import TritonPorts, start_triton

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
CONCURRENCY = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Series:
    """One line of the plot: a server, a protocol, and whether the model is the naive (unbatched) build."""

    key: str
    label: str
    server: str  # "torchserve" or "triton"
    protocol: str  # "rest", "http" or "grpc"
    naive: bool = False


SERIES = [
    Series("torchserve_rest", "TorchServe REST", "torchserve", "rest"),
    Series("triton_http", "Triton HTTP", "triton", "http"),
    Series("triton_grpc", "Triton gRPC", "triton", "grpc"),
    Series("torchserve_rest_naive", "TorchServe REST naive", "torchserve", "rest", naive=True),
    Series("triton_http_naive", "Triton HTTP naive", "triton", "http", naive=True),
    Series("triton_grpc_naive", "Triton gRPC naive", "triton", "grpc", naive=True),
]
SERIES_BY_KEY = {s.key: s for s in SERIES}

# The targets. Saturation: served / in-process throughput at the same batch size, text model only.
SATURATION_GOAL = {"triton": 0.9, "torchserve": 0.8}
LATENCY_GOAL_MS = {"triton": 1.0, "torchserve": 3.0}
NAIVE_GOAL, NAIVE_CONCURRENCY = 3.0, 16
SATURATION_TASKS = {"text_classification"}


# ---- workloads -------------------------------------------------------------------------------------------
@dataclass
class ModelUnderTest:
    name: str
    task: str
    artifact: Path
    workload: Workload
    pipeline_inputs: Callable[[int], dict]  # item index -> one Triton-style request for handle_tensors
    description: str


def text_model(name: str, artifact: Path) -> ModelUnderTest:
    from scripts.training.text_data import sentiment_split

    _, (sentences, _) = sentiment_split()
    tokens = [len(ids) for ids in load_tokenizer(artifact)(sentences)["input_ids"]]
    workload = Workload(
        [json.dumps({"text": s}).encode() for s in sentences],
        "application/json",
        lambda module, i: [triton_text_input(module, [sentences[i]])],
    )
    return ModelUnderTest(
        name, "text_classification", artifact, workload,
        lambda i: {"TEXT": np.array([[sentences[i % len(sentences)].encode()]], dtype=np.object_)},
        f"{len(sentences)} held-out sentences, {int(np.median(tokens))} tokens median, {max(tokens)} max",
    )  # fmt: skip


def load_tokenizer(artifact: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifact, local_files_only=True)


def image_model(name: str, artifact: Path) -> ModelUnderTest:
    from scripts.training.train_digits import digits_split

    _, x_test, _, _ = digits_split()
    pngs = [digit_png(x) for x in x_test]
    workload = Workload(pngs, "image/png", lambda module, i: [triton_image_input(module, [pngs[i]])])
    return ModelUnderTest(
        name, "image_classification", artifact, workload,
        lambda i: {"IMAGE": np.array([[pngs[i % len(pngs)]]], dtype=np.object_)},
        f"{len(pngs)} held-out digits as {len(pngs[0])}-byte 32x32 PNGs",
    )  # fmt: skip


WORKLOADS = {"text_classification": text_model, "image_classification": image_model}


def model_under_test(name: str) -> ModelUnderTest:
    artifact = ARTIFACTS_DIR / name
    task = read_manifest(artifact).task
    if task not in WORKLOADS:
        raise SystemExit(f"{name}: no benchmark workload for task {task!r} (known: {sorted(WORKLOADS)})")
    return WORKLOADS[task](name, artifact)


# ---- in-process limit ------------------------------------------------------------------------------------
def measure_in_process(model: ModelUnderTest, batch_sizes=BATCH_SIZES, seconds: float = 2.0) -> list[dict]:
    """``handle_tensors`` on ``b`` one-item requests per call, for ``seconds`` per batch size after a warm-up."""
    pipeline = load_pipeline(model.artifact)
    items = itertools.count()

    def calls(b: int, seconds: float) -> list[float]:
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < seconds:
            inputs = [model.pipeline_inputs(next(items)) for _ in range(b)]
            t = time.perf_counter()
            outcomes = pipeline.handle_tensors(inputs)
            times.append(time.perf_counter() - t)
            assert all(isinstance(o, dict) for o in outcomes), outcomes
        return times

    points = []
    for b in batch_sizes:
        calls(b, seconds / 4)  # warm this shape, the allocator and the thread pool
        times = calls(b, seconds)
        total = sum(times)
        points.append({
            "batch_size": b,
            "items_per_s": b * len(times) / total,
            "ms_per_batch_p50": float(np.median(times) * 1e3),
            "ms_per_batch_mean": total / len(times) * 1e3,
            "calls": len(times),
        })  # fmt: skip
        print(f"  in-process {model.name} b={b:<2} {points[-1]['items_per_s']:9.1f} items/s "
              f"{points[-1]['ms_per_batch_p50']:8.2f} ms/batch (p50)", flush=True)  # fmt: skip
    return points


def best_of(passes: list[list[dict]]) -> list[dict]:
    """Per batch size, the best of the in-process passes: most items/s, least ms per batch."""
    best = []
    for points in zip(*passes, strict=True):
        best.append({
            "batch_size": points[0]["batch_size"],
            "items_per_s": max(p["items_per_s"] for p in points),
            "ms_per_batch_p50": min(p["ms_per_batch_p50"] for p in points),
            "ms_per_batch_mean": min(p["ms_per_batch_mean"] for p in points),
            "passes_items_per_s": [p["items_per_s"] for p in points],
        })  # fmt: skip
    return best


def in_process_ms_at(in_process: list[dict], batch: float) -> float:
    """In-process milliseconds per call of ``batch`` one-item requests (from the interpolated items/s)."""
    return batch / in_process_at(in_process, batch) * 1e3


def in_process_at(in_process: list[dict], batch: float) -> float:
    """In-process items/s at a (fractional) batch size: linear in log2(batch size), clamped at the ends."""
    sizes = np.log2([p["batch_size"] for p in in_process])
    return float(np.interp(math.log2(max(batch, 1.0)), sizes, [p["items_per_s"] for p in in_process]))


# ---- server metrics --------------------------------------------------------------------------------------
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


def _ratio(a: float | None, b: float | None) -> float | None:
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
        "avg_batch": _ratio(rows, batches),
        "queue_ms_per_request": _ratio(queue_us, (requests or 0) * 1e3),
        "server_ms_per_request": _ratio(server_us, (requests or 0) * 1e3),
        "handler_ms_per_batch": _ratio(handler_ms, batches),
        **{f"{s}_ms_per_row": _ratio(v, rows) for s, v in stages.items()},
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


# ---- servers ---------------------------------------------------------------------------------------------
class Servers:
    """One TorchServe and one tritonserver serving every built model, on free loopback ports; ``stop`` always."""

    def __init__(self, root: Path):
        self.root = root
        self.torchserve = self.triton = None
        self.triton_ports = TritonPorts(free_port(), free_port(), free_port())

    def start(self) -> None:
        started = time.perf_counter()
        self.torchserve = start_torchserve(self.root / "model_store", self.root / "torchserve")
        print(f"TorchServe ready on {self.torchserve.inference_url} in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        self.triton = start_triton(self.root / "model_repository", self.triton_ports, self.root / "triton.log", 300)
        print(f"tritonserver ready on HTTP {self.triton_ports.http} / gRPC {self.triton_ports.grpc} "
              f"in {time.perf_counter() - started:.0f}s")  # fmt: skip

    def stop(self) -> None:
        if self.torchserve is not None:
            stop_process(self.torchserve.process)
            self.torchserve = None
        if self.triton is not None:
            stop_process(self.triton.process, group=False)
            self.triton = None

    def client(self, series: Series, model: str, workload: Workload, concurrency: int):
        if series.server == "torchserve":
            ts = self.torchserve
            return TorchServeClient(ts.inference_url, ts.inference_key, model, workload, concurrency)
        port = self.triton_ports.http if series.protocol == "http" else self.triton_ports.grpc
        return TritonClient(series.protocol, f"127.0.0.1:{port}", model, workload, concurrency)

    def counters(self, series: Series, model: str) -> dict[str, float]:
        if series.server == "torchserve":
            return model_counters(scrape(f"{self.torchserve.metrics_url}/metrics"), model, TORCHSERVE_COUNTERS)
        return model_counters(scrape(f"http://127.0.0.1:{self.triton_ports.metrics}/metrics"), model, TRITON_COUNTERS)

    def wait_torchserve_model(self, model: str, workload: Workload, timeout: float = 300) -> None:
        """TorchServe answers /ping before every worker has loaded its model: wait for a 200 from this one."""
        url, key = f"{self.torchserve.inference_url}/predictions/{model}", self.torchserve.inference_key
        headers = {**bearer(key), "Content-Type": workload.content_type}
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.post(url, content=workload.rest_bodies[0], headers=headers, timeout=60).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"TorchServe model {model} not answering after {timeout:.0f}s")
            time.sleep(0.5)


async def _run_point(make_client, concurrency, duration, warmup, offset):
    client = make_client()
    try:
        return await closed_loop(client, concurrency, duration, warmup, offset)
    finally:
        await client.close()


async def _warm(make_client, requests, concurrency):
    client = make_client()
    try:
        return await send_count(client, requests, concurrency)
    finally:
        await client.close()


def served_name(model: str, series: Series) -> str:
    return f"{model}_naive" if series.naive else model


# ---- the run ---------------------------------------------------------------------------------------------
def run_meta(module: str, args) -> dict:
    """What every report records about its run: the command, when, the machine, and the load settings."""
    return {
        "command": " ".join([f".venv/bin/python -m {module}", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "torchserve_warmup_requests": args.torchserve_warmup,
    }


def run(args) -> dict:
    run_started = time.perf_counter()
    models = [model_under_test(name) for name in args.models]
    series = [s for s in SERIES if args.naive or not s.naive]
    total_points = len(models) * len(series) * len(args.concurrency)
    result = {
        "meta": {
            **run_meta("scripts.benchmarking.benchmark", args),
            "concurrency": list(args.concurrency),
            "serving_overrides": args.serving,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "models": {},
    }
    print(f"in-process limit ({', '.join(m.name for m in models)}), before the servers start")
    for model in models:
        manifest = read_manifest(model.artifact)
        result["models"][model.name] = {
            "task": model.task,
            "requests": model.description,
            "serving": {
                server: {k: v for k, v in for_server(manifest, server, o).serving.items() if k not in SERVERS}
                for server, o in per_server(args.serving).items()
            },
            "in_process_passes": [measure_in_process(model, seconds=args.in_process_seconds)],
            "series": {},
        }

    with tempfile.TemporaryDirectory(prefix="maas-benchmark-") as tmp:
        root = Path(tmp)
        for model in models:
            for server, serving in per_server(args.serving).items():
                where = {"model_store": root / "model_store", "triton_repository": None}
                if server == "triton":
                    where = {"model_store": None, "triton_repository": root / "model_repository"}
                build(model.artifact, **where, serving=serving)
                if args.naive:  # the same model, one request per forward pass
                    build(model.artifact, **where, name=f"{model.name}_naive", serving={**serving, "max_batch_size": 1})
            result["models"][model.name]["served"] = {
                name: served_settings(root, name) for name in [model.name] + [f"{model.name}_naive"] * args.naive
            }
        servers = Servers(root)
        try:
            servers.start()
            warm_torchserve(servers, models, series, args.torchserve_warmup)
            point_seconds, done = [], 0
            for model in models:
                for s in series:
                    name, deltas, points = served_name(model.name, s), [], []
                    for c in args.concurrency:
                        started = time.perf_counter()
                        before = servers.counters(s, name)
                        make_client = lambda s=s, n=name, w=model.workload, c=c: servers.client(s, n, w, c)  # noqa: E731
                        point = asyncio.run(_run_point(make_client, c, args.duration, args.warmup, done * 64))
                        time.sleep(0.3)  # TorchServe publishes the handler's metrics a moment after the answers
                        delta = counter_delta(before, servers.counters(s, name))
                        point.update(concurrency=c, server=breakdown(s.server, delta), counters=delta)
                        points.append(point)
                        deltas.append(delta)
                        done += 1
                        point_seconds.append(time.perf_counter() - started)
                        eta = (total_points - done) * float(np.mean(point_seconds))
                        print(f"[{done:>3}/{total_points}] {model.name:<10} {s.label:<22} c={c:<3}"
                              f"{point['throughput']:9.1f} req/s  p50 {point['p50_ms'] or 0:8.2f} ms  "
                              f"p99 {point['p99_ms'] or 0:8.2f} ms  batch {point['server']['avg_batch'] or 0:5.1f}  "
                              f"errors {point['errors']}  ETA {eta / 60:4.1f} min", flush=True)  # fmt: skip
                    result["models"][model.name]["series"][s.key] = {
                        "label": s.label, "server": s.server, "protocol": s.protocol, "naive": s.naive,
                        "served_as": name, "points": points,
                        "breakdown": breakdown(s.server, sum_deltas(deltas)),
                    }  # fmt: skip
        finally:
            servers.stop()
    print("in-process limit again, the servers stopped")
    for model in models:
        data = result["models"][model.name]
        data["in_process_passes"].append(measure_in_process(model, seconds=args.in_process_seconds))
        data["in_process"] = best_of(data["in_process_passes"])
    result["meta"]["wall_s"] = round(time.perf_counter() - run_started, 1)
    result["targets"] = evaluate_targets(result)
    return result


def warm_torchserve(servers: Servers, models, series, requests: int) -> None:
    """TorchServe's JVM frontend is ~3x slower for its first ~1,000 requests: spread them over its models."""
    names = [(m, served_name(m.name, s)) for m in models for s in series if s.server == "torchserve"]
    if not names:
        return
    started = time.perf_counter()
    failed = 0
    ts = SERIES_BY_KEY["torchserve_rest"]
    for model, name in names:
        servers.wait_torchserve_model(name, model.workload)
        make_client = lambda model=model, name=name: servers.client(ts, name, model.workload, 16)  # noqa: E731
        failed += asyncio.run(_warm(make_client, max(requests // len(names), 1), 16))
    print(f"TorchServe warmed up with {requests} requests over {len(names)} models in "
          f"{time.perf_counter() - started:.0f}s ({failed} failed)")  # fmt: skip


# ---- targets ---------------------------------------------------------------------------------------------
def _point(series: dict, concurrency: int) -> dict | None:
    return next((p for p in series["points"] if p["concurrency"] == concurrency), None)


def evaluate_targets(result: dict) -> list[dict]:
    """Each target of the issue against its measured value, per model and server/protocol."""
    targets = []
    for model, data in result["models"].items():
        in_process, all_series = data["in_process"], data["series"]
        b1 = next((p for p in in_process if p["batch_size"] == 1), None)
        for key, series in all_series.items():
            if series["naive"]:
                continue
            server = series["server"]
            peak = max(series["points"], key=lambda p: p["throughput"])
            batch = peak["server"].get("avg_batch") or peak["concurrency"]
            reference = in_process_at(in_process, batch)
            applies = data["task"] in SATURATION_TASKS
            targets.append({
                "model": model, "series": key, "target": "saturation",
                "measured": peak["throughput"] / reference, "goal": SATURATION_GOAL[server], "higher_is_better": True,
                "applies": applies,
                "detail": f"{peak['throughput']:.1f} req/s at c={peak['concurrency']}, avg batch {batch:.1f}; "
                f"in-process {reference:.1f} items/s at that batch",
            })  # fmt: skip
            c1 = _point(series, 1)
            if c1 and b1 and c1["p50_ms"] is not None:
                targets.append({
                    "model": model, "series": key, "target": "latency_c1",
                    "measured": c1["p50_ms"] - b1["ms_per_batch_p50"], "goal": LATENCY_GOAL_MS[server],
                    "higher_is_better": False, "applies": True,
                    "detail": f"p50 {c1['p50_ms']:.2f} ms - in-process b1 {b1['ms_per_batch_p50']:.2f} ms",
                })  # fmt: skip
            naive = all_series.get(f"{key}_naive")
            batched_c, naive_c = _point(series, NAIVE_CONCURRENCY), naive and _point(naive, NAIVE_CONCURRENCY)
            if batched_c and naive_c:
                targets.append({
                    "model": model, "series": key, "target": "vs_naive_c16",
                    "measured": _ratio(batched_c["throughput"], naive_c["throughput"]) or 0.0, "goal": NAIVE_GOAL,
                    "higher_is_better": True, "applies": True,
                    "detail": f"{batched_c['throughput']:.1f} vs naive {naive_c['throughput']:.1f} req/s at "
                    f"c={NAIVE_CONCURRENCY}",
                })  # fmt: skip
    for target in targets:
        measured, goal = target["measured"], target["goal"]
        met = measured >= goal if target["higher_is_better"] else measured <= goal
        target["verdict"] = ("PASS" if met else "FAIL") if target["applies"] else "n/a"
    return targets


# ---- reports ---------------------------------------------------------------------------------------------
TARGET_TEXT = {
    "saturation": ("served / in-process throughput at the same batch size, at saturation", "x", ">="),
    "latency_c1": ("p50 at c=1 minus in-process batch-1 latency", " ms", "<="),
    "vs_naive_c16": (f"throughput at c={NAIVE_CONCURRENCY} / naive baseline", "x", ">="),
}


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary_rows(result: dict) -> list[list[str]]:
    """Per model and batched server/protocol: latency at c=1, peak throughput, efficiency, gain over naive."""
    rows = []
    targets = {(t["model"], t["series"], t["target"]): t for t in result.get("targets", [])}
    for model, data in result["models"].items():
        b1 = next((p for p in data["in_process"] if p["batch_size"] == 1), {})
        for key, series in data["series"].items():
            if series["naive"]:
                continue
            peak = max(series["points"], key=lambda p: p["throughput"])
            c1, c16 = _point(series, 1) or {}, _point(series, NAIVE_CONCURRENCY) or {}
            naive = _point(data["series"].get(f"{key}_naive", {"points": []}), NAIVE_CONCURRENCY) or {}
            sat, gain = targets.get((model, key, "saturation")), targets.get((model, key, "vs_naive_c16"))
            rows.append([
                model, series["label"], f"{_f(c1.get('p50_ms'), 2)} ({_f(b1.get('ms_per_batch_p50'), 2)})",
                f"{_f(peak['throughput'])} (c={peak['concurrency']})", _f(peak["server"].get("avg_batch")),
                _f(sat and sat["measured"], 2), _f(c16.get("throughput")), _f(naive.get("throughput")),
                _f(gain and gain["measured"], 1),
            ])  # fmt: skip
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


SUMMARY_HEADER = [
    "model", "server", "p50 c=1 ms (in-process b1)", "peak req/s", "avg batch at peak", "served / in-process",
    f"req/s c={NAIVE_CONCURRENCY}", f"naive c={NAIVE_CONCURRENCY}", "x naive",
]  # fmt: skip


def summary_table(result: dict) -> str:
    return table(SUMMARY_HEADER, summary_rows(result))


def targets_table(result: dict) -> str:
    rows = []
    for t in result["targets"]:
        what, unit, op = TARGET_TEXT[t["target"]]
        label = result["models"][t["model"]]["series"][t["series"]]["label"]
        verdict = f"**{t['verdict']}**" if t["verdict"] != "n/a" else "n/a (text-model target)"
        rows.append([t["model"], label, what, f"{op} {t['goal']:g}{unit}", f"{t['measured']:.2f}{unit}", verdict,
                     t["detail"]])  # fmt: skip
    return table(["model", "server", "target", "goal", "measured", "verdict", "how"], rows)


def _load(meta: dict) -> str:
    return " / ".join(f"{x:.2f}" for x in meta.get("load_average_at_start", [])) or "?"


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    overrides = ", ".join(f"{k}={v}" for k, v in meta["serving_overrides"].items()) or "none"
    out = [
        "# Benchmark: in-process limit, TorchServe and Triton, batched and naive",
        "",
        f"`{meta['command']}` - {meta['date']}, {meta.get('wall_s', '?')} s wall. {meta['machine']}; client and "
        f"servers share the machine (load average at start: {_load(meta)}). Closed loop, one item per request, "
        f"{meta['warmup_s']} s warm-up + {meta['duration_s']} s per point (TorchServe warmed with "
        f"{meta['torchserve_warmup_requests']} requests first). Serving overrides: {overrides}. Naive = the same "
        "model built with `max_batch_size` 1 (one request per forward pass).",
        "",
        "## Summary",
        "",
        summary_table(result),
        "",
        "## Targets",
        "",
        targets_table(result),
        "",
    ]
    errors = sum(p["errors"] for d in result["models"].values() for s in d["series"].values() for p in s["points"])
    out += [f"Errors (non-200 answers, all points, warm-ups included): **{errors}**.", ""]
    out += ["## Where time goes (the servers' own metrics)", "", breakdown_table(result), ""]
    for model, data in result["models"].items():
        if "served" in data:
            settings = "Served with " + describe_served(data["served"])
        else:
            settings = "Serving settings (batched builds) - " + "; ".join(
                f"{server}: " + ", ".join(f"{k}={v}" for k, v in serving.items())
                for server, serving in data["serving"].items()
            )
        out += [f"## {model}", "", f"Requests: {data['requests']}. {settings}.", ""]
        out += ["In-process (`handle_tensors`, b one-item requests per call; the limit is the better of a pass "
                "before the servers start and one after they stop):", ""]  # fmt: skip
        out.append(table(["batch size", "items/s", "ms per batch (p50)", "items/s per pass"],
                         [[p["batch_size"], _f(p["items_per_s"]), _f(p["ms_per_batch_p50"], 2),
                           " / ".join(_f(x) for x in p.get("passes_items_per_s", []))]
                          for p in data["in_process"]]))  # fmt: skip
        out += ["", "Served:", ""]
        rows = [
            [series["label"], p["concurrency"], _f(p["throughput"]), _f(p["p50_ms"], 2), _f(p["p90_ms"], 2),
             _f(p["p99_ms"], 2), p["errors"], _f(p["server"].get("avg_batch"))]
            for series in data["series"].values() for p in series["points"]
        ]  # fmt: skip
        header = ["server", "concurrency", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "avg batch"]
        out += [table(header, rows), ""]
    out += ["![throughput against concurrency](benchmark.png)", ""]
    return "\n".join(out)


BREAKDOWN_AT = (1, NAIVE_CONCURRENCY)


def breakdown_table(result: dict) -> str:
    """The servers' own account, per series at c=1 and c=16 (each point's counter deltas, warm-up included)."""
    rows = []
    for model, data in result["models"].items():
        for series in data["series"].values():
            for point in [p for p in series["points"] if p["concurrency"] in BREAKDOWN_AT]:
                b = point["server"]
                batch, handler = b.get("avg_batch"), b.get("handler_ms_per_batch")
                slowdown = handler / in_process_ms_at(data["in_process"], batch) if batch and handler else None
                rows.append([
                    model, series["label"], point["concurrency"], _f(batch), _f(b.get("queue_ms_per_request"), 2),
                    _f(b.get("server_ms_per_request"), 2), _f(handler, 2), _f(slowdown, 2),
                    _f(b.get("preprocess_ms_per_row"), 3), _f(b.get("forward_ms_per_row"), 3),
                    _f(b.get("postprocess_ms_per_row"), 3),
                ])  # fmt: skip
    header = ["model", "server", "concurrency", "rows per execution", "queue ms/request", "server ms/request",
              "handler ms/batch", "handler / in-process", "preprocess ms/row", "forward ms/row",
              "postprocess ms/row"]  # fmt: skip
    note = (
        "\n\nqueue: TorchServe `ts_queue_latency_microseconds`, Triton `nv_inference_queue_duration_us`; server: "
        "TorchServe `ts_inference_latency_microseconds` (frontend, queue included), Triton "
        "`nv_inference_compute_infer_duration_us` (each request of a batch is charged the whole execution); handler "
        "and stages: the pipeline's own counters (`MaasPreprocessMs`... / `maas_stage_duration_ms_total`) over "
        "`MaasBatches` / `nv_inference_exec_count` and `MaasRows` / `maas_rows_total`; handler / in-process: the "
        "handler's time per batch over the in-process pipeline's at the same batch size (above 1: the model ran "
        "slower inside the server, i.e. it shared the cores with the frontend, the client or anything else). Every "
        "point's figures, and each whole series', are in benchmark.json."
    )
    return table(header, rows) + note


def plot(result: dict, path: Path) -> None:
    """One subplot per model: throughput against concurrency, one line per server, in-process best as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), dpi=80, squeeze=False)
    for ax, model in zip(axes[0], names, strict=True):
        data = result["models"][model]
        for key, series in data["series"].items():
            xs = [p["concurrency"] for p in series["points"]]
            ys = [p["throughput"] for p in series["points"]]
            style, color = "--" if series["naive"] else "-", _COLORS[key.removesuffix("_naive")]
            ax.plot(xs, ys, style, marker="o", markersize=3, label=series["label"], color=color)
        best = max(data["in_process"], key=lambda p: p["items_per_s"])
        ax.axhline(best["items_per_s"], color="black", linestyle=":",
                   label=f"in-process best (b={best['batch_size']})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["meta"]["concurrency"], [str(c) for c in result["meta"]["concurrency"]])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("requests/s (one item each)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


_COLORS = {"torchserve_rest": "tab:orange", "triton_http": "tab:blue", "triton_grpc": "tab:green"}


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "benchmark.md").write_text(render_markdown(result))
    plot(result, out / "benchmark.png")
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")


# ---- command line ----------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sentiment,digits", type=lambda s: [x for x in s.split(",") if x],
                        help="artifact names under artifacts/ (default: sentiment,digits)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per point (default 6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each point (default 1)")
    parser.add_argument("--concurrency", type=_ints, default=list(CONCURRENCY), help="default 1,2,4,8,16,32")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--serving", action="append", default=[], metavar="[SERVER.]KEY=VALUE",
                        help="override a serving setting of the batched builds, for both servers "
                        "(max_batch_delay_ms=2) or for one (triton.max_batch_delay_ms=0)")  # fmt: skip
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive baselines")
    parser.add_argument("--torchserve-warmup", type=int, default=1000, help="requests before measuring (1000)")
    parser.add_argument("--in-process-seconds", type=float, default=2.0, help="seconds per batch size (default 2)")
    args = parser.parse_args(argv)
    args.serving = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.serving)}
    try:
        per_server(args.serving)
    except ValueError as exc:
        parser.error(str(exc))
    return args


SERVERS = ("torchserve", "triton")


def per_server(overrides: dict) -> dict[str, dict]:
    """Serving overrides per server: ``KEY`` applies to both, ``torchserve.KEY`` / ``triton.KEY`` to one."""
    split: dict[str, dict] = {server: {} for server in SERVERS}
    for key, value in overrides.items():
        server, _, name = key.rpartition(".")
        if server and server not in SERVERS:
            raise ValueError(f"--serving {key}: the prefix must be one of {', '.join(SERVERS)}")
        for target in [server] if server else SERVERS:
            split[target][name] = value
    return split


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on `kill` too, as on Ctrl-C
    result = run(args)
    write_reports(result, args.out)
    print(f"\n{summary_table(result)}\n\n{targets_table(result)}\n\nwall time {result['meta']['wall_s']:.0f} s")
    errors = sum(p["errors"] for d in result["models"].values() for s in d["series"].values() for p in s["points"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
