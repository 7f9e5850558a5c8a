"""Real servers for the integration tests: TorchServe and tritonserver on free loopback ports, once per session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from handlers.artifact import read_manifest
from scripts.packaging.build import build
from scripts.serving.openai_process import start_openai_frontend
from scripts.serving.processes import free_port, free_ports, stop_process
from scripts.serving.servers import start_torchserve
from scripts.serving.triton_server import TritonInstance, TritonPorts, start_triton
from tests.fixtures.hf import ARCHITECTURES as HF_ARCHITECTURES
from tests.fixtures.image_import import FILES as IMAGE_FILES
from tests.fixtures.lm import KINDS as LM_KINDS
from tests.fixtures.tabular import CASES as TABULAR


def wait_for_lines(path, text: str, timeout: float = 120) -> list[str]:
    """The log's lines holding ``text``, once there is one (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in path.read_text(errors="replace").splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


# Exports served beside the eager models, as <name>_<format> (tests/integration/test_formats_serving.py), and
# Triton ensembles whose network runs on the Python backend, the only one this tritonserver build has.
SERVED_EXPORTS = [("digits", "onnx_int8"), ("sentiment", "onnx_int8")]
SERVED_ENSEMBLES = [("digits", "torchscript"), ("sentiment", "onnx")]
ENSEMBLE = {"model_store": None, "triton_ensemble": "python"}  # on Triton only

# Every model the servers can load, by the name it is served as -> (its artifact, from the fixture that trains,
# imports or exports it: ``get`` is ``request.getfixturevalue``; build options). Only the models the collected tests
# declare are made: ``pytestmark = pytest.mark.models(...)``.
MODELS = {
    "digits": (lambda get: get("digits_artifact"), {}),
    "sentiment": (lambda get: get("text_artifact"), {}),
    "char_gru": (lambda get: get("user_pipeline_artifact"), {}),
    **{n: (lambda get, n=n: get("tabular_cases")[n].artifact, {}) for n in TABULAR},
    **{f"hf_{a}": (lambda get, a=a: get("hf_artifacts")[a], {}) for a in HF_ARCHITECTURES},
    **{f"pets_{f}": (lambda get, f=f: get("image_imports")[f], {}) for f in IMAGE_FILES},
    **{f"lm_{k}": (lambda get, k=k: get("lm_artifacts")[k], {}) for k in LM_KINDS},
    **{f"{n}_{f}": (lambda get, n=n, f=f: get("exported")(n, f), {}) for n, f in SERVED_EXPORTS},
    **{f"{n}_ensemble": (lambda get, n=n, f=f: get("exported")(n, f), ENSEMBLE) for n, f in SERVED_ENSEMBLES},
    # Triton only: one sequence at a time, and a request refused (429) whenever it would wait at all
    "busy_lm": (
        lambda get: get("lm_artifacts")["gpt2"],
        {"model_store": None, "serving": {"max_batch_size": 1, "max_queue_wait_s": 1e-6}},
    ),
    # Triton only, with a deadline (serving.deadline_ms: off by default)
    "sentiment_deadline": (lambda get: get("text_artifact"), {"model_store": None, "serving": {"deadline_ms": 5000}}),
    # Both servers: batches of 2 at most, and a full one keeps 60 s free before each deadline (serving.reply_margin_ms)
    "sentiment_margin": (
        lambda get: get("text_artifact"),
        {"serving": {"max_batch_size": 2, "reply_margin_ms": 60_000}},
    ),
}
SERVERS = {"built_models", "torchserve", "triton"}
EXPLAINED = {"digits", "sentiment", "wine"}  # built with their explainers (Triton's <name>_explain); the rest without


def declared(item: pytest.Item) -> set[str]:
    return {model for mark in item.iter_markers("models") for model in mark.args}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test on the shared servers says which models it uses, or fails here (rather than on a missing model)."""
    if SERVERS & set(item.fixturenames):
        if not declared(item):
            pytest.fail("declare the models this test uses: pytestmark = pytest.mark.models(...)", pytrace=False)
        if unknown := declared(item) - MODELS.keys():
            known = ", ".join(sorted(MODELS))
            pytest.fail(f"pytest.mark.models names unknown models {sorted(unknown)}; known: {known}", pytrace=False)


@dataclass
class BuiltModels:
    root: Path
    models: set[str]  # built or refused: what the collected tests declared
    refused: dict[str, str]  # model name -> why its export was refused (the servers start without it)

    def require(self, model: str) -> None:
        """Fail the calling test, and only it, when its model was not built."""
        if model not in self.models:
            pytest.fail(f"{model} was not built: no collected test declares it (pytest.mark.models)", pytrace=False)
        if model in self.refused:
            pytest.fail(f"{model} was not built: {self.refused[model]}", pytrace=False)


@pytest.fixture(scope="session")
def built_models(request, tmp_path_factory) -> BuiltModels:
    """The models the collected tests on the servers declare, each trained, imported or exported and built here."""
    wanted = set().union(*(declared(item) for item in request.session.items if SERVERS & set(item.fixturenames)))
    built = BuiltModels(tmp_path_factory.mktemp("serving"), wanted & MODELS.keys(), {})
    where = {"model_store": built.root / "model_store", "triton_repository": built.root / "model_repository"}
    for directory in where.values():
        directory.mkdir()  # both servers start, whatever was built
    for model in sorted(built.models):
        artifact, options = MODELS[model]
        try:
            path = artifact(request.getfixturevalue)
        except pytest.fail.Exception as refused:  # the export fixture's refusal: that model only is missing
            built.refused[model] = str(refused)
            continue
        # As trained (eager, what the task tests compare with), as imported, or as exported.
        fmt = "eager" if read_manifest(path).model["format"] == "eager" else None
        build(path, name=model, fmt=fmt, explain=model in EXPLAINED, **(where | options))
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
    # Every model of the session loads before the first test: ~30 Python stubs on 2 cores take over 2 minutes.
    instance = start_triton(repository, ports, built_models.root / "triton.log", heal_interval=0, timeout=480)
    yield instance
    stop_process(instance.process, group=False)


@pytest.fixture(scope="module")
def frontend(built_models, triton, tmp_path_factory):
    """The OpenAI-compatible frontend over this Triton's gRPC, serving the language models built."""
    root = tmp_path_factory.mktemp("openai")
    instance = start_openai_frontend(built_models.root / "model_repository", f"127.0.0.1:{triton.grpc}",
                                     free_port(), root / "key.json", root / "openai.log")  # fmt: skip
    yield instance
    instance.stop()
