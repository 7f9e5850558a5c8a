"""The format benchmark's pure parts: export bookkeeping, choosing a format, the report. No servers, no training."""

from __future__ import annotations

import json

import pytest

from handlers.artifact import Manifest, write_artifact_manifest
from scripts.benchmarking.benchmark_formats import fill_metrics, parse_args, prepare_format
from scripts.benchmarking.formats_report import (
    ENSEMBLE_KEY,
    HEADER,
    count_errors,
    format_rows,
    render_markdown,
    suggest_formats,
)
from scripts.packaging.export import ExportRejected


def _served(grpc_c16: float, errors: int = 0) -> dict:
    def point(c, throughput, p50):
        return {"concurrency": c, "throughput": throughput, "p50_ms": p50, "errors": errors, "server": {}}

    return {
        "triton_grpc": {"c1": point(1, 150.0, 6.5), "c16": point(16, grpc_c16, 12.0)},
        "torchserve_rest": {"c1": point(1, 90.0, 11.0), "c16": point(16, grpc_c16 / 4, 60.0)},
    }


def _ok(export_metric: float, grpc_c16: float | None, b32: float = 3000.0, eager_metric: float = 0.97) -> dict:
    entry = {
        "status": "ok",
        "file": "model.onnx",
        "size_mb": 0.3148,
        "export": {"seconds_this_run": 0.1, "reused": True, "export_seconds": 1.2},
        "verification": {"metric": "accuracy", "eager": eager_metric, "export": export_metric, "export_seconds": 1.2},
        "in_process": [
            {"batch_size": 1, "items_per_s": 1200.0, "ms_per_batch_p50": 0.8},
            {"batch_size": 32, "items_per_s": b32, "ms_per_batch_p50": 10.0},
        ],
    }
    if grpc_c16 is not None:
        entry["served"] = _served(grpc_c16)
    return entry


REJECTED = {
    "status": "rejected",
    "reason": "held-out accuracy moved from 0.9737 to 0.9561",
    "export": {"seconds_this_run": 0.4},
}


def _result(formats: dict, task: str = "image_classification", model: str = "digits", served: bool = True) -> dict:
    data = {"task": task, "requests": "x", "formats": formats}
    data["eager_metric"] = {"metric": "accuracy", "value": 0.97, "source": "verification"}
    fill_metrics(data)
    return {
        "meta": {
            "command": ".venv/bin/python -m scripts.benchmarking.benchmark_formats --models digits",
            "date": "2026-11-22 11:00:00 UTC",
            "machine": "x86_64, 2 cores",
            "duration_s": 2.0,
            "warmup_s": 1.0,
            "in_process_seconds": 1.0,
            "torchserve_warmup_requests": 300,
            "served": served,
            "load_average_at_start": [1.0, 1.0, 1.0],
            "wall_s": 100.0,
        },
        "models": {model: data},
    }


def test_fill_metrics_uses_each_exports_verification_and_eager_for_eager():
    formats = {"eager": {**_ok(0.97, 100.0), "verification": None}, "onnx_int8": _ok(0.95, 300.0), "x": REJECTED}
    result = _result(formats)
    assert formats["eager"]["metric"] == {"name": "accuracy", "eager": 0.97, "export": 0.97}
    assert formats["onnx_int8"]["metric"]["export"] == 0.95
    assert "metric" not in result["models"]["digits"]["formats"]["x"]


def test_suggestion_is_the_fastest_format_within_one_point():
    result = _result({
        "eager": _ok(0.97, 100.0),
        "torchscript": _ok(0.97, 120.0),
        "onnx": _ok(0.9650, 200.0),  # 0.5 point lower: qualifies
        "onnx_int8": _ok(0.9550, 400.0),  # 1.5 points lower: out, however fast
    })  # fmt: skip
    suggestion = suggest_formats(result)["image_classification"]
    assert suggestion["format"] == "onnx"
    assert suggestion["basis"] == "triton_grpc c=16"
    assert set(suggestion["candidates"]) == {"eager", "torchscript", "onnx"}
    assert "2.00x eager" in suggestion["why"]


def test_suggestion_allows_exactly_one_point():
    result = _result({"eager": _ok(0.97, 100.0), "onnx_int8": _ok(0.96, 150.0)})
    assert suggest_formats(result)["image_classification"]["format"] == "onnx_int8"


def test_rejected_or_erroring_formats_are_never_suggested():
    erroring = _ok(0.97, 900.0)
    erroring["served"]["triton_grpc"]["c16"]["errors"] = 3
    result = _result({"eager": _ok(0.97, 100.0), "onnx": erroring, "onnx_int8": REJECTED})
    assert suggest_formats(result)["image_classification"]["format"] == "eager"
    assert count_errors(result) == 3


def test_suggestion_without_servers_ranks_by_in_process_batch_32():
    result = _result({"eager": _ok(0.97, None, b32=900.0), "torchscript": _ok(0.97, None, b32=1500.0)}, served=False)
    suggestion = suggest_formats(result)["image_classification"]
    assert suggestion["format"] == "torchscript" and suggestion["basis"] == "in-process b=32"


def test_suggestion_over_several_models_of_a_task_needs_the_format_on_all():
    first = _result({"eager": _ok(0.97, 100.0), "onnx": _ok(0.97, 300.0)}, task="tabular_classification")
    second = _result({"eager": _ok(0.97, 100.0), "onnx": REJECTED}, task="tabular_classification", model="wine")
    first["models"].update(second["models"])
    suggestion = suggest_formats(first)["tabular_classification"]
    assert suggestion["format"] == "eager" and suggestion["models"] == ["digits", "wine"]


def test_no_qualifying_format():
    result = _result({"onnx_int8": REJECTED})
    assert suggest_formats(result)["image_classification"]["format"] is None


def test_table_rows_and_markdown():
    result = _result(
        {"eager": {**_ok(0.97, 100.0), "verification": None}, "onnx": _ok(0.9650, 200.0), "onnx_int8": REJECTED}
    )
    result["suggestions"] = suggest_formats(result)
    rows = format_rows(result)
    assert all(len(row) == len(HEADER) for row in rows)
    eager, onnx, rejected = rows
    assert eager[:4] == ["digits", "eager", "0.315", "accuracy 0.9700 -> 0.9700"]
    assert format_rows(_result({"eager": {**_ok(0.97, None), "size_mb": 0.000276}}))[0][2] == "0.000276"
    assert eager[-1] == "-"
    assert onnx[3] == "accuracy 0.9700 -> 0.9650"
    assert onnx[4] == "1,200.0 / 3,000.0" and onnx[5] == "0.80"
    assert onnx[6:10] == ["6.50", "200.0", "11.00", "50.0"]
    assert onnx[-1] == "1.2 (reused)"
    assert rejected[1] == "onnx_int8" and rejected[3].startswith("rejected: held-out accuracy moved")
    assert rejected[4:10] == ["-"] * 6 and rejected[-1] == "0.4"

    md = render_markdown(result)
    assert result["meta"]["command"] in md and "x86_64, 2 cores" in md
    assert "| image_classification | digits | **onnx** |" in md and "within one point of eager | eager 100.0 |" in md
    assert "Rejected exports:" in md and "- digits onnx_int8: held-out accuracy moved" in md
    assert "Errors (failed requests, all served points, warm-ups included): **0**." in md
    json.dumps(result)  # the report is plain JSON


def test_served_errors_show_in_the_table():
    entry = _ok(0.97, 100.0)
    entry["served"]["torchserve_rest"]["c16"]["errors"] = 2
    (row,) = format_rows(_result({"eager": entry}))
    assert row[9] == "25.0 (2 errors)"


def _artifact(tmp_path):
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"0" * 2_000)
    manifest = Manifest("tiny", "tabular_classification", {"format": "eager", "file": "model.safetensors"}, ["a", "b"])
    write_artifact_manifest(directory, manifest)
    return directory, manifest


def test_prepare_format_records_a_rejected_export(tmp_path):
    artifact, _ = _artifact(tmp_path)

    def rejecting(artifact_dir, fmt):
        raise ExportRejected("the export's outputs differ from the eager model's by up to 0.4")

    entry, directory = prepare_format(artifact, "onnx_int8", exporter=rejecting)
    assert directory is None
    assert entry["status"] == "rejected" and "differ" in entry["reason"]
    assert entry["export"]["seconds_this_run"] >= 0


def test_prepare_format_other_errors_propagate(tmp_path):
    artifact, _ = _artifact(tmp_path)

    def broken(artifact_dir, fmt):
        raise FileNotFoundError("held_out.jsonl is missing")

    with pytest.raises(FileNotFoundError):
        prepare_format(artifact, "onnx", exporter=broken)


def test_prepare_format_reads_size_and_verification(tmp_path):
    artifact, manifest = _artifact(tmp_path)
    export_dir = tmp_path / "tiny.onnx"
    export_dir.mkdir()
    (export_dir / "model.onnx").write_bytes(b"0" * 500_000)
    verification = {"metric": "accuracy", "eager": 0.9, "export": 0.9, "export_seconds": 0.7, "passed": True}
    model = {"format": "onnx", "file": "model.onnx", "exported_from": "elsewhere", "verification": verification}
    write_artifact_manifest(export_dir, Manifest("tiny", manifest.task, model, ["a", "b"]))

    entry, directory = prepare_format(artifact, "onnx", exporter=lambda artifact_dir, fmt: export_dir)
    assert directory == export_dir
    assert entry["size_mb"] == pytest.approx(0.5) and entry["file"] == "model.onnx"
    assert entry["export"]["export_seconds"] == 0.7 and entry["export"]["reused"] is False  # other weights' export
    assert entry["verification"] == verification

    eager, same = prepare_format(artifact, "eager", exporter=lambda artifact_dir, fmt: artifact_dir)
    assert same == artifact and eager["size_mb"] == pytest.approx(0.002) and eager["verification"] is None


def test_parse_args_defaults_and_unknown_format():
    args = parse_args([])
    assert args.models == ["sentiment", "digits", "breast_cancer"] and args.served is True
    assert args.formats == ["eager", "torchscript", "onnx", "onnx_int8", "onnx_int8_static"]
    args = parse_args(["--models", "digits,breast_cancer", "--duration", "2", "--no-served", "--formats", "eager,onnx"])
    assert args.models == ["digits", "breast_cancer"] and args.duration == 2.0 and not args.served
    with pytest.raises(SystemExit):
        parse_args(["--formats", "tensorrt"])


def test_ensemble_table_appears_only_when_ensembles_were_measured():
    plain = _result({"eager": _ok(0.97, 1000.0)})
    plain["suggestions"] = suggest_formats(plain)
    assert "Triton ensembles" not in render_markdown(plain)
    entry = _ok(0.97, 1000.0)
    entry["served"][ENSEMBLE_KEY] = {
        key: {**point, "p50_ms": 9.25} for key, point in entry["served"]["triton_grpc"].items()
    }
    measured = _result({"eager": entry})
    measured["suggestions"] = suggest_formats(measured)
    text = render_markdown(measured)
    assert "Triton ensembles" in text and "| digits | eager | 6.50 | 9.25 |" in text
