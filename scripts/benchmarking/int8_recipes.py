"""What moves an int8 model's answers: quantization recipes compared on an artifact's held-out rows.

    .venv/bin/python -m scripts.benchmarking.int8_recipes artifacts/sentiment [--speed-rows 300]

Exports the artifact to fp32 ONNX (verified, reused when current), quantizes it with each recipe below, and prints
per recipe: the largest and 99th-percentile probability shift against fp32, label agreement, held-out accuracy,
size, and in-process items/s at batch 1 and 32 (ONNX Runtime, spinning off, best of two passes). Batches of 32 are
formed as the export verification forms them. The CPU's int8-relevant flags are printed first: int8 figures depend
on them. ``scripts/packaging/export.py`` uses the recipes marked ``*`` (dynamic: ``onnx_int8``; static, calibrated on
256 training rows: ``onnx_int8_static``).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod

from handlers.artifact import read_held_out
from handlers.formats import OnnxRunner
from handlers.tasks import load_pipeline
from scripts.packaging.export import export
from scripts.packaging.quantize import (
    calibration_batches,
    early_feed_forward,
    feed_forward_layers,
    quantize_int8,
    quantize_static_int8,
    training_rows,
)

PERCENTILE = {"calibrate_method": CalibrationMethod.Percentile,
              "extra_options": {"MatMulConstBOnly": True, "CalibPercentile": 99.99}}  # fmt: skip
# name -> (dynamic or static, what is kept in fp32, quantize_dynamic / quantize_static options)
RECIPES = {
    "8-bit, all layers": ("dynamic", "none", {"reduce_range": False}),
    "8-bit, per-tensor": ("dynamic", "none", {"reduce_range": False, "per_channel": False}),
    "7-bit, all layers": ("dynamic", "none", {}),
    "7-bit, early feed-forward fp32 *": ("dynamic", "early", {}),
    "7-bit, all feed-forward fp32": ("dynamic", "all", {}),
    "static, every operator (ONNX Runtime's default)": (
        "static",
        "none",
        {"op_types_to_quantize": None, "extra_options": {}},
    ),
    "static 7-bit, all layers": ("static", "none", {}),
    "static 8-bit, early feed-forward fp32": ("static", "early", {"reduce_range": False}),
    "static 7-bit, early feed-forward fp32, percentile 99.99": ("static", "early", PERCENTILE),
    "static 7-bit, early feed-forward fp32 *": ("static", "early", {}),
}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(re.findall(r"\b(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8)\b", text))
    return " ".join(sorted(flags)) or "none of avx2/avx512f/avx512_vnni/avx_vnni/amx_int8"


def static_quantizer(fp32, calibration: Path | None):
    """``quantize(source, target, keep_fp32, **options)`` for the static recipes: calibrated as the export does
    (``scripts/packaging/quantize.py``), on training rows prepared once for all of them."""
    batches = list(calibration_batches(fp32, training_rows(fp32.manifest, calibration), fp32.MODEL_INPUTS))
    return lambda source, target, keep_fp32, **options: quantize_static_int8(
        source, target, batches, keep_fp32, **options
    )


def study(artifact: Path, speed_rows: int, calibration: Path | None = None) -> list[dict]:
    fp32 = load_pipeline(export(artifact, "onnx"), self_check=False)
    rows, targets = read_held_out(artifact)
    truth = np.array([fp32.labels.index(t) for t in targets])
    features = [fp32.preprocess(row) for row in rows]
    batches = [fp32.collate(features[i : i + 32]) for i in range(0, len(features), 32)]
    singles = [fp32.collate([f]) for f in features[:speed_rows]]

    def probabilities(run) -> np.ndarray:
        return np.concatenate([fp32.comparable(run(batch)) for batch in batches])

    def items_per_second(run, inputs: list, items: int) -> float:
        best = 0.0
        for _ in range(2):
            start = time.perf_counter()
            for batch in inputs:
                run(batch)
            best = max(best, items / (time.perf_counter() - start))
        return best

    reference = probabilities(fp32.forward)
    source = fp32.artifact_dir / fp32.manifest.model["file"]
    layers = feed_forward_layers(source)
    keep = {"none": [], "early": early_feed_forward(layers), "all": list(layers)}
    results = [{"recipe": "fp32 (onnx)", **measure(fp32.forward, reference, reference, truth, source)}]
    results[0] |= speeds(fp32.forward, singles, batches, items_per_second)
    quantizers = {"dynamic": quantize_int8, "static": static_quantizer(fp32, calibration)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, kept, options) in RECIPES.items():
            path = Path(tmp) / "model.int8.onnx"
            quantizers[kind](source, path, keep[kept], **options)
            run = OnnxRunner(path, "cpu")
            results.append({"recipe": name, **measure(run, probabilities(run), reference, truth, path)})
            results[-1] |= speeds(run, singles, batches, items_per_second)
            print(json.dumps(results[-1]), flush=True)
    return results


def measure(run, got: np.ndarray, reference: np.ndarray, truth: np.ndarray, path: Path) -> dict:
    shift = np.abs(got - reference).max(axis=1)
    return {
        "max_shift": round(float(shift.max()), 4),
        "q99_shift": round(float(np.quantile(shift, 0.99)), 4),
        "label_agreement": round(float((got.argmax(1) == reference.argmax(1)).mean()), 4),
        "accuracy": round(float((got.argmax(1) == truth).mean()), 4),
        "mb": round(path.stat().st_size / 1e6, 1),
    }


def speeds(run, singles: list, batches: list, items_per_second) -> dict:
    timed = batches[:16]
    items = sum(len(next(iter(batch.values()))) for batch in timed)
    return {
        "b1_items_s": round(items_per_second(run, singles, len(singles))),
        "b32_items_s": round(items_per_second(run, timed, items)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="an eager classifier artifact (with held_out.jsonl)")
    parser.add_argument("--speed-rows", type=int, default=300, help="held-out rows timed at batch 1")
    parser.add_argument("--calibration", type=Path, help="static recipes: JSONL training rows (as maas export)")
    args = parser.parse_args(argv)
    print(f"CPU flags: {cpu_flags()}")
    results = study(args.artifact, args.speed_rows, args.calibration)
    print("| recipe | max shift | 99th pct shift | label agreement | accuracy | MB | items/s b1 | items/s b32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['recipe']} | {r['max_shift']} | {r['q99_shift']} | {r['label_agreement']:.1%} | "
              f"{r['accuracy']:.1%} | {r['mb']} | {r['b1_items_s']} | {r['b32_items_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
