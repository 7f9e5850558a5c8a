"""Triton ensembles: configs valid by Triton's schema and wired end to end; the Python stages chained by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import read_manifest
from scripts.packaging.triton_ensemble import BACKENDS, build_triton_ensemble
from scripts.serving.standins import install_fake_pb_utils

FORMAT_FOR = {"onnxruntime": "onnx_int8", "libtorch": "torchscript", "python": "onnx"}
MODEL_FILE = {"onnxruntime": "model.onnx", "libtorch": "model.pt"}


def read_configs(repository: Path) -> dict[str, mc.ModelConfig]:
    """Every config.pbtxt, parsed strictly by Triton's own schema (an unknown field fails the parse)."""
    return {
        p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repository.glob("*/config.pbtxt")
    }


@pytest.mark.parametrize("task", ["digits", "sentiment"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_ensemble_configs_are_valid_and_wired(exported, tmp_path, task, backend):
    artifact = exported(task, FORMAT_FOR[backend])
    build_triton_ensemble(artifact, read_manifest(artifact), tmp_path, task, Path(sys.prefix), backend)
    configs = read_configs(tmp_path)
    assert set(configs) == {task, f"{task}_preprocess", f"{task}_network", f"{task}_postprocess"}
    ensemble, network = configs[task], configs[f"{task}_network"]
    assert ensemble.platform == "ensemble"
    assert (network.platform or network.backend) == BACKENDS[backend][0]
    if backend in MODEL_FILE:
        assert (tmp_path / f"{task}_network" / "1" / MODEL_FILE[backend]).is_file()
        assert not (tmp_path / f"{task}_preprocess" / "1" / "artifact" / read_manifest(artifact).model["file"]).exists()

    # Follow the tensors: every step reads tensors that exist, with the dtype and dims its model declares.
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size == ensemble.max_batch_size
        inputs, outputs = {t.name: t for t in model.input}, {t.name: t for t in model.output}
        assert set(step.input_map) == set(inputs)
        for name, tensor in step.input_map.items():
            assert available[tensor] == (inputs[name].data_type, list(inputs[name].dims)), (step.model_name, name)
        for name, tensor in step.output_map.items():
            available[tensor] = (outputs[name].data_type, list(outputs[name].dims))
    for output in ensemble.output:
        assert available[output.name] == (output.data_type, list(output.dims))
    if task == "sentiment":  # token ids: a dynamic sequence dim
        assert [list(t.dims) for t in network.input] == [[-1], [-1]]


def test_a_backend_refuses_a_format_it_cannot_run(exported, tmp_path):
    artifact = exported("digits", "torchscript")
    with pytest.raises(ValueError, match="onnxruntime_onnx backend cannot run a torchscript artifact"):
        build_triton_ensemble(artifact, read_manifest(artifact), tmp_path, "digits", Path(sys.prefix), "onnxruntime")


def python_stages(artifact: Path, repository: Path) -> dict:
    """The three Python stages of a built ensemble, initialized as tritonserver would (with the fake pb_utils)."""
    from handlers.triton_stages import TritonPythonModel

    build_triton_ensemble(artifact, read_manifest(artifact), repository, "digits", Path(sys.prefix), "python")
    configs = read_configs(repository)
    stages = {}
    for stage in ("preprocess", "network", "postprocess"):
        config = {  # the JSON form tritonserver hands to initialize
            "input": [{"name": t.name} for t in configs[f"digits_{stage}"].input],
            "output": [
                {"name": t.name, "data_type": mc.DataType.Name(t.data_type)} for t in configs[f"digits_{stage}"].output
            ],
            "parameters": {"maas_stage": {"string_value": stage}},
        }
        stages[stage] = TritonPythonModel()
        stages[stage].initialize(
            {
                "model_config": json.dumps(config),
                "model_repository": str(repository / f"digits_{stage}"),
                "model_version": "1",
                "model_name": f"digits_{stage}",
            }  # fmt: skip
        )
    return stages


def test_python_stages_chained_answer_like_the_single_model(exported, tmp_path, held_out_digits):
    pb = install_fake_pb_utils()
    from handlers.tasks import load_pipeline

    artifact = exported("digits", "onnx")
    stages = python_stages(artifact, tmp_path)

    def call(stage, requests):
        responses = stages[stage].execute(requests)
        return [
            r if r.error else pb.InferenceRequest([pb.Tensor(t.name(), t.as_numpy()) for t in r.output_tensors])
            for r in responses
        ]

    images, labels = held_out_digits[0][:4].astype(np.float32), held_out_digits[1][:4]
    requests = [
        pb.InferenceRequest([pb.Tensor("PIXELS", images[:3])]),
        pb.InferenceRequest([pb.Tensor("PIXELS", np.full((1, 8, 8), 99, np.float32))]),  # out of range
        pb.InferenceRequest([pb.Tensor("PIXELS", images[3:])]),
    ]
    prepared = call("preprocess", requests)
    assert prepared[1].error.code() == "INVALID_ARG" and "pixel values must lie in" in prepared[1].error.message()
    valid = [prepared[0], prepared[2]]
    answers = call("postprocess", call("network", valid))
    expected = load_pipeline(artifact).handle_tensors([{"PIXELS": images[:3]}, {"PIXELS": images[3:]}])
    for answer, reference in zip(answers, expected, strict=True):
        tensors = {t.name(): t.as_numpy() for t in answer.inputs}
        np.testing.assert_allclose(tensors["PROBABILITIES"], reference["PROBABILITIES"], atol=1e-6)
    got = [v.decode() for a in answers for v in {t.name(): t.as_numpy() for t in a.inputs}["LABEL"][:, 0]]
    assert got == [str(y) for y in labels]


def test_network_stage_retries_alone_when_the_stacked_pass_fails(exported, tmp_path, held_out_digits):
    pb = install_fake_pb_utils()
    network = python_stages(exported("digits", "onnx"), tmp_path)["network"]
    pixels = held_out_digits[0][:2, None].astype(np.float32) / 16
    requests = [
        pb.InferenceRequest([pb.Tensor("pixels", pixels[:1])]),
        pb.InferenceRequest([pb.Tensor("pixels", np.zeros((1, 1, 4, 4), np.float32))]),  # cannot stack, nor run
        pb.InferenceRequest([pb.Tensor("pixels", pixels[1:])]),
    ]
    first, poisoned, last = network.execute(requests)
    assert poisoned.error.code() == "INTERNAL"
    assert [r.error for r in (first, last)] == [None, None]
    assert [r.output_tensors[0].as_numpy().shape for r in (first, last)] == [(1, 10), (1, 10)]
