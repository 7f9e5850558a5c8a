"""Write a Triton Python-backend model directory for an artifact.

    <repository>/<name>/config.pbtxt        generated from tritonclient's model_config_pb2 schema
    <repository>/<name>/1/model.py          a one-line entry point importing handlers.triton_model
    <repository>/<name>/1/handlers/         the runtime package
    <repository>/<name>/1/artifact/         weights and manifest

The Python backend's stub ignores PYTHONPATH; ``EXECUTION_ENV_PATH`` points it at the Python environment
that has torch, numpy (< 2) and the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import Manifest
from handlers.pipeline import TensorSpec
from handlers.tasks import pipeline_class
from scripts.packaging.generation_build import TRITON_ENTRY, is_language_model, triton_config
from scripts.packaging.probe import write_probe
from scripts.packaging.runtime import copy_runtime, entry_point_source

ENTRY_POINT = entry_point_source(
    "Triton entry point of a maas-handlers model: the adapter lives in this version's handlers package.",
    "from handlers.triton_model import TritonPythonModel  # noqa: E402,F401",
)


def model_config(
    manifest: Manifest, artifact_dir: Path, name: str, python_env: Path, instances: int = 1
) -> mc.ModelConfig:
    task = pipeline_class(manifest, artifact_dir)
    serving = manifest.serving
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=serving.max_batch_size)
    for spec in task.input_specs(manifest):
        config.input.append(tensor_message(mc.ModelInput, spec))
    for spec in task.output_specs(manifest):
        config.output.append(tensor_message(mc.ModelOutput, spec))
    add_dynamic_batching(config, round(serving.max_batch_delay_ms * 1000), round(serving.deadline_ms * 1000))
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances))
    # A task may publish what a client needs to know (the tabular feature schema) in the config, through an
    # optional classmethod ``config_parameters(manifest) -> dict[str, str]``.
    for key, value in getattr(task, "config_parameters", lambda _: {})(manifest).items():
        config.parameters[key].string_value = value
    config.parameters["EXECUTION_ENV_PATH"].string_value = str(python_env)
    return config


def add_dynamic_batching(config: mc.ModelConfig, delay_us: int, deadline_us: int = 0) -> None:
    """``deadline_us``: a request still queued after it is refused, uncomputed (0: none); a request may set a
    shorter ``timeout`` (Triton honours one only below a non-zero default)."""
    if config.max_batch_size > 1:  # with a single row per execute there is nothing to batch
        # Measured (reports/benchmark.md): no added delay is best; requests that queue while the instance is busy
        # still form the next batch. SetInParent keeps an all-default dynamic_batching block present.
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
        if deadline_us > 0:
            policy = config.dynamic_batching.default_queue_policy
            policy.timeout_action = mc.ModelQueuePolicy.REJECT
            policy.default_timeout_microseconds = deadline_us
            policy.allow_timeout_override = True


def tensor_message(message_type, spec: TensorSpec):
    message = message_type(name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=list(spec.dims))
    if spec.optional:
        message.optional = True
    return message


def build_triton_model(
    artifact_dir: Path, manifest: Manifest, repository: Path, name: str, python_env: Path, instances: int = 1
) -> Path:
    model_dir = repository / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    config = write_version(artifact_dir, manifest, model_dir, 1, python_env, instances)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return model_dir


def write_version(artifact_dir: Path, manifest: Manifest, model_dir: Path, version: int, python_env: Path,
                  instances: int = 1) -> mc.ModelConfig:  # fmt: skip
    """Write ``<model_dir>/<version>/`` (the runtime, the artifact, the probe, the entry point); return the model's
    configuration for it (``maas serve deploy`` adds a version beside the others, under the config they share)."""
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    copy_runtime(artifact_dir, version_dir, manifest.serving)
    write_probe(artifact_dir, manifest, version_dir)
    name = model_dir.name
    if is_language_model(manifest):
        (version_dir / "model.py").write_text(TRITON_ENTRY)
        return triton_config(manifest, name, python_env)
    (version_dir / "model.py").write_text(ENTRY_POINT)
    return model_config(manifest, artifact_dir, name, python_env, instances)
