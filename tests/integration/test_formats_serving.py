"""Exported formats and Triton ensembles on the real servers: the same answers as the same export in process."""

from __future__ import annotations

import asyncio
import os

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from handlers.tasks import load_pipeline
from scripts.serving.keys import bearer
from scripts.serving.samples import digit_png, triton_bytes_input
from scripts.serving.worker_env import torchserve_env
from tests.integration.conftest import SERVED_ENSEMBLES, SERVED_EXPORTS, wait_for_lines

pytestmark = pytest.mark.models(
    *(f"{n}_{f}" for n, f in SERVED_EXPORTS), *(f"{n}_ensemble" for n, _ in SERVED_ENSEMBLES)
)

N = 12
INPUT = {"digits": "IMAGE", "sentiment": "TEXT"}


@pytest.fixture(scope="module")
def items(held_out_digits, held_out_sentences) -> dict[str, list]:
    """Per model, N held-out items as clients send them (a text past max_length too)."""
    texts = held_out_sentences[0][:N] + ["A tedious, overlong and joyless slog. " * 60]
    return {"digits": [digit_png(image) for image in held_out_digits[0][:N]], "sentiment": texts}


def expected(exported, name: str, fmt: str, items: list) -> np.ndarray:
    """The export's own pipeline, one request at a time (int8 scales activations per batch)."""
    pipeline = load_pipeline(exported(name, fmt))
    rows = [{INPUT[name]: np.array([[item]], dtype=np.object_)} for item in items]
    return np.concatenate([pipeline.handle_tensors([row])[0]["PROBABILITIES"] for row in rows])


def rest_top_k(torchserve, model: str, name: str, item) -> list[dict]:
    url, headers = f"{torchserve.inference_url}/predictions/{model}", bearer(torchserve.inference_key)
    if name == "digits":
        answer = httpx.post(url, content=item, headers=headers | {"Content-Type": "image/png"}, timeout=60)
    else:
        answer = httpx.post(url, json={"text": item}, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["top_k"]


@pytest.mark.parametrize("name,fmt", SERVED_EXPORTS)
def test_export_served_on_both_servers_matches_in_process(torchserve, triton, built_models, exported, items, name, fmt):
    built_models.require(f"{name}_{fmt}")
    model, want = f"{name}_{fmt}", expected(exported, name, fmt, items[name])
    labels = load_pipeline(exported(name, fmt)).labels
    for item, probabilities in zip(items[name], want, strict=True):  # one request at a time, as in process
        for entry in rest_top_k(torchserve, model, name, item):
            assert entry["probability"] == pytest.approx(probabilities[labels.index(entry["label"])], abs=1e-4)
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
        result = client.infer(model, [triton_bytes_input(triton_grpc, INPUT[name], [item])])
        np.testing.assert_allclose(result.as_numpy("PROBABILITIES")[0], probabilities, atol=1e-4)


@pytest.mark.parametrize("name,fmt", SERVED_ENSEMBLES)
def test_ensemble_matches_in_process_under_concurrency(triton, built_models, exported, items, name, fmt):
    """Concurrent requests of mixed sizes (and text lengths) through preprocess -> network -> postprocess."""
    built_models.require(f"{name}_ensemble")
    want = expected(exported, name, fmt, items[name])

    async def send_all():
        async with triton_grpc_aio.InferenceServerClient(f"127.0.0.1:{triton.grpc}") as client:
            calls = [
                client.infer(f"{name}_ensemble", [triton_bytes_input(triton_grpc, INPUT[name], [item])])
                for item in items[name]
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(send_all())
    got = np.concatenate([r.as_numpy("PROBABILITIES") for r in results])
    np.testing.assert_allclose(got, want, atol=1e-4)
    labels = [r.as_numpy("LABEL")[0, 0].decode() for r in results]
    assert labels == [load_pipeline(exported(name, fmt)).labels[i] for i in want.argmax(1)]


def test_ensemble_answers_a_bad_request_with_400_and_stays_ready(triton, built_models, items):
    built_models.require("digits_ensemble")
    built_models.require("sentiment_ensemble")
    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    for model, tensor, message in [
        ("digits_ensemble", triton_bytes_input(triton_http, "IMAGE", [b"not an image"]), "could not decode"),
        ("sentiment_ensemble", triton_bytes_input(triton_http, "TEXT", [b"\xff\xfe"]), "not valid UTF-8"),
    ]:
        with pytest.raises(InferenceServerException) as error:
            client.infer(model, [tensor])
        assert error.value.status() == "400" and message in error.value.message()
        assert client.is_model_ready(model)
    result = client.infer("sentiment_ensemble", [triton_bytes_input(triton_http, "TEXT", items["sentiment"][:3])])
    assert result.as_numpy("PROBABILITIES").shape == (3, 2)  # a request of several rows


def test_both_servers_log_the_self_check_at_load(torchserve, triton, built_models):
    built_models.require("sentiment_onnx_int8")
    logs = {
        "triton": built_models.root / "triton.log",
        "torchserve": torchserve.workdir / "logs" / "model_log.log",
    }
    for server, path in logs.items():
        lines = wait_for_lines(path, "(onnx_int8) self-check")  # TorchServe answers /ping before workers load
        assert any("sentiment (onnx_int8) self-check on 8 held-out rows" in line for line in lines), server
        assert all("passed" in line and "tolerance 0.3" in line for line in lines), (server, lines)


def test_torchserve_workers_spin_briefly_and_triton_stubs_keep_the_default(torchserve, triton, built_models):
    """The env of ``scripts/serving/worker_env.py`` reaches TorchServe's Python workers through its Java front end
    (libgomp reads it when torch loads there); Triton's stubs get the environment it was started with."""
    built_models.require("sentiment_onnx_int8")
    wait_for_lines(torchserve.workdir / "logs" / "model_log.log", "(onnx_int8) self-check")  # its worker is up
    expected = {"torchserve": torchserve_env(os.environ).get("GOMP_SPINCOUNT"),
                "triton": os.environ.get("GOMP_SPINCOUNT")}  # fmt: skip
    for server, marker in ((torchserve, "model_service_worker"), (triton, "triton_python_backend_stub")):
        tree = psutil.Process(server.process.pid).children(recursive=True)
        workers = [p for p in tree if any(marker in part for part in p.cmdline())]
        kind = "torchserve" if server is torchserve else "triton"
        assert workers, f"no {marker} process under {kind}"
        assert {p.environ().get("GOMP_SPINCOUNT") for p in workers} == {expected[kind]}, kind
