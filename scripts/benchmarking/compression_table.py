"""The compression table: a text model and its compressed students, each in several formats, side by side.

    maas bench compression [--teacher sentiment]
                           [--students sentiment-l3,sentiment-l2,sentiment-ffn50,sentiment-l3-ffn50]
                           [--formats eager,onnx_int8,onnx_int8_static] [--out reports/compression]
                           [formats benchmark options]

Runs the formats benchmark (``benchmark_formats.run``: export and verification, size, in-process items/s at batch 1
and 32, served req/s at c=16 and p50 at c=1 on Triton gRPC and TorchServe REST, every variant served at once) on the
teacher and its students, then labels the teacher's held-out rows with every variant in process, for:

* held-out accuracy with its exact (Clopper-Pearson) 95% interval;
* label agreement with the teacher as trained (eager, fp32);
* the Pareto front of (Triton gRPC req/s at c=16, accuracy): no other variant is at least as fast and as accurate
  and better in one;
* the issue's targets: a student >= 2x the int8 teacher's served throughput within 1.5 points of held-out accuracy,
  and distilled + int8 >= 4x the fp32 teacher's within 2 points.

Writes ``compression.json`` and ``compression.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np

from handlers.artifact import read_held_out, read_manifest
from handlers.tasks import load_pipeline
from scripts import ARTIFACTS_DIR, REPO_ROOT
from scripts.benchmarking import benchmark_formats
from scripts.benchmarking.bench_servers import interrupt
from scripts.benchmarking.formats_report import write_reports
from scripts.packaging.acceptance import accuracy_interval

SPEED = ("triton_grpc", "c16")  # the throughput the front and the targets are read on
TARGETS = (  # (name, baseline variant, which students, min speed-up, max accuracy loss)
    ("a student vs the int8 teacher", "onnx_int8", "any", 2.0, 0.015),
    ("distilled + int8 vs the fp32 teacher", "eager", "distilled int8", 4.0, 0.02),
)


def held_out_labels(artifact: Path, texts: list[str], batch: int = 32) -> np.ndarray:
    """The variant's label for every text, through its pipeline (one-text requests, ``batch`` per call)."""
    pipeline = load_pipeline(artifact)
    labels = []
    for i in range(0, len(texts), batch):
        outcomes = pipeline.handle_tensors([{"TEXT": np.array([[t.encode()]], dtype=np.object_)}
                                            for t in texts[i : i + batch]])  # fmt: skip
        labels += [o["LABEL"].reshape(-1)[0].decode() for o in outcomes]
    return np.array(labels)


def variants(result: dict, teacher: str) -> list[dict]:
    """Every (model, format) that exported, with its speed, accuracy and agreement with the teacher."""
    texts, targets = read_held_out(ARTIFACTS_DIR / teacher)
    reference = held_out_labels(ARTIFACTS_DIR / teacher, texts)
    rows = []
    for model, data in result["models"].items():
        compression = read_compression(ARTIFACTS_DIR / model)  # once per model: reading verifies every checksum
        for fmt, entry in data["formats"].items():
            if entry["status"] != "ok":
                continue
            labels = held_out_labels(REPO_ROOT / entry["artifact"], texts)
            right = int(np.sum(labels == np.array(targets)))
            served = entry.get("served", {})
            rows.append({
                "model": model, "format": fmt, "size_mb": entry["size_mb"],
                "accuracy": right / len(texts), "accuracy_ci95": accuracy_interval(right, len(texts)),
                "agreement_with_teacher": float(np.mean(labels == reference)),
                "in_process": {p["batch_size"]: p["items_per_s"] for p in entry["in_process"]},
                "served": {key: {c: {"req_s": p["throughput"], "p50_ms": p["p50_ms"]} for c, p in points.items()}
                           for key, points in served.items()},
                "compression": compression,
            })  # fmt: skip
    mark_pareto(rows)
    return rows


def mark_pareto(rows: list[dict]) -> None:
    """``pareto``: no other row is at least as fast and as accurate, and better in one."""
    for row in rows:
        speed = served_speed(row)
        row["pareto"] = speed is not None and not any(
            (served_speed(o) or 0) >= speed and o["accuracy"] >= row["accuracy"]
            and ((served_speed(o) or 0) > speed or o["accuracy"] > row["accuracy"]) for o in rows
        )  # fmt: skip


def read_compression(artifact: Path) -> dict | None:
    """The artifact's compression record, with ``lineage``: every method from the original model on (a pruned
    distilled student: distillation, pruning)."""
    record = read_manifest(artifact).metrics.get("compression")
    if record:
        teacher = artifact.parent / record["teacher"]
        upstream = read_compression(teacher) if teacher.is_dir() else None
        record = record | {"lineage": [*(upstream or {}).get("lineage", []), record["method"]]}
    return record


def served_speed(row: dict) -> float | None:
    return row["served"].get(SPEED[0], {}).get(SPEED[1], {}).get("req_s")


def evaluate(rows: list[dict], teacher: str) -> list[dict]:
    """The issue's targets, each against the best qualifying student variant."""
    outcomes = []
    for name, baseline_format, which, min_speedup, max_loss in TARGETS:
        base = next((r for r in rows if r["model"] == teacher and r["format"] == baseline_format), None)
        candidates = [r for r in rows if r["compression"] and (which == "any" or (
            "distillation" in r["compression"]["lineage"] and r["format"].startswith("onnx_int8")))]  # fmt: skip
        if base is None or not served_speed(base) or not candidates:
            outcomes.append({"target": name, "verdict": "not measured"})
            continue
        best = max(candidates, key=lambda r: ((base["accuracy"] - r["accuracy"]) <= max_loss, served_speed(r) or 0))
        speedup, loss = (served_speed(best) or 0) / served_speed(base), base["accuracy"] - best["accuracy"]
        outcomes.append({"target": name, "variant": f"{best['model']} {best['format']}", "speedup": speedup,
                         "accuracy_loss": loss, "goal": f">= {min_speedup}x within {max_loss * 100:g} points",
                         "verdict": "PASS" if speedup >= min_speedup and loss <= max_loss else "FAIL"})  # fmt: skip
    return outcomes


def render(rows: list[dict], outcomes: list[dict], command: str, meta: dict) -> str:
    head = (
        "| model | format | MB | held-out accuracy (95% CI) | agrees with teacher | in-process b1 / b32 items/s "
        "| Triton gRPC req/s c=16 | Triton p50 c=1 ms | TorchServe req/s c=16 | TorchServe p50 c=1 ms | Pareto |"
    )
    lines = [f"# Compression: size, accuracy, speed\n\n`{command}` - {meta['date']}, {meta['machine']}; "
             f"{meta['wall_s']:.0f} s. Served figures: one item per request, 2 cores shared by client and servers.\n",
             head, "|---" * 11 + "|"]  # fmt: skip
    for r in rows:
        grpc, ts = r["served"].get("triton_grpc", {}), r["served"].get("torchserve_rest", {})
        low, high = r["accuracy_ci95"]
        b1, b32 = r["in_process"].get(1, 0), r["in_process"].get(32, 0)
        lines.append(f"| {r['model']} | {r['format']} | {r['size_mb']:.1f} | {r['accuracy']:.1%} "
                     f"({low:.1%}-{high:.1%}) | {r['agreement_with_teacher']:.1%} | {b1:.0f} / {b32:.0f} "
                     f"| {grpc.get('c16', {}).get('req_s', 0):.1f} | {grpc.get('c1', {}).get('p50_ms') or 0:.2f} "
                     f"| {ts.get('c16', {}).get('req_s', 0):.1f} | {ts.get('c1', {}).get('p50_ms') or 0:.2f} "
                     f"| {'**yes**' if r['pareto'] else ''} |")  # fmt: skip
    lines += ["", "| target | best variant | speed-up (Triton gRPC c=16) | accuracy loss | goal | verdict |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for o in outcomes:
        if o["verdict"] == "not measured":
            lines.append(f"| {o['target']} | - | - | - | - | not measured |")
        else:
            lines.append(f"| {o['target']} | {o['variant']} | {o['speedup']:.2f}x | {o['accuracy_loss'] * 100:.1f} "
                         f"points | {o['goal']} | **{o['verdict']}** |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="sentiment")
    parser.add_argument("--students", default="sentiment-l3,sentiment-l2,sentiment-ffn50,sentiment-l3-ffn50")
    parser.add_argument("--formats", default="eager,onnx_int8,onnx_int8_static")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "compression")
    args, rest = parser.parse_known_args(argv)  # the rest goes to the formats benchmark (--duration ...)
    signal.signal(signal.SIGTERM, interrupt)
    models = [args.teacher, *(s for s in args.students.split(",") if s)]
    missing = [m for m in models if not (ARTIFACTS_DIR / m / "pipeline.json").is_file()]
    if missing:
        raise SystemExit(f"no artifact {', '.join(missing)} in {ARTIFACTS_DIR}: train the teacher and make the "
                         "students first (maas compress distill / prune; README, Compress a text model)")  # fmt: skip
    result = benchmark_formats.run(benchmark_formats.parse_args(["--models", ",".join(models), "--formats",
                                                                 args.formats, *rest]))  # fmt: skip
    write_reports(result, args.out)
    rows = variants(result, args.teacher)
    outcomes = evaluate(rows, args.teacher)
    command = " ".join(["maas bench compression", *(sys.argv[1:] if argv is None else argv)])
    text = render(rows, outcomes, command, result["meta"])
    (args.out / "compression.json").write_text(json.dumps({"variants": rows, "targets": outcomes}, indent=1))
    (args.out / "compression.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
