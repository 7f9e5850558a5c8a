"""The in-process limit: the pipeline's ``handle_tensors`` on server-sized batches, without any server."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np

from handlers.tasks import load_pipeline
from scripts.benchmarking.workloads import ModelUnderTest

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def measure_in_process(model: ModelUnderTest, batch_sizes=BATCH_SIZES, seconds: float = 2.0,
                       artifact: Path | None = None) -> list[dict]:  # fmt: skip
    """``handle_tensors`` on ``b`` one-item requests per call, for ``seconds`` per batch size after a warm-up;
    ``artifact``: the one the servers serve (an export), when it is not ``model.artifact``."""
    pipeline = load_pipeline(artifact or model.artifact)
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
