"""Real servers for the integration tests: TorchServe and tritonserver on free loopback ports, once per session."""

from __future__ import annotations

import pytest

from scripts.build import build
from scripts.servers import TritonPorts, free_port, start_torchserve, start_triton, stop_process


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def served_artifacts(digits_artifact, text_artifact, tabular_artifacts) -> list:
    """Every artifact the session's servers load, one fixture per task (tests/fixtures/)."""
    return [digits_artifact, text_artifact, *tabular_artifacts]


# Exports served beside the eager models, as <name>_<format> (tests/integration/test_formats_serving.py), and
# Triton ensembles whose network runs on the Python backend, the only one this tritonserver build has.
SERVED_EXPORTS = [("digits", "onnx_int8"), ("sentiment", "onnx_int8")]
SERVED_ENSEMBLES = [("digits", "torchscript"), ("sentiment", "onnx")]


@pytest.fixture(scope="session")
def built_models(served_artifacts, exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    where = {"model_store": root / "model_store", "triton_repository": root / "model_repository"}
    for artifact in served_artifacts:  # the eager models: what the task tests compare with in-process answers
        build(artifact, **where, fmt="eager")
    for name, fmt in SERVED_EXPORTS:
        build(exported(name, fmt), **where, name=f"{name}_{fmt}")
    for name, fmt in SERVED_ENSEMBLES:
        build(exported(name, fmt), triton_repository=where["triton_repository"], model_store=None,
              name=f"{name}_ensemble", triton_ensemble="python")  # fmt: skip
    return root


@pytest.fixture(scope="session")
def torchserve(built_models, tmp_path_factory):
    """TorchServe run from an empty working directory, without PYTHONPATH: only the archive provides our code."""
    instance = start_torchserve(built_models / "model_store", tmp_path_factory.mktemp("torchserve"))
    yield instance
    stop_process(instance.process)


@pytest.fixture(scope="session")
def triton(built_models) -> TritonPorts:
    ports = TritonPorts(free_port(), free_port(), free_port())
    process = start_triton(built_models / "model_repository", ports, built_models / "triton.log")
    yield ports
    stop_process(process, group=False)
