"""The servers a benchmark measures: one TorchServe and one tritonserver on free loopback ports, and their clients."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import tritonclient.http as triton_http

from handlers.settings import SERVERS
from scripts.benchmarking.grpc_load import GrpcLoad
from scripts.benchmarking.loadgen import TorchServeClient, TritonClient, Workload, closed_loop, send_count
from scripts.benchmarking.server_metrics import (
    TORCHSERVE_COUNTERS,
    TRITON_COUNTERS,
    breakdown,
    counter_delta,
    model_counters,
    scrape,
)  # fmt: skip
from scripts.benchmarking.wrk_load import HttpTarget, tree_cpu_seconds, wrk_point
from scripts.packaging.build import build
from scripts.serving.keys import bearer
from scripts.serving.processes import free_ports, stop_process
from scripts.serving.servers import start_torchserve
from scripts.serving.triton_server import TritonPorts, start_triton


@dataclass(frozen=True)
class Series:
    """One line of the plot: a server, a protocol, and which build of the model: as configured (``""``), ``naive``
    (one request per forward pass) or ``ceiling`` (``ceiling.py``: a constant answer, the server's own limit)."""

    key: str
    label: str
    server: str  # "torchserve" or "triton"
    protocol: str  # "rest", "http" or "grpc"
    variant: str = ""

    @property
    def naive(self) -> bool:
        return self.variant == "naive"


SERIES = [
    Series("torchserve_rest", "TorchServe REST", "torchserve", "rest"),
    Series("triton_http", "Triton HTTP", "triton", "http"),
    Series("triton_grpc", "Triton gRPC", "triton", "grpc"),
    Series("torchserve_rest_naive", "TorchServe REST naive", "torchserve", "rest", "naive"),
    Series("triton_http_naive", "Triton HTTP naive", "triton", "http", "naive"),
    Series("triton_grpc_naive", "Triton gRPC naive", "triton", "grpc", "naive"),
    Series("torchserve_rest_ceiling", "TorchServe REST ceiling", "torchserve", "rest", "ceiling"),
    Series("triton_http_ceiling", "Triton HTTP ceiling", "triton", "http", "ceiling"),
    Series("triton_grpc_ceiling", "Triton gRPC ceiling", "triton", "grpc", "ceiling"),
]


SERIES_BY_KEY = {s.key: s for s in SERIES}


class Servers:
    """One TorchServe and one tritonserver serving every built model, on free loopback ports; ``stop`` always."""

    def __init__(self, root: Path):
        self.root = root
        self.torchserve = self.triton = self.grpc = None
        self.triton_ports = TritonPorts(*free_ports(3))

    def start(self) -> None:
        started = time.perf_counter()
        self.torchserve = start_torchserve(self.root / "model_store", self.root / "torchserve")
        print(f"TorchServe ready on {self.torchserve.inference_url} in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        self.triton = start_triton(self.root / "model_repository", self.triton_ports, self.root / "triton.log", 300)
        print(f"tritonserver ready on HTTP {self.triton_ports.http} / gRPC {self.triton_ports.grpc} "
              f"in {time.perf_counter() - started:.0f}s")  # fmt: skip

    def stop(self) -> None:
        if self.grpc is not None:
            self.grpc.close()
            self.grpc = None
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

    def pids(self, series: Series) -> list[int]:
        """The server's top process (TorchServe's frontend; the Triton supervisor): its tree holds the workers."""
        return [(self.torchserve if series.server == "torchserve" else self.triton).process.pid]

    def measure(self, series: Series, model: str, under_test, concurrency: int, args, offset: int) -> dict:
        """One closed-loop point on the served ``model``, with the server's own counters and the cores each side
        used. ``args.client``: ``wrk`` (HTTP from wrk, gRPC from ``args.grpc_processes`` Python processes), or
        ``python`` (loadgen's async clients in this process, for every protocol)."""
        before, workload = self.counters(series, model), under_test.workload
        if args.client == "wrk" and series.protocol in ("rest", "http"):
            target = http_target(series, model, workload, self.torchserve, self.triton_ports.http)
            point = wrk_point(target, concurrency, args.duration, args.warmup, offset, self.pids(series))
        elif args.client == "wrk":
            self.grpc = self.grpc or GrpcLoad(args.grpc_processes)
            point = self.grpc.point(f"127.0.0.1:{self.triton_ports.grpc}", under_test.artifact, model, concurrency,
                                    args.duration, args.warmup, offset, self.pids(series))  # fmt: skip
        else:
            make_client = lambda: self.client(series, model, workload, concurrency)  # noqa: E731
            client_before, servers_before = (
                resource.getrusage(resource.RUSAGE_SELF),
                tree_cpu_seconds(self.pids(series)),
            )
            started = time.perf_counter()
            point = asyncio.run(run_point(make_client, concurrency, args.duration, args.warmup, offset))
            wall, client_after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = sum(getattr(client_after, f) - getattr(client_before, f) for f in ("ru_utime", "ru_stime"))
            servers_cpu = tree_cpu_seconds(self.pids(series)) - servers_before
            point.update(client="python", client_cores=client_cpu / wall, server_cores=servers_cpu / wall)
        time.sleep(0.3)  # TorchServe publishes the handler's metrics a moment after the answers
        delta = counter_delta(before, self.counters(series, model))
        point.update(concurrency=concurrency, server=breakdown(series.server, delta), counters=delta)
        return point


def http_target(series: Series, model: str, workload: Workload, torchserve, triton_http_port: int) -> HttpTarget:
    """What wrk sends: TorchServe's REST body, or Triton's v2 body exactly as tritonclient.http builds it."""
    if series.server == "torchserve":
        headers = {**bearer(torchserve.inference_key), "Content-Type": workload.content_type}
        url = f"{torchserve.inference_url}/predictions/{model}"
        return HttpTarget(url, headers, [(body, None) for body in workload.rest_bodies])
    bodies = [triton_http.InferenceServerClient.generate_request_body(inputs)
              for inputs in workload.triton_inputs(triton_http)]  # fmt: skip
    content_type = "application/octet-stream" if bodies[0][1] is not None else "application/json"
    url = f"http://127.0.0.1:{triton_http_port}/v2/models/{model}/infer"
    return HttpTarget(url, {"Content-Type": content_type}, bodies)


async def run_point(make_client, concurrency, duration, warmup, offset):
    client = make_client()
    try:
        return await closed_loop(client, concurrency, duration, warmup, offset)
    finally:
        await client.close()


async def warm(make_client, requests, concurrency):
    client = make_client()
    try:
        return await send_count(client, requests, concurrency)
    finally:
        await client.close()


def served_name(model: str, series: Series) -> str:
    return f"{model}_{series.variant}" if series.variant else model


def add_client_argument(parser) -> None:
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk",
                        help="wrk (default): HTTP from wrk (C; installed from Debian's packages when missing), gRPC "
                        "from --grpc-processes Python processes; python: loadgen's async clients in one process, "
                        "which saturate first")  # fmt: skip
    parser.add_argument("--grpc-processes", type=int, default=2, help="gRPC client processes (default 2)")


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
        "http_client": args.client,
    }


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
        failed += asyncio.run(warm(make_client, max(requests // len(names), 1), 16))
    print(f"TorchServe warmed up with {requests} requests over {len(names)} models in "
          f"{time.perf_counter() - started:.0f}s ({failed} failed)")  # fmt: skip


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


def build_for_both(artifact: Path, root: Path, overrides: dict, **options) -> None:
    """Build ``artifact`` into ``root``'s model store and Triton repository, with ``per_server`` overrides."""
    for server, serving in per_server(overrides).items():
        where = {"model_store": root / "model_store", "triton_repository": None}
        if server == "triton":
            where = {"model_store": None, "triton_repository": root / "model_repository"}
        build(artifact, **where, serving=serving, **options)


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
