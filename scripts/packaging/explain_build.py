"""Explainers in the builds: what ``handlers/explain`` runs on, in the ``.mar`` and as Triton's ``<model>_explain``.

An explanation needs gradients. A model served as an ONNX (or int8) export has none, so the build puts the eager
artifact it was exported from (and verified against) beside it as ``explain/``; an eager or TorchScript model is
explained as it is served. Triton gets a sibling model, ``<model>_explain``, with the model's inputs and one
``EXPLANATION`` output (``handlers/triton_explain.py``); TorchServe answers ``/explanations/<model>`` in the model's
own workers, as TorchServe is built to.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import Manifest, read_manifest
from handlers.explain import OUTPUT, SOURCE_DIR, explainable
from handlers.pipeline import TensorSpec
from handlers.tasks import pipeline_class
from scripts.packaging.runtime import copy_artifact, copy_runtime, entry_point_source
from scripts.packaging.triton_repository import add_dynamic_batching, tensor_message

EXPLAINER_SUFFIX = "_explain"
ENTRY_POINT = entry_point_source(
    "Triton entry point of a maas-handlers explainer: the adapter lives in this version's handlers package.",
    "from handlers.triton_explain import TritonPythonModel  # noqa: E402,F401",
)


def explain_source(source: Path, served: Manifest) -> Path | None:
    """The eager artifact to ship beside ``served`` (an export of it), or None: the served model explains itself, or
    nothing can explain it (a task without an explainer, or an export whose source is not at hand)."""
    if not explainable(served.task, "eager") or served.model.get("format") in ("eager", "torchscript"):
        return None
    try:
        manifest = read_manifest(source, without_model=True)
    except (FileNotFoundError, ValueError):
        return None
    return source if manifest.model.get("format") == "eager" else None


def copy_explain_source(source: Path, destination: Path, manifest: Manifest) -> None:
    """``<destination>/explain``: the eager artifact, with the build's serving settings (the explain limits)."""
    copy_artifact(source, destination / SOURCE_DIR, manifest.serving)


def build_triton_explainer(served: Path, source: Path | None, manifest: Manifest, repository: Path, name: str,
                           python_env: Path) -> Path | None:  # fmt: skip
    """``<repository>/<name>_explain``, or None when the model cannot be explained."""
    if source is None and not explainable(manifest.task, manifest.model.get("format", "eager")):
        return None
    model_dir = repository / f"{name}{EXPLAINER_SUFFIX}"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    copy_runtime(served, version_dir, manifest.serving)  # no probe.json: an explanation is too dear for a probe
    if source is not None:
        copy_explain_source(source, version_dir, manifest)
    (version_dir / "model.py").write_text(ENTRY_POINT)
    config = mc.ModelConfig(name=model_dir.name, backend="python", max_batch_size=manifest.serving.max_batch_size)
    for spec in pipeline_class(manifest, served).input_specs(manifest):
        config.input.append(tensor_message(mc.ModelInput, spec))
    config.output.append(tensor_message(mc.ModelOutput, TensorSpec(OUTPUT, "TYPE_STRING", (1,))))
    add_dynamic_batching(config, 0)
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
    config.parameters["EXECUTION_ENV_PATH"].string_value = str(python_env)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    return model_dir
