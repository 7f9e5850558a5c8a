"""Export a trained (eager) artifact to another model format, and refuse exports that changed the model.

    .venv/bin/python -m scripts.packaging.export artifacts/sentiment --format onnx_int8 [--out DIR]

Writes ``<artifact>.<format>/`` (by default beside the artifact): the exported network, every other artifact file
except the eager weights, and a manifest whose ``model`` section records the format, the source weights' SHA-256
and the verification below. ``maas build --format`` calls this and reuses an export that is still current.

Verification runs the eager and the exported pipeline on the artifact's held-out examples (``held_out.jsonl``):
at batch 1 (several lengths, for text) and in batches of 32, so dynamic batch and sequence dims are exercised.
``scripts/packaging/acceptance.py`` judges the outcome (per-row deviation, its 99th percentile, label agreement and
the held-out metric, with confidence bounds); a refused export writes nothing. An accepted one carries a self-check
(``handlers/self_check.py``) that every server runs when it loads the model.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from handlers.artifact import MANIFEST_NAME, Manifest, read_held_out, read_manifest, write_artifact_manifest
from handlers.formats import FILES, FORMATS, OUTPUT_NAME
from handlers.pipeline import Pipeline
from handlers.self_check import record_self_check
from handlers.tasks import load_pipeline
from scripts.packaging.acceptance import CRITERIA, Criteria, ExportRejected, judge_classifier, judge_regressor
from scripts.packaging.quantize import (
    CalibrationError,
    calibration_batches,
    quantize_int8,
    quantize_static_int8,
    training_rows,
)

VERIFY_BATCH = 32
ONNX_OPSET = 17


def export(
    artifact_dir: Path,
    fmt: str,
    out: Path | None = None,
    manifest: Manifest | None = None,
    calibration: Path | None = None,
) -> Path:
    """Export ``artifact_dir`` to ``fmt`` (verified) and return the new artifact directory.

    ``manifest``: the artifact's, when the caller has read (and so verified) it already. ``calibration``: a JSONL
    file of training rows for static int8 (``scripts/packaging/quantize.py``; default: the bundled training data).
    """
    artifact_dir = Path(artifact_dir)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    manifest = manifest or read_manifest(artifact_dir)
    if manifest.model.get("format") != "eager":
        raise ValueError(f"{artifact_dir} holds a {manifest.model.get('format')} export; export from the eager one")
    if fmt == "eager":
        return artifact_dir
    out = Path(out) if out else artifact_dir.parent / f"{artifact_dir.name}.{fmt}"
    source_sha = manifest.files[manifest.model["file"]]
    if is_current(out, source_sha):
        print(f"{out} is a verified {fmt} export of the current weights; reusing it")
        take_serving_settings(out, manifest)
        return out

    start = time.perf_counter()
    eager = load_pipeline(artifact_dir, manifest=manifest, self_check=False)  # verified already: no re-hashing
    rows, targets = read_held_out(artifact_dir)
    example = eager.collate([eager.preprocess(row) for row in rows[:2]])
    batches = ()
    if fmt == "onnx_int8_static":
        batches = list(calibration_batches(eager, training_rows(manifest, calibration), eager.MODEL_INPUTS))
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staging = Path(tmp) / out.name
        shutil.copytree(artifact_dir, staging, ignore=lambda d, names: _eager_only(artifact_dir, d, names, manifest))
        module = eager.eager_module(manifest, artifact_dir)
        write_network(module, eager.MODEL_INPUTS, example, fmt, staging / FILES[fmt], batches)
        model = {k: v for k, v in manifest.model.items() if k != "verification"}
        model |= {"format": fmt, "file": FILES[fmt], "exported_from": source_sha}
        staged = replace(manifest, model=model)
        write_artifact_manifest(staging, staged)
        candidate = load_pipeline(staging, manifest=staged, self_check=False)
        report = verify(eager, candidate, rows, targets, CRITERIA[fmt])
        record_self_check(staging, candidate, rows, CRITERIA[fmt].max_deviation, reference=eager)
        report["export_seconds"] = round(time.perf_counter() - start, 1)
        write_artifact_manifest(staging, replace(manifest, model=model | {"verification": report}))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    print(f"exported {artifact_dir} to {fmt} in {report['export_seconds']}s: {out} ({describe(report)})")
    return out


def is_current(out: Path, source_sha: str) -> bool:
    """An existing export made from these exact weights, intact and verified."""
    try:
        model = read_manifest(out).model
    except (FileNotFoundError, ValueError):
        return False
    return model.get("exported_from") == source_sha and model.get("verification", {}).get("passed") is True


def take_serving_settings(out: Path, manifest: Manifest) -> None:
    """Serving settings edited in the source artifact since its export reach the export too: a reused export
    would otherwise be built with the settings it was exported with."""
    exported = read_manifest(out, verify=False)  # is_current has just checked every file's checksum
    if exported.serving != manifest.serving:
        write_artifact_manifest(out, replace(exported, serving=manifest.serving))
        print(f"{out}: serving settings taken from {manifest.name}'s manifest")


def _eager_only(artifact_dir: Path, directory: str, names: list[str], manifest) -> list[str]:
    """Files the export does not carry: the eager weights and the old manifest (rewritten)."""
    if Path(directory) != artifact_dir:
        return []
    return [n for n in names if n in (manifest.model["file"], MANIFEST_NAME)]


# ---- writers ---------------------------------------------------------------------------------------------
def write_network(
    module: torch.nn.Module,
    inputs: dict[str, tuple[str, ...]],
    example: dict[str, torch.Tensor],
    fmt: str,
    path: Path,
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> None:
    """Write ``module`` as ``fmt`` to ``path``; ``calibration``: batches of inputs for static int8."""
    args = tuple(example[name] for name in inputs)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings flag Python-level branches on shapes; the verification below is what proves the trace
            # right at other batch sizes and lengths.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module.eval(), args, check_trace=False)
        torch.jit.save(torch.jit.freeze(traced.eval()), str(path))
        return
    onnx_path = path if fmt == "onnx" else path.with_suffix(".fp32.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            module.eval(),
            args,
            str(onnx_path),
            input_names=list(inputs),
            output_names=[OUTPUT_NAME],
            dynamic_axes={name: dict(enumerate(dims)) for name, dims in inputs.items()} | {OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,  # one self-contained file, and faster to run here than the dynamo export (FIELD_NOTES)
        )
    module.eval()  # the legacy exporter leaves the module in train mode
    if fmt == "onnx_int8":
        quantize_int8(onnx_path, path)
    elif fmt == "onnx_int8_static":
        quantize_static_int8(onnx_path, path, calibration)
    if onnx_path != path:
        onnx_path.unlink()


# ---- verification ----------------------------------------------------------------------------------------
def verify(reference: Pipeline, candidate: Pipeline, rows: list, targets: list, criteria: Criteria) -> dict:
    """Run both pipelines on the same rows and judge the export (``scripts.packaging.acceptance``); raise
    ``ExportRejected``."""
    features = [reference.preprocess(row) for row in rows]
    deviations = np.zeros(len(rows))

    def compare(batch: range) -> tuple[torch.Tensor, torch.Tensor]:
        collated = reference.collate([features[i] for i in batch])
        ref, cand = reference.forward(collated).float(), candidate.forward(collated).float()
        if ref.shape != cand.shape:
            raise ExportRejected(f"the export answers shape {list(cand.shape)} where the eager model answers "
                                 f"{list(ref.shape)} (batch {len(batch)})")  # fmt: skip
        row_max = np.abs(reference.comparable(ref) - reference.comparable(cand)).max(axis=1)
        deviations[batch.start : batch.stop] = np.maximum(deviations[batch.start : batch.stop], row_max)
        return ref, cand

    for i in range(min(4, len(rows))):  # batch 1, at several sequence lengths
        compare(range(i, i + 1))
    starts = tqdm(range(0, len(rows), VERIFY_BATCH), desc="verifying", unit="batch", disable=None, leave=False)
    full = [compare(range(i, min(i + VERIFY_BATCH, len(rows)))) for i in starts]
    ref, cand = torch.cat([r for r, _ in full]), torch.cat([c for _, c in full])
    labels = reference.manifest.labels
    if labels:  # one decision per row, or per row and label for multi-label models, as in the model's answers
        if reference.multi_label:
            truth = np.array([[label in target for label in labels] for target in targets])
        else:
            truth = np.array([labels.index(t) for t in targets])
        before, after = (reference.decisions(outputs).reshape(-1) for outputs in (ref, cand))
        return judge_classifier(deviations, criteria, truth.reshape(-1), before, after)
    before, after = (np.asarray(reference.postprocess(o), dtype=np.float64).reshape(-1) for o in (ref, cand))
    return judge_regressor(deviations, criteria, np.asarray(targets, dtype=np.float64), before, after)


def describe(report: dict) -> str:
    agreement = f"label agreement {report['label_agreement']:.2%}; " if "label_agreement" in report else ""
    return (f"|export - eager| max {report['max_abs_deviation']:g}, 99th percentile {report['q99_abs_deviation']:g}; "
            f"{agreement}held-out {report['metric']} {report['eager']:.4f} -> {report['export']:.4f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="an eager artifact directory (with pipeline.json)")
    parser.add_argument("--format", required=True, choices=FORMATS[1:])
    parser.add_argument("--out", type=Path, help="output directory (default: <artifact>.<format>)")
    parser.add_argument("--calibration", type=Path, help="onnx_int8_static: JSONL training rows, one {\"input\": "
                        "...} per line (default: the bundled training data, for the models trained here)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        export(args.artifact, args.format, args.out, calibration=args.calibration)
    except ExportRejected as exc:
        raise SystemExit(f"export rejected: {exc}") from None
    except CalibrationError as exc:
        raise SystemExit(f"cannot calibrate: {exc}") from None


if __name__ == "__main__":
    main()
