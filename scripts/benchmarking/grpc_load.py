"""gRPC load from several client processes, so that one Python process (one core, its GIL) is not the limit.

No C-speed gRPC generator for Triton's v2 protocol is packaged here (perf_analyzer's PyPI wheel is a stub), so a
gRPC point runs ``loadgen.closed_loop`` with ``tritonclient.grpc.aio`` in ``processes`` spawned processes, the
connections split between them. Each process builds its requests, then all start together (a barrier) and send for
the same window; the point merges their latencies and errors and records the cores each process used. A client
process far below one core, and throughput that does not grow with more processes, show the client kept up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import threading
import time
from pathlib import Path

from scripts.benchmarking.loadgen import TritonClient, closed_loop, summarize
from scripts.benchmarking.wrk_load import tree_cpu_seconds


def split(concurrency: int, processes: int) -> list[int]:
    """Connections per process, as even as can be; never a process without one."""
    processes = max(1, min(processes, concurrency))
    return [concurrency // processes + (k < concurrency % processes) for k in range(processes)]


def grpc_point(url: str, artifact: Path, served: str, concurrency: int, duration: float, warmup: float,
               offset: int, server_pids: list[int], processes: int = 2) -> dict:  # fmt: skip
    """A closed-loop gRPC point on the served model from ``processes`` client processes; each builds the workload
    of ``artifact`` itself (a workload holds closures, which cannot be sent to a spawned process)."""
    context = multiprocessing.get_context("spawn")  # a gRPC channel must not cross a fork
    parts = split(concurrency, processes)
    ready, results = context.Barrier(len(parts) + 1), context.Queue()
    workers = [context.Process(target=client_process, args=(url, artifact, served, c, duration, warmup,
                                                            offset + sum(parts[:k]), ready, results))
               for k, c in enumerate(parts)]  # fmt: skip
    for worker in workers:
        worker.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # a process failed preparing: its error is queued
            ready.wait(timeout=300)
        servers_before, started = tree_cpu_seconds(server_pids), time.perf_counter()
        outcomes = [results.get(timeout=duration + warmup + 300) for _ in workers]
        wall = time.perf_counter() - started
        servers_cpu = tree_cpu_seconds(server_pids) - servers_before
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    failed = [o["error"] for o in outcomes if "error" in o]
    if failed:
        raise RuntimeError(f"a gRPC client process failed: {failed[0]}")
    latencies = [ms for o in outcomes for ms in o["latencies_ms"]]
    point = summarize(latencies, duration, sum(o["errors"] for o in outcomes))
    if first := next((o["first_error"] for o in outcomes if o.get("first_error")), None):
        point["first_error"] = first
    client_cores = [o["cpu_s"] / o["wall_s"] for o in outcomes]
    point.update(client=f"python x{len(parts)}", client_cores=sum(client_cores),
                 client_process_cores=client_cores, server_cores=servers_cpu / wall)  # fmt: skip
    return point


def client_process(url, artifact, served, concurrency, duration, warmup, offset, ready, results) -> None:
    """One client process: build the workload, wait for the others, send, report latencies and CPU."""
    try:
        from scripts.benchmarking.workloads import load_workload

        workload = load_workload(artifact)

        async def run() -> dict:
            client = TritonClient("grpc", url, served, workload, concurrency)
            try:
                return await closed_loop(client, concurrency, duration, warmup, offset, keep_latencies=True)
            finally:
                await client.close()

        ready.wait(timeout=300)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        outcome = asyncio.run(run())
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        outcome.update(cpu_s=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall_s=wall)
        results.put(outcome)
    except BaseException as exc:  # the parent and the other processes must hear of it rather than wait
        ready.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"[:500]})
