"""Compare model formats (eager, TorchScript, ONNX, ONNX int8) per model: size, accuracy, speed in process and served.

    .venv/bin/python -m scripts.benchmarking.benchmark_formats [--models sentiment,digits,breast_cancer]
        [--formats eager,torchscript,onnx,onnx_int8,onnx_int8_static] [--duration 3] [--warmup 1] [--no-served]
        [--out reports/]

Per model and format:

1. the export (``scripts.packaging.export.export``, reused when current; a rejected export is recorded with its
   reason and
   the format skipped), its model file's size, and the held-out metric eager -> export from its verification;
2. in process: ``handle_tensors`` with 1 and 32 one-item requests per call
   (``scripts.benchmarking.in_process.measure_in_process``);
3. served: every format of every model built as ``<model>_<format>`` into one temporary root, ONE TorchServe and
   ONE tritonserver started on free loopback ports (``scripts.benchmarking.bench_servers.Servers``), then per format a
   closed loop (``scripts.benchmarking.loadgen``) at concurrency 1 (p50 latency) and 16 (throughput) on Triton gRPC
   and TorchServe REST.

Writes ``formats.json`` and ``formats.md`` (table, and per task the suggested format: the fastest by Triton gRPC
throughput at c=16 whose held-out metric stays within one point of eager) to ``--out``, and prints the table.
The servers are stopped on every exit path. Client and servers share the machine: compare figures within a run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from handlers.artifact import read_manifest
from handlers.formats import FORMATS
from scripts import REPO_ROOT
from scripts.benchmarking.bench_servers import (
    SERIES_BY_KEY,
    Servers,
    add_client_argument,
    interrupt,
    run_meta,
    warm_torchserve,
)
from scripts.benchmarking.formats_report import (
    ENSEMBLE_KEY,
    HIGH_C,
    IN_PROCESS_BATCHES,
    LOW_C,
    SERVED_SERIES,
    count_errors,
    formats_table,
    suggest_formats,
    suggestions_table,
    write_reports,
)  # fmt: skip
from scripts.benchmarking.in_process import measure_in_process
from scripts.benchmarking.workloads import ModelUnderTest, model_under_test
from scripts.packaging.build import build
from scripts.packaging.export import ExportRejected, export, is_current
from scripts.packaging.quantize import CalibrationError

DEFAULT_MODELS = ("sentiment", "digits", "breast_cancer")


def served_name(model: str, fmt: str) -> str:
    return f"{model}_{fmt}"


# ---- export, size, metric --------------------------------------------------------------------------------
def prepare_format(artifact: Path, fmt: str, exporter=export) -> tuple[dict, Path | None]:
    """Export ``artifact`` to ``fmt`` (timed); the format's entry and its artifact, or a rejection and ``None``."""
    manifest = read_manifest(artifact)
    out = artifact.parent / f"{artifact.name}.{fmt}"
    reused = fmt == "eager" or is_current(out, manifest.files[manifest.model["file"]])
    started = time.perf_counter()
    try:
        directory = Path(exporter(artifact, fmt))
    except (ExportRejected, CalibrationError) as exc:  # the latter: static int8 without training rows to calibrate on
        seconds = round(time.perf_counter() - started, 1)
        print(f"  {artifact.name} {fmt}: not exported after {seconds}s: {exc}", flush=True)
        return {"status": "rejected", "reason": str(exc), "export": {"seconds_this_run": seconds}}, None
    seconds = round(time.perf_counter() - started, 1)
    model = read_manifest(directory).model
    verification = model.get("verification")
    entry = {
        "status": "ok",
        "artifact": str(directory.relative_to(REPO_ROOT) if directory.is_relative_to(REPO_ROOT) else directory),
        "file": model["file"],
        "size_mb": (directory / model["file"]).stat().st_size / 1e6,
        "export": {
            "seconds_this_run": seconds,
            "reused": reused,
            "export_seconds": verification.get("export_seconds") if verification else None,
        },
        "verification": verification,
    }
    return entry, directory


def eager_metric(artifact: Path, formats: dict[str, dict]) -> dict:
    """The eager model's held-out metric: from any export's verification, else the one training measured on the
    same held-out rows (``metrics.held_out_accuracy`` / ``held_out_r2`` in the manifest)."""
    for entry in formats.values():
        if entry.get("verification"):
            v = entry["verification"]
            return {"metric": v["metric"], "value": v["eager"], "source": "verification"}
    metrics = read_manifest(artifact).metrics
    metric = "accuracy" if "held_out_accuracy" in metrics else "r2"
    return {"metric": metric, "value": metrics[f"held_out_{metric}"], "source": "training"}


def fill_metrics(data: dict) -> None:
    """Every successful format's ``metric``: {name, eager, export}; eager's export value is its own."""
    eager = data["eager_metric"]
    for fmt, entry in data["formats"].items():
        if entry["status"] != "ok":
            continue
        v = entry.get("verification")
        value = eager["value"] if fmt == "eager" or not v else v["export"]
        entry["metric"] = {"name": eager["metric"], "eager": eager["value"], "export": value}


# ---- served ----------------------------------------------------------------------------------------------
def measure_served(result: dict, targets: list[tuple[str, ModelUnderTest, str, Path]], args) -> None:
    """Build every (model, format) into one root, start the servers once, measure each; stop them always."""
    with tempfile.TemporaryDirectory(prefix="maas-formats-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        for _, model, fmt, directory in targets:
            build(directory, model_store=root / "model_store", triton_repository=root / "model_repository",
                  name=model.name, fmt=fmt)  # fmt: skip
            if args.ensembles:  # the same export as a Triton ensemble (Python stages and network)
                build(directory, model_store=None, triton_repository=root / "model_repository",
                      name=f"{model.name}_ensemble", fmt=fmt, triton_ensemble="python")  # fmt: skip
        result["meta"]["build_s"] = round(time.perf_counter() - started, 1)
        servers = Servers(root)
        try:
            servers.start()
            served = [model for _, model, _, _ in targets]
            warm_torchserve(servers, served, [SERIES_BY_KEY["torchserve_rest"]], args.torchserve_warmup)
            series = [(key, key, lambda m: m) for key in SERVED_SERIES]
            if args.ensembles:
                series.append((ENSEMBLE_KEY, "triton_grpc", lambda m: replace(m, name=f"{m.name}_ensemble")))
            total, done = len(targets) * len(series) * 2, 0
            for base, model, fmt, _ in targets:
                entry = result["models"][base]["formats"][fmt]
                entry["served"] = {}
                for key, protocol, as_served in series:
                    points, target = {}, as_served(model)
                    for c in (LOW_C, HIGH_C):
                        point = servers.measure(SERIES_BY_KEY[protocol], target.name, target, c, args, done * 64)
                        points[f"c{c}"] = point
                        done += 1
                        print(f"[{done:>3}/{total}] {target.name:<24} {SERIES_BY_KEY[protocol].label:<16} c={c:<3}"
                              f"{point['throughput']:9.1f} req/s  p50 {point['p50_ms'] or 0:8.2f} ms  "
                              f"batch {point['server']['avg_batch'] or 0:5.1f}  errors {point['errors']}",
                              flush=True)  # fmt: skip
                    entry["served"][key] = points
        finally:
            servers.stop()


# ---- the run ---------------------------------------------------------------------------------------------
def run(args) -> dict:
    run_started = time.perf_counter()
    models = [model_under_test(name, held_out_required=True) for name in args.models]
    result = {
        "meta": {
            **run_meta("scripts.benchmarking.benchmark_formats", args),
            "formats": list(args.formats),
            "in_process_seconds": args.in_process_seconds,
            "served": args.served,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "models": {},
    }
    targets = []
    for model in models:
        print(f"{model.name} ({model.task}): {model.description}", flush=True)
        data = {"task": model.task, "requests": model.description, "formats": {}}
        result["models"][model.name] = data
        for fmt in args.formats:
            entry, directory = prepare_format(model.artifact, fmt)
            data["formats"][fmt] = entry
            if directory is None:
                continue
            served = replace(model, name=served_name(model.name, fmt), artifact=directory)
            entry["served_as"] = served.name
            entry["in_process"] = measure_in_process(served, IN_PROCESS_BATCHES, args.in_process_seconds)
            targets.append((model.name, served, fmt, directory))
        data["eager_metric"] = eager_metric(model.artifact, data["formats"])
        fill_metrics(data)
    if args.served and targets:
        measure_served(result, targets, args)
    result["suggestions"] = suggest_formats(result)
    result["meta"]["wall_s"] = round(time.perf_counter() - run_started, 1)
    result["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


# ---- command line ----------------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=_names, default=list(DEFAULT_MODELS),
                        help=f"artifact names under artifacts/ (default: {','.join(DEFAULT_MODELS)})")  # fmt: skip
    parser.add_argument("--formats", type=_names, default=list(FORMATS), help=f"default: {','.join(FORMATS)}")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per served point (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each point (default 1)")
    parser.add_argument("--in-process-seconds", type=float, default=1.0, help="seconds per batch size (default 1)")
    parser.add_argument("--torchserve-warmup", type=int, default=600,
                        help="TorchServe requests before measuring, over all models (default 600)")  # fmt: skip
    parser.add_argument("--no-served", dest="served", action="store_false", help="skip the servers")
    parser.add_argument("--ensembles", action="store_true",
                        help="also serve each format as a Triton ensemble (Python backend) and compare")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    add_client_argument(parser)
    args = parser.parse_args(argv)
    unknown = [f for f in args.formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # stop the servers on `kill` too, as on Ctrl-C
    result = run(args)
    write_reports(result, args.out)
    print(f"\n{formats_table(result)}\n\n{suggestions_table(result)}\n\nwall time {result['meta']['wall_s']:.0f} s")
    return 1 if count_errors(result) else 0


if __name__ == "__main__":
    sys.exit(main())
