"""gRPC load from several client processes, so that one Python process (one core, its GIL) is not the limit.

No C-speed gRPC generator for Triton's v2 protocol is packaged here (perf_analyzer's PyPI wheel is a stub), so a
gRPC point runs ``loadgen.closed_loop`` with ``tritonclient.grpc.aio`` in several spawned processes, the connections
split between them. The processes live for the whole run (starting one costs seconds of imports) and keep each
workload they built. Per point, each process gets its share, builds its client, says it is ready, and all start at
the same instant; the point merges their latencies and errors and records the cores each process used. A client
process far below one core, and throughput that does not grow with more processes, show the client kept up.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import resource
import time
from pathlib import Path

from scripts.benchmarking.loadgen import TritonClient, closed_loop, summarize
from scripts.benchmarking.wrk_load import tree_cpu_seconds

PREPARE_S = 300  # the first point of a workload builds it in each process


def split(concurrency: int, processes: int) -> list[int]:
    """Connections per process, as even as can be; never a process without one."""
    processes = max(1, min(processes, concurrency))
    return [concurrency // processes + (k < concurrency % processes) for k in range(processes)]


class GrpcLoad:
    """Client processes kept for a run; ``point`` measures one closed-loop point; ``close`` always."""

    def __init__(self, processes: int = 2):
        self.processes, self.context = processes, multiprocessing.get_context("spawn")  # no gRPC across a fork
        self.workers: list[tuple] = []
        self.results = self.context.Queue()

    def point(self, url: str, artifact: Path, served: str, concurrency: int, duration: float, warmup: float,
              offset: int, server_pids: list[int]) -> dict:  # fmt: skip
        """A closed-loop point on the served model; each process builds the workload of ``artifact`` itself (a
        workload holds closures, which cannot be sent to another process)."""
        parts = split(concurrency, self.processes)
        while len(self.workers) < len(parts):
            commands = self.context.Queue()
            process = self.context.Process(target=client_process, args=(commands, self.results), daemon=True)
            process.start()
            self.workers.append((process, commands))
        for k, c in enumerate(parts):
            self.workers[k][1].put((url, artifact, served, c, duration, warmup, offset + sum(parts[:k])))
        replies = [self.reply(PREPARE_S) for _ in parts]
        failed = [r["error"] for r in replies if "error" in r]
        start_at = None if failed else time.monotonic() + 0.2  # one clock for every process on this machine
        for k in range(len(parts)):
            self.workers[k][1].put(start_at)
        if failed:
            raise RuntimeError(f"a gRPC client process failed: {failed[0]}")
        servers_before, started = tree_cpu_seconds(server_pids), time.perf_counter()
        outcomes = [self.reply(duration + warmup + 300) for _ in parts]
        wall = time.perf_counter() - started
        servers_cpu = tree_cpu_seconds(server_pids) - servers_before
        failed = [o["error"] for o in outcomes if "error" in o]
        if failed:
            raise RuntimeError(f"a gRPC client process failed: {failed[0]}")
        point = summarize([ms for o in outcomes for ms in o["latencies_ms"]], duration,
                          sum(o["errors"] for o in outcomes))  # fmt: skip
        if first := next((o["first_error"] for o in outcomes if o.get("first_error")), None):
            point["first_error"] = first
        client_cores = [o["cpu_s"] / o["wall_s"] for o in outcomes]
        point.update(client=f"python x{len(parts)}", client_cores=sum(client_cores),
                     client_process_cores=client_cores, server_cores=servers_cpu / wall)  # fmt: skip
        return point

    def reply(self, timeout: float) -> dict:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"no answer from a client process in {timeout:.0f}s"}

    def close(self) -> None:
        for _, commands in self.workers:
            commands.put(None)
        for process, _ in self.workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self.workers = []


def client_process(commands, results) -> None:
    """Serve points until ``None``: build (or reuse) the workload and a client, say ready, wait for the start
    instant (``None``: another process failed, skip), send, report latencies and CPU."""
    from scripts.benchmarking.workloads import load_workload  # in the child: its imports take seconds

    workloads = {}
    while (command := commands.get()) is not None:
        url, artifact, served, concurrency, duration, warmup, offset = command
        try:
            if artifact not in workloads:
                workloads[artifact] = load_workload(artifact)
            results.put({"ready": True})
        except BaseException as exc:  # the parent must hear of it rather than wait
            results.put({"error": f"{type(exc).__name__}: {exc}"[:500]})
        start_at = commands.get()
        if start_at is None or artifact not in workloads:
            continue
        time.sleep(max(0.0, start_at - time.monotonic()))
        try:
            results.put(measure(url, served, workloads[artifact], concurrency, duration, warmup, offset))
        except BaseException as exc:
            results.put({"error": f"{type(exc).__name__}: {exc}"[:500]})


def measure(url, served, workload, concurrency, duration, warmup, offset) -> dict:
    async def run() -> dict:
        client = TritonClient("grpc", url, served, workload, concurrency)
        try:
            return await closed_loop(client, concurrency, duration, warmup, offset, keep_latencies=True)
        finally:
            await client.close()

    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    outcome = asyncio.run(run())
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    return {**outcome, "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, "wall_s": wall}
