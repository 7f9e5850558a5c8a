"""The formats benchmark's verdict and reports: which format to serve per task, formats.json / .md / .png."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from handlers.formats import FORMATS
from scripts.benchmarking.serving_report import load_average, number, table

IN_PROCESS_BATCHES = (1, 32)
LOW_C, HIGH_C = 1, 16
SERVED_SERIES = ("triton_grpc", "torchserve_rest")
ENSEMBLE_KEY = "triton_grpc_ensemble"  # --ensembles: the format served as a Triton ensemble, over gRPC
RANK_SERIES = "triton_grpc"  # "fastest" is Triton gRPC throughput at HIGH_C
# A format is suggested only within one point of eager's held-out metric (plus float slack for rounded figures).
METRIC_SLACK = 0.01 + 1e-9


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


HEADER = [
    "model", "format", "size MB", "held-out metric eager -> export", "in-process items/s b1 / b32",
    "in-process b1 ms (p50)", f"Triton gRPC p50 c={LOW_C} ms", f"Triton gRPC items/s c={HIGH_C}",
    f"TorchServe p50 c={LOW_C} ms", f"TorchServe items/s c={HIGH_C}", "export s",
]  # fmt: skip


def _served(entry: dict, key: str, c: int, field: str, digits: int) -> str:
    point = entry.get("served", {}).get(key, {}).get(f"c{c}")
    if point is None:
        return "-"
    text = number(point[field], digits)
    return f"{text} ({point['errors']} errors)" if point["errors"] else text


def _metric(entry: dict) -> str:
    m = entry.get("metric")
    return f"{m['name']} {m['eager']:.4f} -> {m['export']:.4f}" if m else "-"


def _export_seconds(fmt: str, entry: dict) -> str:
    if fmt == "eager":
        return "-"
    e = entry["export"]
    if e.get("reused"):
        return f"{number(e.get('export_seconds'))} (reused)"
    return number(e.get("export_seconds") or e["seconds_this_run"])


def format_rows(result: dict) -> list[list[str]]:
    rows = []
    for model, data in result["models"].items():
        for fmt, entry in data["formats"].items():
            if entry["status"] != "ok":
                reason = entry.get("reason", "").replace("|", "/")
                rows.append([model, fmt, "-", f"rejected: {reason}", *["-"] * (len(HEADER) - 5),
                             number(entry["export"]["seconds_this_run"])])  # fmt: skip
                continue
            points = {p["batch_size"]: p for p in entry.get("in_process", [])}
            b1, b32 = points.get(1, {}), points.get(32, {})
            rows.append([
                model, fmt, f"{entry['size_mb']:.3g}", _metric(entry),
                f"{number(b1.get('items_per_s'))} / {number(b32.get('items_per_s'))}",
                number(b1.get("ms_per_batch_p50"), 2),
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
        others = ", ".join(f"{fmt} {number(speed)}" for fmt, speed in others if fmt != s["format"]) or "-"
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
    return load_average({"load_average_at_start": meta.get("load_average_at_end", [])})


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
        f"servers share the machine (load average at start: {load_average(meta)}, at end: {_load_end(meta)}; eager and "
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
