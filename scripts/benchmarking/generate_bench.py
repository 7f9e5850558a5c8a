"""Generation throughput and latency of a served language model, against the same engine in process and the
batching a server without continuous batching would do (the way vLLM's benchmark_serving and Anyscale's llmperf
measure).

    maas bench generate ARTIFACT [--concurrency 1,4,16,32] [--requests N] [--mean-output 64] [--max-output 200]
                        [--servers torchserve,triton|none] [--out reports] [--seed 0] [--timeout 120]

One seeded workload (``generate_load.make_workload``) for every mode; at every concurrency c, a closed loop of c
clients sends N requests (default max(16, 8c)), greedy with ``ignore_eos`` so each generates exactly its planned
tokens. Modes: ``in-process`` (the served engine, continuous batching, no server: the bound a server can reach),
``naive`` (the same engine one sequence at a time: a ``model.generate`` per request), ``static`` (HF
``model.generate`` on groups of c, left-padded, every row running as long as the group's longest; answered whole),
``torchserve`` (HTTP, NDJSON stream) and ``triton`` (HTTP ``generate_stream``, server-sent events: the same client
and transport as TorchServe's, so the two servers are compared like for like), and at c=16 only each server again
as its own baselines (``SERVED_BASELINES``): ``torchserve-naive`` (built with ``max_batch_size`` 1) and
``torchserve-static`` (``static_batching`` 1), the same for Triton. Each server runs alone on loopback
ports, built into a temporary directory, and is stopped on every exit path. Writes generate.json (every figure and
request), generate.md (tables, targets) and generate.png under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from handlers.artifact import HELD_OUT_NAME, read_manifest
from handlers.generation import cores
from handlers.generation.engine import Engine
from handlers.generation.service import TASK, intra_op_threads, load_engine
from scripts import REPO_ROOT
from scripts.benchmarking.generate_load import (
    SERVED_BASELINES,
    SERVERS,
    TARGET_C,
    WARMUP_TOKENS,
    Request,
    describe_workload,
    engine_levels,
    make_workload,
    served_level,
    static_levels,
    summarize,
)  # fmt: skip
from scripts.benchmarking.generate_report import BUSY_LOAD, check_targets, targets_table, write_reports
from scripts.benchmarking.serving_report import number
from scripts.benchmarking.wrk_load import tree_cpu_seconds


def level_sizes(concurrency: list[int], requests: int | None) -> dict[int, int]:
    """8c by default: a level's last requests decode in a draining batch, which at 4c cost continuous batching ~5% of
    its tokens/s in process (c=16; 1.89x static at 64 requests, 2.0x at 128 and 256)."""
    return {c: requests or max(16, 8 * c) for c in concurrency}


def run_levels(mode: str, levels: dict[int, int], workload: list[Request], measure_level, pids=()) -> list[dict]:
    """Each level on the first N requests of the workload; the process's (the client's) CPU time over it, and the
    server's when ``pids`` name it."""
    points = []
    for c, n in levels.items():
        before, server_before = resource.getrusage(resource.RUSAGE_SELF), tree_cpu_seconds(list(pids))
        results, wall = measure_level(workload[:n], c)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        point = {"concurrency": c, **summarize(results, wall), "process_cpu_pct": 100 * cpu / wall}
        if pids:
            point["server_cores"] = (tree_cpu_seconds(list(pids)) - server_before) / wall
        point["raw"] = [r.raw() for r in results]
        points.append(point)
        print(f"{mode:<10} c={c:<3} {point['tokens_per_s']:8.1f} tok/s {point['requests_per_s']:6.2f} req/s  "
              f"TTFT p50 {number(point['ttft_p50_ms'])} ms  ITL p50 {number(point['itl_p50_ms'], 2)} ms  "
              f"errors {point['errors']}  CPU here {point['process_cpu_pct']:.0f}% of a core", flush=True)  # fmt: skip
    return points


def served_levels(kind: str, url: str, headers: dict, timeout: float):
    return lambda requests, c: asyncio.run(served_level(kind, url, headers, requests, c, timeout))


def warm_up(measure_level, workload: list[Request], deadline_s: float) -> None:
    """A few short requests until all succeed (TorchServe answers /ping before its worker has loaded the model)."""
    short = [Request(r.prompt, r.prompt_tokens, min(WARMUP_TOKENS, r.output_tokens), r.source) for r in workload[:4]]
    deadline = time.monotonic() + deadline_s
    while True:
        results, _ = measure_level(short, len(short))
        errors = [r.error for r in results if r.error]
        if not errors:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up requests still failing after {deadline_s:.0f} s: {errors[0]}")
        time.sleep(1.0)


def run_server(kind: str, artifact: Path, name: str, levels: dict, workload: list[Request], timeout: float,
               serving: dict | None = None, mode: str | None = None) -> list:  # fmt: skip
    """``kind`` built with the ``serving`` overrides, measured at ``levels``; its points, printed as ``mode``."""
    from scripts.packaging.build import build
    from scripts.serving.keys import bearer
    from scripts.serving.processes import free_ports, stop_process
    from scripts.serving.servers import start_torchserve
    from scripts.serving.triton_server import TritonPorts, start_triton

    with tempfile.TemporaryDirectory(prefix=f"maas-bench-generate-{kind}-") as tmp:
        root, instance = Path(tmp), None
        try:
            if kind == "torchserve":
                build(artifact, root / "model_store", None, serving=serving)
                instance = start_torchserve(root / "model_store", root / "torchserve")
                url, headers = f"{instance.inference_url}/predictions/{name}", bearer(instance.inference_key)
            else:
                build(artifact, None, root / "model_repository", serving=serving)
                ports = TritonPorts(*free_ports(3))  # no health probes: they would be requests of their own
                instance = start_triton(root / "model_repository", ports, root / "triton.log", 300, heal_interval=0)
                url, headers = f"http://127.0.0.1:{ports.http}/v2/models/{name}/generate_stream", {}
            print(f"{mode or kind} ready on {url}", flush=True)
            measure_level = served_levels(kind, url, headers, timeout)
            with client_off_engine_cores(read_manifest(artifact).serving.for_server(kind, serving)):
                warm_up(measure_level, workload, 300)
                return run_levels(mode or kind, levels, workload, measure_level, pids=[instance.process.pid])
        finally:
            if instance is not None:
                stop_process(instance.process, group=kind == "torchserve")


@contextmanager
def client_off_engine_cores(settings):
    """The load generator (this process) on the cores a served engine leaves to its server's other threads
    (``serving.bind_cores``), as a client elsewhere would be: on a shared machine it would otherwise take the
    engine's core as often as the front end's."""
    split = cores.plan(intra_op_threads(settings)) if settings.bind_cores else None
    before = os.sched_getaffinity(0) if split else None
    if split:
        cores.move_process_threads(split[1])
    try:
        yield
    finally:
        if before:
            cores.move_process_threads(before)


def held_out_text(artifact: Path) -> tuple[list[str], str]:
    """The recorded prompts, and the text snippets are cut from: every prompt with its recorded continuation."""
    records = [json.loads(line) for line in (artifact / HELD_OUT_NAME).read_text("utf-8").splitlines() if line]
    prompts = [r["input"]["prompt"] for r in records]
    return prompts, "\n".join(f"{r['input']['prompt']}{r.get('target', '')}" for r in records)


def run(args) -> dict:
    started, load_start = time.perf_counter(), os.getloadavg()
    manifest = read_manifest(args.artifact)
    if manifest.task != TASK:
        raise ValueError(f"{args.artifact} is a {manifest.task} artifact, not a language model ({TASK})")
    if load_start[0] > BUSY_LOAD:
        print(f"WARNING: 1-min load average {load_start[0]:.2f} at the start: the machine is busy, run again")
    engine = load_engine(args.artifact, manifest)
    prompts, text = held_out_text(args.artifact)
    levels = level_sizes(args.concurrency, args.requests)
    workload = make_workload(engine.tokenizer, prompts, text, max(levels.values()), args.mean_output, args.max_output,
                             engine.max_context, manifest.serving.max_tokens_limit, args.seed)  # fmt: skip
    modes, failures = {}, {}
    served_threads = torch.get_num_threads()  # what load_engine set: the servers' default
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the references own the machine: every core
    modes["in-process"] = run_levels("in-process", levels, workload, engine_levels(engine, args.timeout))
    naive = Engine(engine.model, engine.tokenizer, max_running=1, max_context=engine.max_context)
    modes["naive"] = run_levels("naive", levels, workload, engine_levels(naive, args.timeout))
    modes["static"] = run_levels("static", levels, workload, static_levels(engine.model, engine.tokenizer, workload[0]))
    torch.set_num_threads(served_threads)
    served = run_levels("in-process-served", levels, workload, engine_levels(engine, args.timeout))
    modes["in-process-served"] = served
    del engine, naive  # the servers load their own copies
    top = TARGET_C if TARGET_C in levels else max(levels)
    for kind in args.servers:
        runs = [(kind, None, levels)] + [(f"{kind}-{b}", o, {top: levels[top]}) for b, o in SERVED_BASELINES.items()]
        for mode, overrides, its_levels in runs:
            try:
                modes[mode] = run_server(kind, args.artifact, manifest.name, its_levels, workload, args.timeout,
                                         overrides, mode)  # fmt: skip
            except Exception as exc:  # the other runs, and what was measured, still make the report
                failures[mode] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"{mode} failed: {failures[mode]}", flush=True)
    load_end = os.getloadavg()
    return {
        "meta": {
            "command": " ".join(["maas bench generate", *args.argv]), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__} "
            f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})", "served_threads": served_threads,
            "cores": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in load_end],
            "busy": load_start[0] > BUSY_LOAD, "wall_s": round(time.perf_counter() - started, 1),
            "artifact": str(args.artifact), "model": manifest.model, "max_running": manifest.serving.max_batch_size,
            "timeout_s": args.timeout, "servers": args.servers,
        },
        "workload": {
            "description": describe_workload(args.seed, bool(args.requests), args.mean_output, args.max_output),
            "requests_per_level": {str(c): n for c, n in levels.items()},
            "requests": [r.__dict__ for r in workload],
        },
        "modes": modes,
        "server_failures": failures,
        "targets": check_targets(modes),
    }  # fmt: skip


# ---- command line ----------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 1,4,16,32")
    return values


def _servers(text: str) -> list[str]:
    names = [] if text == "none" else [x for x in text.split(",") if x]
    if unknown := set(names) - set(SERVERS):
        raise argparse.ArgumentTypeError(f"unknown server {', '.join(sorted(unknown))}: torchserve, triton or none")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="a language-model artifact (pipeline.json of text_generation)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 32], help="default 1,4,16,32")
    parser.add_argument("--requests", type=int, help="requests per level (default max(16, 8 x concurrency))")
    parser.add_argument("--mean-output", type=float, default=64.0, help="mean planned output tokens (default 64)")
    parser.add_argument("--max-output", type=int, default=200, help="planned output tokens, at most (default 200)")
    parser.add_argument("--servers", type=_servers, default=list(SERVERS), help="torchserve,triton (default) or none")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request, at most (default 120)")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1 or args.max_output < 4 or args.mean_output <= 0:
        parser.error("--requests must be at least 1, --max-output at least 4, --mean-output above 0")
    args.argv = argv
    return args


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # `kill` stops the servers as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    import signal

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        result = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_reports(result, args.out)
    print(f"\n{targets_table(result['targets'])}\n\nwall time {result['meta']['wall_s']:.0f} s")
    errors = any(p["errors"] for points in result["modes"].values() for p in points)
    return 1 if errors or result["server_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
