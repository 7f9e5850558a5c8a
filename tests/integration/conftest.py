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


@pytest.fixture(scope="session")
def built_models(served_artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    for artifact in served_artifacts:
        build(artifact, model_store=root / "model_store", triton_repository=root / "model_repository")
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
