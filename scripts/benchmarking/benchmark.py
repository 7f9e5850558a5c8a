"""Benchmark the served models against the bare pipeline and against each server's own ceiling.

    maas bench serving [--models sentiment,digits] [--duration 4] [--concurrency 1,4,16,32] [--client wrk|python]
                       [--out reports/] [--serving [torchserve.|triton.]KEY=VALUE] [--no-naive] [--no-ceiling]

In one run on this machine (about 9 minutes with the defaults):

1. the in-process limit: each model's pipeline loaded here, ``handle_tensors`` called with 1, 2, 4 ... 32 one-item
   requests per call (what a server batch is), before the servers start and again after they stop; the better of
   the two passes is the limit (one pass can be slowed by anything else the machine runs);
2. each artifact built into a temporary directory: batched (its manifest's serving settings, plus any ``--serving``
   override: ``max_batch_delay_ms=2`` for both servers, ``triton.max_batch_delay_ms=0`` for one); naive,
   ``<name>_naive``, one request per forward pass (``max_batch_size`` 1); and the ceiling, ``<name>_ceiling``
   (``ceiling.py``): a constant answer taking the same requests with the same batch settings, so its throughput
   is what server, protocol, client and adapter allow;
3. ONE TorchServe and ONE tritonserver on free loopback ports serving all of them, TorchServe warmed up first;
4. per model, server/protocol (TorchServe REST, Triton HTTP, Triton gRPC; batched, naive, ceiling) and concurrency:
   a closed loop, one item per request, a warm-up, then ``--duration`` seconds. HTTP load comes from wrk
   (``wrk_load.py``, a C client); gRPC from Python's async client (``loadgen.py``). Every point records the cores
   the client and the server used, and the servers' own metrics before and after (batch size, queue, stages);
5. ``benchmark.json``, ``benchmark.md`` (summary, targets with PASS/FAIL, per-point tables, where time goes) and
   ``benchmark.png`` (throughput against concurrency) written to ``--out``.

The servers are stopped on every exit path. The client shares the machine with the servers: compare the ratios
measured within one run, not absolute figures across machines or runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from handlers.artifact import read_manifest
from scripts import REPO_ROOT
from scripts.benchmarking.bench_servers import (
    SERIES,
    SERVERS,
    Servers,
    add_client_argument,
    interrupt,
    per_server,
    run_meta,
    served_name,
    warm_torchserve,
)  # fmt: skip
from scripts.benchmarking.ceiling import write_ceiling_artifact
from scripts.benchmarking.in_process import best_of, measure_in_process
from scripts.benchmarking.server_metrics import breakdown, served_settings, sum_deltas
from scripts.benchmarking.serving_report import summary_table, targets_table, write_reports
from scripts.benchmarking.serving_targets import evaluate_targets
from scripts.benchmarking.workloads import model_under_test
from scripts.packaging.build import build, for_server, parse_settings, served_artifact

CONCURRENCY = (1, 4, 16, 32)  # 1 and 16 are where the targets and the time breakdown are read


# ---- the run ---------------------------------------------------------------------------------------------


def run(args) -> dict:
    run_started = time.perf_counter()
    models = [model_under_test(name) for name in args.models]
    # The in-process limit is measured on what the servers serve: the task's default format (an export).
    served = {model.name: served_artifact(model.artifact) for model in models}
    series = [s for s in SERIES if s.variant == "" or getattr(args, s.variant)]
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
                server: {k: v for k, v in for_server(manifest, server, o).serving.to_dict().items() if k not in SERVERS}
                for server, o in per_server(args.serving).items()
            },
            "format": read_manifest(served[model.name]).model["format"],
            "in_process_passes": [
                measure_in_process(model, seconds=args.in_process_seconds, artifact=served[model.name])
            ],  # fmt: skip
            "series": {},
        }

    with tempfile.TemporaryDirectory(prefix="maas-benchmark-") as tmp:
        root = Path(tmp)
        for model in models:
            for server, serving in per_server(args.serving).items():
                where = {"model_store": root / "model_store", "triton_repository": None}
                if server == "triton":
                    where = {"model_store": None, "triton_repository": root / "model_repository"}
                # served under the artifact's name (digits.onnx too), without explainers: they are not measured here
                build(model.artifact, **where, name=model.name, serving=serving, explain=False)
                if args.naive:  # the same model, one request per forward pass
                    build(model.artifact, **where, name=f"{model.name}_naive", serving={**serving, "max_batch_size": 1},
                          explain=False)  # fmt: skip
                if args.ceiling:  # a constant answer with the same inputs, outputs and batch settings
                    ceiling = root / "ceilings" / model.name
                    if not ceiling.exists():
                        write_ceiling_artifact(model.artifact, ceiling, f"{model.name}_ceiling")
                    build(ceiling, **where, serving=serving, fmt="eager", explain=False)
            result["models"][model.name]["served"] = {
                name: served_settings(root, name) for name in dict.fromkeys(served_name(model.name, s) for s in series)
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
                        point = servers.measure(s, name, model, c, args, done * 64)
                        points.append(point)
                        deltas.append(point["counters"])
                        done += 1
                        point_seconds.append(time.perf_counter() - started)
                        eta = (total_points - done) * float(np.mean(point_seconds))
                        print(f"[{done:>3}/{total_points}] {model.name:<10} {s.label:<22} c={c:<3}"
                              f"{point['throughput']:9.1f} req/s  p50 {point['p50_ms'] or 0:8.2f} ms  "
                              f"p99 {point['p99_ms'] or 0:8.2f} ms  batch {point['server']['avg_batch'] or 0:5.1f}  "
                              f"errors {point['errors']}  cores: client {point['client_cores']:.2f} "
                              f"server {point['server_cores']:.2f}  ETA {eta / 60:4.1f} min", flush=True)  # fmt: skip
                    result["models"][model.name]["series"][s.key] = {
                        "label": s.label, "server": s.server, "protocol": s.protocol, "naive": s.naive,
                        "variant": s.variant, "served_as": name, "points": points,
                        "breakdown": breakdown(s.server, sum_deltas(deltas)),
                    }  # fmt: skip
        finally:
            servers.stop()
    print("in-process limit again, the servers stopped")
    for model in models:
        data = result["models"][model.name]
        data["in_process_passes"].append(
            measure_in_process(model, seconds=args.in_process_seconds, artifact=served[model.name])
        )
        data["in_process"] = best_of(data["in_process_passes"])
    result["meta"]["wall_s"] = round(time.perf_counter() - run_started, 1)
    result["targets"] = evaluate_targets(result)
    return result


# ---- command line ----------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sentiment,digits", type=lambda s: [x for x in s.split(",") if x],
                        help="artifact names under artifacts/ (default: sentiment,digits)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per point (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each point (default 1)")
    parser.add_argument("--concurrency", type=_ints, default=list(CONCURRENCY), help="default 1,4,16,32")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--serving", action="append", default=[], metavar="[SERVER.]KEY=VALUE",
                        help="override a serving setting of the batched builds, for both servers "
                        "(max_batch_delay_ms=2) or for one (triton.max_batch_delay_ms=0)")  # fmt: skip
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive baselines")
    parser.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the ceiling (a constant-answer model with the same inputs, each server's limit)",
    )
    parser.add_argument("--torchserve-warmup", type=int, default=1000, help="requests before measuring (1000)")
    parser.add_argument("--in-process-seconds", type=float, default=2.0, help="seconds per batch size (default 2)")
    add_client_argument(parser)
    args = parser.parse_args(argv)
    args.serving = parse_settings(args.serving)
    try:
        per_server(args.serving)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # stop the servers on `kill` too, as on Ctrl-C
    result = run(args)
    write_reports(result, args.out)
    print(f"\n{summary_table(result)}\n\n{targets_table(result)}\n\nwall time {result['meta']['wall_s']:.0f} s")
    errors = sum(p["errors"] for d in result["models"].values() for s in d["series"].values() for p in s["points"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
