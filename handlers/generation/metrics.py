"""Generation metrics, named after vLLM's, measured from the engine's events and published by each server adapter.

=========================================  =========  ======================================================
``maas_time_to_first_token_seconds``       histogram  arrival at the server adapter to the first token
``maas_inter_token_latency_seconds``       histogram  the gap between two decoding steps, once per step
``maas_prompt_tokens_total``               counter    prompt tokens of the requests that started
``maas_generation_tokens_total``           counter    tokens generated
``maas_request_finished_total``            counter    requests ended, by ``finished_reason``: stop, length, ...
``maas_num_requests_running``              gauge      sequences in the running batch
``maas_num_requests_waiting``              gauge      requests waiting for a slot
=========================================  =========  ======================================================

Inter-token latency is observed once per step, not once per sequence: every sequence in a step waited the same
gap, and one observation per token would cost a metrics call per token on both servers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from handlers.generation.sequence import Event

log = logging.getLogger(__name__)
PREFIX = "maas_"
# Buckets of vLLM's histograms, with finer low ones: small models on a CPU answer in milliseconds.
TTFT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0]
ITL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5]
FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass
class StepMetrics:
    """What one step adds: histogram observations, counter increments and the gauges' values."""

    time_to_first_token: list[float] = field(default_factory=list)
    inter_token_latency: list[float] = field(default_factory=list)  # one gap per step (none for a first step)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    running: int = 0
    waiting: int = 0


class GenerationMetrics:
    """Turns each step's events into ``StepMetrics``. ``arrived`` is called from the adapter's thread, ``step``
    from the engine's."""

    def __init__(self):
        self._lock = threading.Lock()
        self._arrivals: dict[str, float] = {}
        self._last_step: float | None = None

    def arrived(self, request_id: str) -> None:
        with self._lock:
            self._arrivals[request_id] = time.perf_counter()

    def forget(self, request_id: str) -> None:
        """A request refused before it ran."""
        with self._lock:
            self._arrivals.pop(request_id, None)

    def step(self, events: list[Event], running: int, waiting: int) -> StepMetrics:
        now = time.perf_counter()
        metrics = StepMetrics(running=running, waiting=waiting)
        decoded = False
        with self._lock:
            for event in events:
                if event.completion_tokens and event.request_id in self._arrivals:  # its first token
                    metrics.time_to_first_token.append(now - self._arrivals.pop(event.request_id))
                    metrics.prompt_tokens += event.prompt_tokens
                elif event.token_ids:
                    decoded = True
                metrics.generation_tokens += len(event.token_ids)
                if event.finished:
                    self._arrivals.pop(event.request_id, None)
                    metrics.finished[event.finish_reason] = metrics.finished.get(event.finish_reason, 0) + 1
        if decoded and self._last_step is not None:
            metrics.inter_token_latency.append(now - self._last_step)
        self._last_step = now if events else None
        return metrics


def combine(steps: list[StepMetrics]) -> StepMetrics:
    """Several steps' metrics as one: every observation, the counts summed, the last step's gauges."""
    total = StepMetrics(running=steps[-1].running, waiting=steps[-1].waiting)
    for step in steps:
        total.time_to_first_token += step.time_to_first_token
        total.inter_token_latency += step.inter_token_latency
        total.prompt_tokens += step.prompt_tokens
        total.generation_tokens += step.generation_tokens
        for reason, count in step.finished.items():
            total.finished[reason] = total.finished.get(reason, 0) + count
    return total


class Publisher:
    """Publishes steps' metrics on a thread of its own, at most every ``interval_s``, the steps since combined.

    On Triton each metric call is a round trip to the server process that holds the interpreter lock throughout
    (the Python backend's bindings do not release it), so the engine thread stalls at its next operator for as
    long: published after every step, they cost ~0.4 ms a step (~15%) at one sequence. Combined, the counters and
    gauges cost one call each per interval; histograms still take one call per observation.
    """

    def __init__(self, publish: Callable[[StepMetrics], None], name: str = "metrics", interval_s: float = 0.0):
        self._publish, self._interval_s = publish, interval_s
        self._cond = threading.Condition()
        self._waiting: list[StepMetrics] = []
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def put(self, step: StepMetrics) -> None:
        with self._cond:
            self._waiting.append(step)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                steps, self._waiting = self._waiting, []
            started = time.monotonic()
            try:
                self._publish(combine(steps))
            except Exception:
                log.exception("could not publish metrics")
            time.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))


def publish_torchserve(metrics, step: StepMetrics, dimensions: list | None = None) -> None:
    """Into TorchServe's metrics (``context.metrics``; Prometheus with ``model_metrics_auto_detect``), labelled
    with ``dimensions`` (the version that served) beside TorchServe's own."""
    from ts.metrics.metric_type_enum import MetricTypes  # only inside a TorchServe worker

    def add(name: str, value: float, unit: str, kind: MetricTypes) -> None:
        metrics.add_metric(f"{PREFIX}{name}", value, unit, dimensions=dimensions or [], metric_type=kind)

    histogram, counter, gauge = MetricTypes.HISTOGRAM, MetricTypes.COUNTER, MetricTypes.GAUGE
    for value in step.time_to_first_token:
        add("time_to_first_token_seconds", value, "s", histogram)
    for value in step.inter_token_latency:
        add("inter_token_latency_seconds", value, "s", histogram)
    for name in ("prompt_tokens", "generation_tokens"):
        if getattr(step, name):
            add(f"{name}_total", getattr(step, name), "count", counter)
    for reason, count in step.finished.items():
        add(f"request_finished_{reason}_total", count, "count", counter)
    add("num_requests_running", step.running, "count", gauge)
    add("num_requests_waiting", step.waiting, "count", gauge)
