"""The environment TorchServe starts with, which its Python workers inherit: how long PyTorch's idle threads spin.

PyTorch's intra-op threads (OpenMP, libgomp in its wheels) busy-wait after each parallel region for up to
``GOMP_SPINCOUNT`` (300,000) pauses before they sleep: milliseconds. In a TorchServe worker the pause between two
batches is a round trip through the Java front end, and a spinning thread then holds a core the front end needs.
With 10,000 the threads still catch the next operator of a forward pass and sleep between batches. Measured on an
eager BERT-style text model (two intra-op threads, 2 cores; docs/settings.md): TorchServe 1.07x requests/s at
concurrency 1 and 1.12x at 16. Triton keeps libgomp's default: its stub gets the next batch at once, and there the
long spin wins (10,000 gave 0.91x at 16). ``OMP_WAIT_POLICY=PASSIVE`` (no spin at all) gained as much on
TorchServe at 16 but nothing at 1, and lost ~18% on Triton. The price: a tiny model's single requests (digits as
TorchScript, a 0.4 ms pass) lost 8% at concurrency 1 on TorchServe, their threads waking for each one.

libgomp reads it when torch loads, before any handler runs, so it must be in the server's environment: ``maas serve
start``, the tests, the benchmarks and the KServe runtime set it. A user's own ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` wins. ONNX Runtime's threads are not OpenMP's, and a language model's engine runs one intra-op
thread, so neither is touched.
"""

from __future__ import annotations

from collections.abc import Mapping

TORCHSERVE_WORKER_ENV = {"GOMP_SPINCOUNT": "10000"}
OPENMP_WAIT_KEYS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def torchserve_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the workers' defaults added, unless it already says how OpenMP threads wait."""
    if any(key in env for key in OPENMP_WAIT_KEYS):
        return dict(env)
    return {**env, **TORCHSERVE_WORKER_ENV}
