"""Exports to every format: verified against eager on held-out rows, refused when they deviate, built by one flag."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import onnx
import pytest
import torch

import scripts.packaging.export as export_module
from handlers.artifact import read_held_out, read_manifest
from handlers.formats import FILES, FORMATS, load_runner
from handlers.nets import ResidualBlock
from handlers.tasks import load_pipeline
from scripts.packaging.acceptance import CRITERIA, ExportRejected
from scripts.packaging.build import build
from scripts.packaging.export import export
from scripts.packaging.quantize import CalibrationError, early_feed_forward, feed_forward_layers


@pytest.fixture(scope="module")
def artifacts(digits_artifact, tabular_cases, tmp_path_factory):
    """Private copies, so exports written beside them never touch other tests' artifacts."""
    root = tmp_path_factory.mktemp("formats")
    sources = {"digits": digits_artifact, "wine": tabular_cases["wine"].artifact}
    return {name: shutil.copytree(path, root / name) for name, path in sources.items()}


@pytest.mark.parametrize("fmt", FORMATS[1:])
@pytest.mark.parametrize("name", ["digits", "wine"])
def test_export_answers_like_eager_at_any_batch_size(artifacts, name, fmt):
    # Static int8 is calibrated on held-out rows here only because the fixtures keep no training rows: this checks
    # the mechanism, not the accuracy a real calibration gives.
    calibration = artifacts[name] / "held_out.jsonl" if fmt == "onnx_int8_static" else None
    out = export(artifacts[name], fmt, calibration=calibration)
    manifest = read_manifest(out)
    assert manifest.model["format"] == fmt and (out / FILES[fmt]).is_file()
    assert not (out / "model.safetensors").exists()  # the eager weights are not carried along
    report = manifest.model["verification"]
    assert report["passed"] and report["max_abs_deviation"] <= CRITERIA[fmt].max_deviation
    assert report["metric_drop_bounds"][0] <= CRITERIA[fmt].max_metric_drop

    eager, exported = load_pipeline(artifacts[name]), load_pipeline(out)
    rows, _ = read_held_out(artifacts[name])
    for size in (1, 5, 32):  # dynamic batch dim
        batch = eager.collate([eager.preprocess(row) for row in rows[:size]])
        expected, got = torch.softmax(eager.forward(batch), -1), torch.softmax(exported.forward(batch), -1)
        assert got.shape == expected.shape == (size, len(eager.labels))
        assert float((got - expected).abs().max()) <= CRITERIA[fmt].max_deviation


def test_a_current_export_is_reused_and_a_stale_one_replaced(artifacts):
    first = export(artifacts["digits"], "onnx")
    stamp = (first / "model.onnx").stat().st_mtime_ns
    assert export(artifacts["digits"], "onnx") == first and (first / "model.onnx").stat().st_mtime_ns == stamp
    manifest = json.loads((first / "pipeline.json").read_text())
    manifest["model"]["exported_from"] = "0" * 64  # as if the eager weights had been retrained since
    (first / "pipeline.json").write_text(json.dumps(manifest))
    export(artifacts["digits"], "onnx")
    assert (first / "model.onnx").stat().st_mtime_ns != stamp


def test_a_reused_export_takes_the_serving_settings_edited_in_its_source(artifacts):
    first = export(artifacts["digits"], "onnx")
    stamp = (first / "model.onnx").stat().st_mtime_ns
    path = artifacts["digits"] / "pipeline.json"
    original = path.read_text()
    source = json.loads(original)
    source["serving"] |= {"max_batch_size": 7, "triton": {"onnx_spinning": 1}}
    path.write_text(json.dumps(source))
    try:
        assert export(artifacts["digits"], "onnx") == first
        assert (first / "model.onnx").stat().st_mtime_ns == stamp  # reused, not exported again
        serving = read_manifest(first).serving  # read_manifest checks every file's checksum
        assert serving.max_batch_size == 7 and serving.for_server("triton").onnx_spinning == 1
    finally:
        path.write_text(original)


def test_an_export_that_deviates_is_refused_and_nothing_written(artifacts, tmp_path, monkeypatch):
    real = export_module.write_network

    def broken(module, inputs, example, fmt, path, *batches):  # an export with one weight perturbed
        with torch.no_grad():
            next(module.parameters()).add_(0.5)
        real(module, inputs, example, fmt, path, *batches)

    monkeypatch.setattr(export_module, "write_network", broken)
    with pytest.raises(ExportRejected, match="differ from the eager model's by up to"):
        export(artifacts["digits"], "torchscript", out=tmp_path / "rejected")
    assert not (tmp_path / "rejected").exists()


def test_a_label_swap_is_refused(artifacts, tmp_path, monkeypatch):
    real = export_module.write_network

    def shuffled(module, inputs, example, fmt, path, *batches):  # swap two classes' output rows: a wrong label mapping
        with torch.no_grad():
            last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight[[0, 1]] = last.weight[[1, 0]]
            last.bias[[0, 1]] = last.bias[[1, 0]]
        real(module, inputs, example, fmt, path, *batches)

    monkeypatch.setattr(export_module, "write_network", shuffled)
    with pytest.raises(ExportRejected) as refused:
        export(artifacts["digits"], "onnx", out=tmp_path / "rejected")
    assert "labels disagree with the eager model's" in str(refused.value)
    assert "held-out accuracy dropped" in str(refused.value)


def test_a_dropped_layer_is_refused(artifacts, tmp_path, monkeypatch):
    real = export_module.write_network

    def dropped(
        module, inputs, example, fmt, path, *batches
    ):  # the first residual block (same shape in and out) skipped
        name = next(name for name, child in module.named_modules() if isinstance(child, ResidualBlock))
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent), attr, torch.nn.Identity())
        real(module, inputs, example, fmt, path, *batches)

    monkeypatch.setattr(export_module, "write_network", dropped)
    with pytest.raises(ExportRejected, match="differ from the eager model's by up to"):
        export(artifacts["digits"], "torchscript", out=tmp_path / "rejected")


def test_build_format_flag_packages_the_verified_export(artifacts, tmp_path):
    build(artifacts["digits"], model_store=tmp_path / "store", triton_repository=tmp_path / "repo", fmt="onnx_int8")
    packaged = tmp_path / "repo" / "digits" / "1" / "artifact"
    assert read_manifest(packaged).model["format"] == "onnx_int8" and (packaged / "model.int8.onnx").is_file()
    with zipfile.ZipFile(tmp_path / "store" / "digits.mar") as mar:
        names = mar.namelist()
        assert "artifact/model.int8.onnx" in names and "artifact/model.safetensors" not in names
    with pytest.raises(ValueError, match="build --format torchscript from the eager artifact"):
        build(artifacts["digits"].parent / "digits.onnx_int8", model_store=tmp_path, fmt="torchscript")


@pytest.mark.parametrize("fmt", ["onnx_int8", "onnx_int8_static"])
def test_export_of_a_text_model_handles_any_sequence_length(text_artifact, exported, fmt):
    artifact, out = text_artifact, exported("sentiment", fmt)
    report = read_manifest(out).model["verification"]
    assert report["passed"] and report["held_out_rows"] > 100
    eager, exported = load_pipeline(artifact), load_pipeline(out)
    texts = ["Great.", "A slow, muddled and far too long film that never finds its footing " * 8]
    expected = eager.handle_tensors([{"TEXT": np.array([[t.encode()]], dtype=np.object_)} for t in texts])
    got = exported.handle_tensors([{"TEXT": np.array([[t.encode()]], dtype=np.object_)} for t in texts])
    for e, g in zip(expected, got, strict=True):
        assert np.abs(e["PROBABILITIES"] - g["PROBABILITIES"]).max() <= CRITERIA[fmt].max_deviation


def test_static_int8_fixes_activation_ranges_and_keeps_the_early_feed_forward_in_fp32(exported):
    out = exported("sentiment", "onnx_int8_static")  # calibrated on the bundled training sentences (the default)
    graph = onnx.load(str(out / FILES["onnx_int8_static"])).graph
    constants = {t.name for t in graph.initializer}
    made_by = {output: node for node in graph.node for output in node.output}
    # Activations are quantized with a scale fixed at export time (an initializer), not computed per batch.
    activation_quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]
    assert activation_quantizers and all(n.input[1] in constants for n in activation_quantizers)
    assert not [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    layers = feed_forward_layers(out / FILES["onnx_int8_static"])
    early = set(early_feed_forward(layers))
    assert early and len(early) < len(layers)
    for node in graph.node:
        if node.name in layers:
            weight = made_by.get(node.input[1])
            quantized = weight is not None and weight.op_type == "DequantizeLinear"
            assert quantized == (node.name not in early), node.name


def test_a_static_int8_answer_does_not_depend_on_the_rest_of_its_batch(text_artifact, exported):
    # Fixed activation ranges: unlike dynamic int8, whose ranges are measured on each batch, a row's integers are the
    # same alone or batched (float noise aside, in the fp32 operators between the quantized ones).
    pipeline = load_pipeline(exported("sentiment", "onnx_int8_static"))
    rows, _ = read_held_out(text_artifact)
    features = [pipeline.preprocess(row) for row in rows[:32]]
    batched = pipeline.comparable(pipeline.forward(pipeline.collate(features)))
    for i in range(4):
        alone = pipeline.comparable(pipeline.forward(pipeline.collate([features[i]])))[0]
        assert np.abs(alone - batched[i]).max() <= 1e-4


def test_static_int8_without_calibration_rows_says_where_to_get_them(artifacts, tmp_path):
    with pytest.raises(CalibrationError, match="pass --calibration FILE"):
        export(artifacts["wine"], "onnx_int8_static", out=tmp_path / "wine.static")
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"input": {"alcohol": 13.2}}\n{"text": "no input key"}\n')
    with pytest.raises(CalibrationError, match="line 2"):
        export(artifacts["wine"], "onnx_int8_static", out=tmp_path / "wine.static", calibration=bad)
    bad.write_text('{"input": {"alcohol": 13.2}}\n')  # a row the model's preprocessing refuses
    with pytest.raises(CalibrationError, match="calibration row .*alcohol.* refused"):
        export(artifacts["wine"], "onnx_int8_static", out=tmp_path / "wine.static", calibration=bad)
    assert not (tmp_path / "wine.static").exists()


def test_an_artifact_without_held_out_rows_says_how_to_fix_it(artifacts, tmp_path):
    artifact = shutil.copytree(artifacts["wine"], tmp_path / "wine")
    (artifact / "held_out.jsonl").unlink()
    manifest = json.loads((artifact / "pipeline.json").read_text())
    del manifest["files"]["held_out.jsonl"]
    (artifact / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="retrain the model"):
        export(artifact, "onnx")


def test_serving_threads_sets_the_runtime_threads_of_one_forward_pass(artifacts):
    out = export(artifacts["digits"], "onnx")  # reused when the parametrized test above made it
    manifest = read_manifest(out)
    runner = load_runner(manifest.model, out, "cpu", ["pixels"], eager=None, threads=1)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="serving.threads must be 0"):
        load_runner(manifest.model, out, "cpu", ["pixels"], eager=None, threads=-1)
    spinning = lambda runner: runner.session.get_session_options().get_session_config_entry(  # noqa: E731
        "session.intra_op.allow_spinning")  # fmt: skip
    assert spinning(runner) == "0"  # off unless serving.onnx_spinning asks for it
    assert spinning(load_runner(manifest.model, out, "cpu", ["pixels"], eager=None, spinning=True)) == "1"
