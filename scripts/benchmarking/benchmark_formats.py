"""Compare model formats (eager, TorchScript, ONNX, ONNX int8) per model: size, accuracy, speed in process and served.

    .venv/bin/python -m scripts.benchmarking.benchmark_formats [--models sentiment,digits,breast_cancer]
        [--formats eager,torchscript,onnx,onnx_int8] [--duration 3] [--warmup 1] [--no-served] [--out reports/]

Per model and format:

1. the export (``scripts.packaging.export.export``, reused when current; a rejected export is recorded with its
   reason and
   the format skipped), its model file's size, and the held-out metric eager -> export from its verification;
2. in process: ``handle_tensors`` with 1 and 32 one-item requests per call
   (``scripts.benchmarking.benchmark.measure_in_process``);
3. served: every format of every model built as ``<model>_<format>`` into one temporary root, ONE TorchServe and
   ONE tritonserver started on free loopback ports (``scripts.benchmarking.benchmark.Servers``), then per format a
   closed loop (``scripts.benchmarking.loadgen``) at concurrency 1 (p50 latency) and 16 (throughput) on Triton gRPC
   and TorchServe REST.

Writes ``formats.json`` and ``formats.md`` (table, and per task the suggested format: the fastest by Triton gRPC
throughput at c=16 whose held-out metric stays within one point of eager) to ``--out``, and prints the table.
The servers are stopped on every exit path. Client and servers share the machine: compare figures within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from handlers.artifact import HELD_OUT_NAME, read_held_out, read_manifest
from handlers.formats import FORMATS
from scripts import ARTIFACTS_DIR, REPO_ROOT
from scripts.benchmarking.benchmark import (
    SERIES_BY_KEY,
    WORKLOADS,
    ModelUnderTest,
    Servers,
    _f,
    _interrupt,
    _load,
    _run_point,
    breakdown,
    counter_delta,
    measure_in_process,
    run_meta,
    table,
    warm_torchserve,
)
from scripts.benchmarking.loadgen import Workload
from scripts.packaging.build import build
from scripts.packaging.export import ExportRejected, export, is_current

DEFAULT_MODELS = ("sentiment", "digits", "breast_cancer")
IN_PROCESS_BATCHES = (1, 32)
LOW_C, HIGH_C = 1, 16
SERVED_SERIES = ("triton_grpc", "torchserve_rest")
ENSEMBLE_KEY = "triton_grpc_ensemble"  # --ensembles: the format served as a Triton ensemble, over gRPC
RANK_SERIES = "triton_grpc"  # "fastest" is Triton gRPC throughput at HIGH_C
# A format is suggested only within one point of eager's held-out metric (plus float slack for rounded figures).
METRIC_SLACK = 0.01 + 1e-9


# ---- workloads -------------------------------------------------------------------------------------------
def tabular_model(name: str, artifact: Path) -> ModelUnderTest:
    """The held-out rows: ``{"features": [...]}`` for TorchServe, ``FEATURES`` FP32 [1, n] for Triton."""
    rows, _ = read_held_out(artifact)
    matrix = np.asarray(rows, dtype=np.float32)

    def triton_input(module, i: int) -> list:
        tensor = module.InferInput("FEATURES", [1, matrix.shape[1]], "FP32")
        tensor.set_data_from_numpy(matrix[i : i + 1])
        return [tensor]

    workload = Workload([json.dumps({"features": row}).encode() for row in rows], "application/json", triton_input)
    task = read_manifest(artifact).task
    return ModelUnderTest(
        name, task, artifact, workload, lambda i: {"FEATURES": matrix[i % len(matrix)][None, :]},
        f"{len(rows)} held-out rows of {matrix.shape[1]} features",
    )  # fmt: skip


FORMAT_WORKLOADS = {**WORKLOADS, "tabular_classification": tabular_model, "tabular_regression": tabular_model}


def model_under_test(name: str) -> ModelUnderTest:
    artifact = ARTIFACTS_DIR / name
    task = read_manifest(artifact).task
    if task not in FORMAT_WORKLOADS:
        raise SystemExit(f"{name}: no benchmark workload for task {task!r} (known: {sorted(FORMAT_WORKLOADS)})")
    if not (artifact / HELD_OUT_NAME).is_file():
        raise SystemExit(f"{artifact / HELD_OUT_NAME} is missing (still training?): the exports are checked on it")
    return FORMAT_WORKLOADS[task](name, artifact)


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
    except ExportRejected as exc:
        seconds = round(time.perf_counter() - started, 1)
        print(f"  {artifact.name} {fmt}: export rejected after {seconds}s: {exc}", flush=True)
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
def measure_point(servers: Servers, key: str, model: ModelUnderTest, concurrency: int, args, offset: int) -> dict:
    """One closed-loop point against ``model.name`` on one server/protocol, with the server's own counters."""
    series = SERIES_BY_KEY[key]
    before = servers.counters(series, model.name)
    make_client = lambda: servers.client(series, model.name, model.workload, concurrency)  # noqa: E731
    point = asyncio.run(_run_point(make_client, concurrency, args.duration, args.warmup, offset))
    time.sleep(0.3)  # TorchServe publishes the handler's metrics a moment after the answers
    delta = counter_delta(before, servers.counters(series, model.name))
    point.update(concurrency=concurrency, server=breakdown(series.server, delta))
    return point


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
                        point = measure_point(servers, protocol, target, c, args, done * 64)
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
    models = [model_under_test(name) for name in args.models]
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


# ---- choosing a format -----------------------------------------------------------------------------------
def within_one_point(entry: dict) -> bool:
    metric = entry.get("metric")
    return bool(metric) and abs(metric["export"] - metric["eager"]) <= METRIC_SLACK


def speed(entry: dict) -> tuple[float | None, str]:
    """The ranking figure: Triton gRPC items/s at c=16; in-process items/s at batch 32 when nothing was served."""
    served = entry.get("served", {}).get(RANK_SERIES, {}).get(f"c{HIGH_C}")
    if served is not None:
        return (served["throughput"] if not served["errors"] else None), f"{RANK_SERIES} c={HIGH_C}"
    b32 = next((p for p in entry.get("in_process", []) if p["batch_size"] == max(IN_PROCESS_BATCHES)), None)
    return (b32["items_per_s"] if b32 else None), f"in-process b={max(IN_PROCESS_BATCHES)}"


def suggest_formats(result: dict) -> dict[str, dict]:
    """Per task, the fastest format within one point of eager on every model of that task.

    With several models of a task, formats are ranked by the geometric mean of their throughput over those models
    (the same ranking as the mean speed-up over eager); a format missing, rejected, too inaccurate or erroring on
    any of them is out.
    """
    by_task: dict[str, list[str]] = {}
    for model, data in result["models"].items():
        by_task.setdefault(data["task"], []).append(model)
    suggestions = {}
    for task, models in by_task.items():
        candidates = {}
        basis = None
        for fmt in FORMATS:
            entries = [result["models"][m]["formats"].get(fmt) for m in models]
            if not all(e and e["status"] == "ok" and within_one_point(e) for e in entries):
                continue
            speeds = [speed(e) for e in entries]
            if any(s is None or s <= 0 for s, _ in speeds):
                continue
            basis = speeds[0][1]
            candidates[fmt] = math.exp(float(np.mean([math.log(s) for s, _ in speeds])))
        if not candidates:
            suggestions[task] = {"format": None, "models": models, "why": "no format qualified"}
            continue
        best = max(candidates, key=candidates.get)
        eager = candidates.get("eager")
        gain = f", {candidates[best] / eager:.2f}x eager" if eager else ""
        suggestions[task] = {
            "format": best,
            "models": models,
            "basis": basis,
            "items_per_s": candidates[best],
            "candidates": candidates,
            "why": f"{candidates[best]:,.1f} items/s ({basis}{gain}); held-out metric within one point of eager",
        }
    return suggestions


# ---- reports ---------------------------------------------------------------------------------------------
HEADER = [
    "model", "format", "size MB", "held-out metric eager -> export", "in-process items/s b1 / b32",
    "in-process b1 ms (p50)", f"Triton gRPC p50 c={LOW_C} ms", f"Triton gRPC items/s c={HIGH_C}",
    f"TorchServe p50 c={LOW_C} ms", f"TorchServe items/s c={HIGH_C}", "export s",
]  # fmt: skip


def _served(entry: dict, key: str, c: int, field: str, digits: int) -> str:
    point = entry.get("served", {}).get(key, {}).get(f"c{c}")
    if point is None:
        return "-"
    text = _f(point[field], digits)
    return f"{text} ({point['errors']} errors)" if point["errors"] else text


def _metric(entry: dict) -> str:
    m = entry.get("metric")
    return f"{m['name']} {m['eager']:.4f} -> {m['export']:.4f}" if m else "-"


def _export_seconds(fmt: str, entry: dict) -> str:
    if fmt == "eager":
        return "-"
    e = entry["export"]
    if e.get("reused"):
        return f"{_f(e.get('export_seconds'))} (reused)"
    return _f(e.get("export_seconds") or e["seconds_this_run"])


def format_rows(result: dict) -> list[list[str]]:
    rows = []
    for model, data in result["models"].items():
        for fmt, entry in data["formats"].items():
            if entry["status"] != "ok":
                reason = entry.get("reason", "").replace("|", "/")
                rows.append([model, fmt, "-", f"rejected: {reason}", *["-"] * (len(HEADER) - 5),
                             _f(entry["export"]["seconds_this_run"])])  # fmt: skip
                continue
            points = {p["batch_size"]: p for p in entry.get("in_process", [])}
            b1, b32 = points.get(1, {}), points.get(32, {})
            rows.append([
                model, fmt, f"{entry['size_mb']:.3g}", _metric(entry),
                f"{_f(b1.get('items_per_s'))} / {_f(b32.get('items_per_s'))}", _f(b1.get("ms_per_batch_p50"), 2),
                _served(entry, "triton_grpc", LOW_C, "p50_ms", 2),
                _served(entry, "triton_grpc", HIGH_C, "throughput", 1),
                _served(entry, "torchserve_rest", LOW_C, "p50_ms", 2),
                _served(entry, "torchserve_rest", HIGH_C, "throughput", 1), _export_seconds(fmt, entry),
            ])  # fmt: skip
    return rows


def ensemble_table(result: dict) -> str | None:
    """Single Python model vs the same export as an ensemble (three Python models), Triton gRPC; None if unmeasured."""
    rows = []
    for model, data in result["models"].items():
        for fmt, entry in data["formats"].items():
            if ENSEMBLE_KEY not in entry.get("served", {}):
                continue
            rows.append([
                model, fmt,
                _served(entry, "triton_grpc", LOW_C, "p50_ms", 2), _served(entry, ENSEMBLE_KEY, LOW_C, "p50_ms", 2),
                _served(entry, "triton_grpc", HIGH_C, "throughput", 1),
                _served(entry, ENSEMBLE_KEY, HIGH_C, "throughput", 1),
            ])  # fmt: skip
    header = ["model", "format", f"single p50 c={LOW_C} ms", f"ensemble p50 c={LOW_C} ms",
              f"single items/s c={HIGH_C}", f"ensemble items/s c={HIGH_C}"]  # fmt: skip
    return table(header, rows) if rows else None


def formats_table(result: dict) -> str:
    return table(HEADER, format_rows(result))


def suggestions_table(result: dict) -> str:
    rows = []
    for task, s in result["suggestions"].items():
        others = sorted(s.get("candidates", {}).items(), key=lambda kv: -kv[1])
        others = ", ".join(f"{fmt} {_f(speed)}" for fmt, speed in others if fmt != s["format"]) or "-"
        rows.append([task, ", ".join(s["models"]), f"**{s['format']}**" if s["format"] else "-", s["why"], others])
    return table(["task", "models", "suggested format", "why", "other qualifying formats (items/s)"], rows)


def count_errors(result: dict) -> int:
    return sum(
        point["errors"]
        for data in result["models"].values()
        for entry in data["formats"].values()
        for points in entry.get("served", {}).values()
        for point in points.values()
    )


def _load_end(meta: dict) -> str:
    return _load({"load_average_at_start": meta.get("load_average_at_end", [])})


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    served = (
        f"Served: every format built as `<model>_<format>` with its manifest's serving settings, one TorchServe and "
        f"one tritonserver for all; closed loop, one item per request, {meta['warmup_s']} s warm-up + "
        f"{meta['duration_s']} s per point (TorchServe warmed with {meta['torchserve_warmup_requests']} requests "
        "first)."
        if meta["served"]
        else "Served: not measured (`--no-served`); formats are ranked by in-process throughput at batch 32."
    )
    out = [
        "# Model formats: size, held-out metric, speed in process and served",
        "",
        f"`{meta['command']}` - {meta['date']}, {meta.get('wall_s', '?')} s wall. {meta['machine']}; client and "
        f"servers share the machine (load average at start: {_load(meta)}, at end: {_load_end(meta)}; eager and "
        "TorchScript figures suffer most from other load on the cores). In process: `handle_tensors` with 1 "
        f"and 32 one-item requests per call, {meta['in_process_seconds']} s each. {served}",
        "",
        formats_table(result),
        "",
        "Size: the format's model file (eager: the safetensors weights). Held-out metric: accuracy (classifiers) or "
        "R² (regressors) on the artifact's held-out set, from the export's verification. Export s: the seconds the "
        "export and its verification took when it was written (reused: an earlier run's, still current).",
        "",
        f"## Suggested format per task (fastest by Triton gRPC items/s at c={HIGH_C}, held-out metric within one "
        "point of eager)",
        "",
        suggestions_table(result),
        "",
    ]
    rejected = [
        f"- {model} {fmt}: {entry['reason']}"
        for model, data in result["models"].items()
        for fmt, entry in data["formats"].items()
        if entry["status"] == "rejected"
    ]
    if rejected:
        out += ["Rejected exports:", "", *rejected, ""]
    ensembles = ensemble_table(result)
    if ensembles:
        out += ["## The same exports as Triton ensembles (`--ensembles`)", "",
                "Preprocess, network and postprocess as three Python-backend models joined by an ensemble (the "
                "layout a native ONNX Runtime / libtorch backend would use), against the single Python model; "
                "Triton gRPC.", "", ensembles, ""]  # fmt: skip
    if meta["served"]:
        out += [f"Errors (failed requests, all served points, warm-ups included): **{count_errors(result)}**.", ""]
    return "\n".join(out)


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "formats.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "formats.md").write_text(render_markdown(result))
    print(f"wrote {out / 'formats.json'}, {out / 'formats.md'}")


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
    args = parser.parse_args(argv)
    unknown = [f for f in args.formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on `kill` too, as on Ctrl-C
    result = run(args)
    write_reports(result, args.out)
    print(f"\n{formats_table(result)}\n\n{suggestions_table(result)}\n\nwall time {result['meta']['wall_s']:.0f} s")
    return 1 if count_errors(result) else 0


if __name__ == "__main__":
    sys.exit(main())
