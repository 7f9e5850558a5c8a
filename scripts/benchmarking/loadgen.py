"""Closed-loop load generation with async clients, and the latency / throughput maths the benchmark reports.

A point is ``concurrency`` workers, each sending one request after the other (a new one as soon as the previous
answer arrives) for ``warmup + duration`` seconds. Only requests that complete inside the measurement window count:
throughput is their number over the window, latency percentiles are theirs. Any failed request (a non-200 answer, a
Triton error, a timeout), warm-up included, counts as an error.

Clients: ``httpx.AsyncClient`` (keep-alive, bearer token) for TorchServe REST, ``tritonclient.http.aio`` and
``tritonclient.grpc.aio`` for Triton. Request payloads are built once, before the clock starts, as a load generator
such as perf_analyzer does; the client still serializes and parses every request and answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio

from scripts.serving.keys import bearer

PERCENTILES = (50, 90, 99)


def summarize(latencies_ms: Sequence[float], window_s: float, errors: int = 0) -> dict:
    """Throughput (completed per second of window) and latency percentiles (ms, linear interpolation)."""
    latencies = np.asarray(latencies_ms, dtype=float)
    summary = {
        "completed": int(latencies.size),
        "errors": int(errors),
        "window_s": round(float(window_s), 3),
        "throughput": float(latencies.size / window_s) if window_s > 0 else 0.0,
        "mean_ms": float(latencies.mean()) if latencies.size else None,
    }
    for q in PERCENTILES:
        summary[f"p{q}_ms"] = float(np.percentile(latencies, q)) if latencies.size else None
    return summary


@dataclass
class Workload:
    """What one request sends, per item: a TorchServe body with its content type, and a Triton input builder."""

    rest_bodies: list[bytes]
    content_type: str
    triton_input: Callable[[Any, int], list]  # (tritonclient.http or .grpc, item index) -> that item's inputs
    _triton_inputs: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rest_bodies)

    def triton_inputs(self, module) -> list[list]:
        """Every item's Triton inputs for one client module, built once (they are not changed by sending)."""
        if module.__name__ not in self._triton_inputs:
            self._triton_inputs[module.__name__] = [self.triton_input(module, i) for i in range(len(self))]
        return self._triton_inputs[module.__name__]


class RequestFailed(Exception):
    pass


class TorchServeClient:
    """``POST /predictions/<model>`` with keep-alive connections (one per worker) and the inference key."""

    def __init__(self, url: str, key: str, model: str, workload: Workload, concurrency: int):
        self.path = f"{url}/predictions/{model}"
        self.workload = workload
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {**bearer(key), "Content-Type": workload.content_type}
        self.client = httpx.AsyncClient(headers=headers, limits=limits, timeout=120)

    async def send(self, i: int) -> None:
        response = await self.client.post(self.path, content=self.workload.rest_bodies[i % len(self.workload)])
        if response.status_code != 200:
            raise RequestFailed(f"HTTP {response.status_code}: {response.text[:200]}")

    async def close(self) -> None:
        await self.client.aclose()


class TritonClient:
    """Triton V2 over HTTP (``tritonclient.http.aio``) or gRPC (``tritonclient.grpc.aio``, one shared channel)."""

    def __init__(self, protocol: str, url: str, model: str, workload: Workload, concurrency: int):
        self.model = model
        if protocol == "http":
            self.client = triton_http_aio.InferenceServerClient(url, conn_limit=concurrency, conn_timeout=120)
            module = triton_http
        else:
            self.client = triton_grpc_aio.InferenceServerClient(url)
            module = triton_grpc
        self.inputs = workload.triton_inputs(module)

    async def send(self, i: int) -> None:
        await self.client.infer(self.model, self.inputs[i % len(self.inputs)])

    async def close(self) -> None:
        await self.client.close()


async def closed_loop(client, concurrency: int, duration: float, warmup: float, offset: int = 0,
                      keep_latencies: bool = False) -> dict:  # fmt: skip
    """Run ``concurrency`` workers back to back for ``warmup + duration`` seconds; summarize the window (with
    every latency when ``keep_latencies``: points from several processes are merged by ``grpc_load``)."""
    latencies: list[float] = []
    errors, first_error = 0, None
    start = time.perf_counter() + warmup
    end = start + duration

    async def worker(w: int) -> None:
        nonlocal errors, first_error
        i = offset + w
        while (sent := time.perf_counter()) < end:
            try:
                await client.send(i)
            except Exception as exc:  # any failure counts; keep the first for the report
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
            else:
                done = time.perf_counter()
                if start <= done <= end:
                    latencies.append((done - sent) * 1e3)
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    summary = summarize(latencies, duration, errors)
    if first_error:
        summary["first_error"] = first_error
    if keep_latencies:
        summary["latencies_ms"] = latencies
    return summary


async def send_count(client, requests: int, concurrency: int) -> int:
    """Send ``requests`` requests with ``concurrency`` workers (a warm-up); return how many failed."""
    failed = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal failed
        for i in counter:
            try:
                await client.send(i)
            except Exception:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed
