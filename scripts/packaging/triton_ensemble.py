"""Write a Triton ensemble for an artifact: Python pre/postprocessing around a network on a native backend.

    <repository>/<name>/               ensemble: the task's own inputs and outputs (the same contract as the
                                       single Python model of scripts/packaging/triton_repository.py)
    <repository>/<name>_preprocess/    Python: request -> the network's input tensors (handlers/triton_stages.py)
    <repository>/<name>_network/       onnxruntime_onnx (model.onnx), pytorch_libtorch (model.pt), or python
    <repository>/<name>_postprocess/   Python: the network's output -> LABEL / PROBABILITY / ... or VALUE

``backend`` picks the network's runner: ``onnxruntime`` needs an onnx or onnx_int8(_static) artifact, ``libtorch`` a
torchscript one, ``python`` runs any format with this project's runners. The tritonserver build on these machines
has only the Python backend, so only ``python`` ensembles can be served here; the others are written the same way
and their configs are checked against Triton's schema (``model_config_pb2``).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import Manifest, read_held_out
from handlers.formats import FORMATS, OUTPUT_NAME
from handlers.pipeline import TensorSpec
from handlers.tasks import load_pipeline, pipeline_class
from scripts.packaging.probe import write_probe
from scripts.packaging.runtime import copy_runtime, entry_point_source
from scripts.packaging.triton_repository import add_dynamic_batching, tensor_message

# backend -> (Triton platform/backend, the artifact formats it runs, the network's output name there)
BACKENDS = {
    "onnxruntime": ("onnxruntime_onnx", ("onnx", "onnx_int8", "onnx_int8_static"), OUTPUT_NAME),
    "libtorch": ("pytorch_libtorch", ("torchscript",), "output__0"),  # the backend's naming convention for outputs
    "python": ("python", FORMATS, OUTPUT_NAME),
}
DTYPES = {"torch.float32": "TYPE_FP32", "torch.int64": "TYPE_INT64"}
STAGE_ENTRY_POINT = entry_point_source(
    "Triton entry point of one stage of a maas-handlers ensemble (its config's maas_stage parameter says which).",
    "from handlers.triton_stages import TritonPythonModel  # noqa: E402,F401",
)


def network_specs(artifact_dir: Path, manifest: Manifest) -> tuple[list[TensorSpec], TensorSpec]:
    """The network's input tensors (dtype, and dims with the dynamic ones as -1) from one held-out row, and its
    output: one value per label, or one regression value."""
    pipeline = load_pipeline(artifact_dir, manifest=manifest, with_model=False)
    rows, _ = read_held_out(artifact_dir)
    batch = pipeline.collate([pipeline.preprocess(rows[0])])
    inputs = []
    for name, dynamic in pipeline.MODEL_INPUTS.items():
        tensor = batch[name]
        dims = tuple(-1 if d < len(dynamic) else size for d, size in enumerate(tensor.shape))[1:]
        inputs.append(TensorSpec(name, DTYPES[str(tensor.dtype)], dims))
    return inputs, TensorSpec(OUTPUT_NAME, "TYPE_FP32", (len(manifest.labels) if manifest.labels else 1,))


def ensemble_configs(
    artifact_dir: Path, manifest: Manifest, name: str, python_env: Path, backend: str
) -> dict[str, mc.ModelConfig]:
    """Every model's config, keyed by model name."""
    platform, formats, network_output = BACKENDS[backend]
    fmt = manifest.model.get("format")
    if fmt not in formats:
        raise ValueError(f"Triton's {platform} backend cannot run a {fmt} artifact; export it to one of {formats}")
    task = pipeline_class(manifest, artifact_dir)
    task_inputs, task_outputs = task.input_specs(manifest), task.output_specs(manifest)
    net_inputs, net_output = network_specs(artifact_dir, manifest)
    max_batch = manifest.serving.max_batch_size
    delay_us = round(manifest.serving.max_batch_delay_ms * 1000)
    deadline_us = round(manifest.serving.deadline_ms * 1000)  # each stage's queue

    def model(model_name: str, inputs, outputs, stage: str | None) -> mc.ModelConfig:
        config = mc.ModelConfig(name=model_name, max_batch_size=max_batch)
        config.input.extend(tensor_message(mc.ModelInput, s) for s in inputs)
        config.output.extend(tensor_message(mc.ModelOutput, s) for s in outputs)
        config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
        add_dynamic_batching(config, delay_us, deadline_us)
        if stage:
            config.backend = "python"
            config.parameters["maas_stage"].string_value = stage
            config.parameters["EXECUTION_ENV_PATH"].string_value = str(python_env)
        return config

    if backend == "python":
        network = model(f"{name}_network", net_inputs, [net_output], "network")
    else:
        network = model(f"{name}_network", net_inputs, [replace(net_output, name=network_output)], None)
        network.platform = platform
    configs = {
        f"{name}_preprocess": model(f"{name}_preprocess", task_inputs, net_inputs, "preprocess"),
        f"{name}_network": network,
        f"{name}_postprocess": model(f"{name}_postprocess", [net_output], task_outputs, "postprocess"),
    }
    ensemble = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    ensemble.input.extend(tensor_message(mc.ModelInput, s) for s in task_inputs)
    ensemble.output.extend(tensor_message(mc.ModelOutput, s) for s in task_outputs)
    steps = ensemble.ensemble_scheduling.step
    steps.add(
        model_name=f"{name}_preprocess",
        model_version=-1,
        input_map={s.name: s.name for s in task_inputs},
        output_map={s.name: f"net_{s.name}" for s in net_inputs},
    )
    steps.add(
        model_name=f"{name}_network",
        model_version=-1,
        input_map={s.name: f"net_{s.name}" for s in net_inputs},
        output_map={network.output[0].name: "net_output"},
    )
    steps.add(
        model_name=f"{name}_postprocess",
        model_version=-1,
        input_map={OUTPUT_NAME: "net_output"},
        output_map={s.name: s.name for s in task_outputs},
    )
    configs[name] = ensemble
    return configs


def build_triton_ensemble(
    artifact_dir: Path, manifest: Manifest, repository: Path, name: str, python_env: Path, backend: str
) -> Path:
    configs = ensemble_configs(artifact_dir, manifest, name, python_env, backend)
    model_file = manifest.model["file"]
    for model_name, config in configs.items():
        model_dir = repository / model_name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        version_dir = model_dir / "1"
        version_dir.mkdir(parents=True)
        if config.backend == "python":  # a stage: the runtime, and the artifact (the network only where it runs)
            without = None if model_name.endswith("_network") else model_file
            copy_runtime(artifact_dir, version_dir, manifest.serving, without=without)
            (version_dir / "model.py").write_text(STAGE_ENTRY_POINT)
        elif config.platform != "ensemble":  # the native backend's model file, under the name it expects
            suffix = ".pt" if config.platform == "pytorch_libtorch" else ".onnx"
            shutil.copyfile(Path(artifact_dir) / model_file, version_dir / f"model{suffix}")
        else:  # the ensemble clients call: the one the deep health check probes
            write_probe(artifact_dir, manifest, version_dir)
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return repository / name
