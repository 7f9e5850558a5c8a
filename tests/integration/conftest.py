"""Real servers for the integration tests: TorchServe and tritonserver on free loopback ports, once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from handlers.artifact import read_manifest
from scripts.packaging.build import build
from scripts.serving.servers import free_ports, start_torchserve, stop_process
from scripts.serving.triton_server import TritonInstance, TritonPorts, start_triton


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def served_artifacts(
    digits_artifact, text_artifact, tabular_artifacts, hf_artifacts, image_imports, user_pipeline_artifact
) -> list:
    """Every artifact the session's servers load: one fixture per task (tests/fixtures/), the imported models, and
    a user's own pipeline file."""
    imported = [*hf_artifacts.values(), *image_imports.values()]
    return [digits_artifact, text_artifact, *tabular_artifacts, *imported, user_pipeline_artifact]


# Exports served beside the eager models, as <name>_<format> (tests/integration/test_formats_serving.py), and
# Triton ensembles whose network runs on the Python backend, the only one this tritonserver build has.
SERVED_EXPORTS = [("digits", "onnx_int8"), ("sentiment", "onnx_int8")]
SERVED_ENSEMBLES = [("digits", "torchscript"), ("sentiment", "onnx")]


@dataclass
class BuiltModels:
    root: Path
    refused: dict[str, str]  # model name -> why its export was refused (the servers start without it)

    def require(self, model: str) -> None:
        """Fail the calling test, and only it, when its model could not be built."""
        if model in self.refused:
            pytest.fail(f"{model} was not built: {self.refused[model]}", pytrace=False)


@pytest.fixture(scope="session")
def built_models(served_artifacts, exported, tmp_path_factory) -> BuiltModels:
    built = BuiltModels(tmp_path_factory.mktemp("serving"), {})
    where = {"model_store": built.root / "model_store", "triton_repository": built.root / "model_repository"}
    for artifact in served_artifacts:  # as trained (eager, what the task tests compare with) or as imported
        build(artifact, **where, fmt="eager" if read_manifest(artifact).model["format"] == "eager" else None)
    exports = [(name, fmt, f"{name}_{fmt}", where) for name, fmt in SERVED_EXPORTS]
    ensemble_where = {"triton_repository": where["triton_repository"], "model_store": None, "triton_ensemble": "python"}
    exports += [(name, fmt, f"{name}_ensemble", ensemble_where) for name, fmt in SERVED_ENSEMBLES]
    for name, fmt, model, options in exports:
        try:
            build(exported(name, fmt), name=model, **options)
        except pytest.fail.Exception as refused:  # the export fixture's refusal: that model only is missing
            built.refused[model] = str(refused)
    return built


@pytest.fixture(scope="session")
def torchserve(built_models, tmp_path_factory):
    """TorchServe run from an empty working directory, without PYTHONPATH: only the archive provides our code."""
    instance = start_torchserve(built_models.root / "model_store", tmp_path_factory.mktemp("torchserve"))
    yield instance
    stop_process(instance.process)


@pytest.fixture(scope="session")
def triton(built_models) -> TritonInstance:
    """tritonserver under its supervisor (admin APIs behind a key), as ``maas serve start`` runs it, less the
    health probes: tests count requests (test_faults.py runs a private, probing instance)."""
    ports = TritonPorts(*free_ports(3))
    repository = built_models.root / "model_repository"
    instance = start_triton(repository, ports, built_models.root / "triton.log", heal_interval=0)
    yield instance
    stop_process(instance.process, group=False)
