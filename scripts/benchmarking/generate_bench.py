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
from pathlib import Path

import torch

from handlers.artifact import HELD_OUT_NAME, read_manifest
from handlers.generation.engine import Engine
from handlers.generation.service import TASK, load_engine
from scripts import REPO_ROOT
from scripts.benchmarking.generate_load import (
    IN_PROCESS,
    SERVED_BASELINES,
    SERVERS,
    TARGET_C,
    WARMUP_TOKENS,
    Request,
    check_targets,
    describe_workload,
    engine_levels,
    is_served,
    make_workload,
    served_level,
    static_levels,
    summarize,
)  # fmt: skip
from scripts.benchmarking.wrk_load import tree_cpu_seconds


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


BUSY_LOAD = 1.0  # a 1-min load average above this at the start: the figures share the machine
CLIENT_LIMIT = 50.0  # % of one core: a client busier than this may be what limits a level


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
            warm_up(measure_level, workload, 300)
            return run_levels(mode or kind, levels, workload, measure_level, pids=[instance.process.pid])
        finally:
            if instance is not None:
                stop_process(instance.process, group=kind == "torchserve")


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


# ---- targets and reports ---------------------------------------------------------------------------------
def verdict(met: bool | None) -> str:
    return "n/a" if met is None else "**met**" if met else "**not met**"


def levels_table(modes: dict) -> str:
    header = ["mode", "c", "requests", "errors", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms",
              "ITL p99 ms", "TPOT p50 ms", "tokens = planned", "client CPU % of a core", "server cores"]  # fmt: skip
    rows = [[mode, p["concurrency"], p["requests"], p["errors"], number(p["tokens_per_s"]),
             number(p["requests_per_s"], 2), number(p["ttft_p50_ms"]), number(p["ttft_p99_ms"]),
             number(p["itl_p50_ms"], 2), number(p["itl_p99_ms"], 2), number(p["tpot_p50_ms"], 2),
             "yes" if p["tokens_match"] else "**no**",
             number(p["process_cpu_pct"], 0) if is_served(mode) else "-", number(p.get("server_cores"), 2)]
            for mode, points in modes.items() for p in points]  # fmt: skip
    return table(header, rows)


def targets_table(targets: list[dict]) -> str:
    if not targets:
        return "No server measured (`--servers none`): the targets compare served modes, none to check."
    rows = [[t["mode"], t["target"], t["goal"], number(t["measured"], 2), t["detail"], verdict(t["met"])]
            for t in targets]  # fmt: skip
    return table(["server", "target", "goal", "measured", "numbers", "verdict"], rows)


def render_markdown(result: dict) -> str:
    meta, modes = result["meta"], result["modes"]
    loads = f"{meta['load_average_start']} at the start, {meta['load_average_end']} at the end"
    busy = [f"**WARNING: the 1-min load average was {meta['load_average_start'][0]} at the start (above "
            f"{BUSY_LOAD:g}): the machine was busy; run again.**", ""] if meta["busy"] else []  # fmt: skip
    client = [p["process_cpu_pct"] for m, points in modes.items() if is_served(m) for p in points]
    fill_ms = SERVED_BASELINES["static"]["max_batch_delay_ms"]
    client_line = (f"The load generator used at most {max(client):.0f}% of one core over any server level "
                   f"({'under' if max(client) < CLIENT_LIMIT else '**above**'} {CLIENT_LIMIT:.0f}%: "
                   f"{'it kept up' if max(client) < CLIENT_LIMIT else 'it may have limited the server'}). "
                   if client else "")  # fmt: skip
    return "\n".join([
        "# Generation benchmark: continuous batching served vs in process, naive and static batching", "",
        f"`{meta['command']}` - {meta['date']}, {meta['wall_s']} s wall. {meta['machine']}, {meta['cores']} cores, "
        f"shared by client and server; load average {loads}. Model: {meta['model'].get('architecture')}, "
        f"context {meta['model'].get('max_context')}, up to {meta['max_running']} sequences decoding at once.", "",
        *busy, f"Workload: {result['workload']['description']}.", "",
        "Closed loop: c clients, each sending its next request when the previous one ends. Output tok/s: planned "
        "tokens of the completed requests over the level's wall time. TTFT: send to the first chunk with text; ITL: "
        "every gap between chunks with text, pooled (chunks that come in bursts make small gaps; TPOT, a request's "
        "time after its first chunk per token after the first, shows the pace all the same). static (in process) is "
        "not streamed: its TTFT is the whole batch. SERVER-naive and SERVER-static, the targets' baselines, are the "
        "same server built with `max_batch_size` 1 (one sequence at a time) and with `static_batching` 1 (newcomers "
        f"join only an empty batch, waiting {fill_ms:g} ms at most for it to fill; rows that end early are computed "
        "as padding until the longest ends; each row still streams), measured at the target level only. "
        f"{client_line}in-process runs the served engine with no server in between, on every core (as do naive "
        "and static): it bounds what a server can do. in-process-served is the same engine at the servers' default "
        f"of {meta.get('served_threads', '?')} intra-op thread(s) (every core but one, which the server's front end "
        "needs): not a target, it shows what that setting costs without a server.",
        *[f"**{kind} failed**: {why}" for kind, why in result.get("server_failures", {}).items()],
        "", "## Targets", "", targets_table(result["targets"]), "", "## Every mode and level", "",
        levels_table(modes), "", "![tokens/s and TTFT against concurrency](generate.png)", "",
    ])  # fmt: skip


def plot(modes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    for ax, key, label in ((axes[0], "tokens_per_s", "output tokens/s"), (axes[1], "ttft_p50_ms", "TTFT p50 (ms)")):
        for mode, points in modes.items():
            ax.plot([p["concurrency"] for p in points], [p[key] for p in points], marker="o", markersize=3,
                    linestyle=":" if mode in IN_PROCESS else "-", label=mode)  # fmt: skip
        ax.set_xscale("log", base=2)
        levels = sorted({p["concurrency"] for points in modes.values() for p in points})
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency (clients)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "generate.md").write_text(render_markdown(result))
    plot(result["modes"], out / "generate.png")
    print(f"wrote {out / 'generate.json'}, {out / 'generate.md'}, {out / 'generate.png'}")


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
