"""The digits CNN on the real TorchServe (REST, with the token) and the real tritonserver (HTTP and gRPC)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from handlers.tasks import load_pipeline
from scripts.serving.keys import bearer
from scripts.serving.samples import digit_png, triton_image_input

pytestmark = pytest.mark.models("digits")

N = 30  # held-out digits sent to each server (one Triton request holds at most max_batch_size=32 rows)


@pytest.fixture(scope="module")
def pngs(held_out_digits):
    return [digit_png(x) for x in held_out_digits[0][:N]]


@pytest.fixture(scope="module")
def in_process(digits_artifact, pngs):
    """Reference probabilities, computed by the pipeline in this process on the same bytes."""
    pipeline = load_pipeline(digits_artifact)
    return pipeline.handle_tensors([{"IMAGE": np.array(pngs, dtype=np.object_).reshape(-1, 1)}])[0]


def post_torchserve(torchserve, body, key=None, **kwargs) -> httpx.Response:
    headers = bearer(key or torchserve.inference_key)
    return httpx.post(f"{torchserve.inference_url}/predictions/digits", headers=headers, timeout=30, **kwargs)


def triton_infer(module, url, pngs):
    return module.InferenceServerClient(url).infer("digits", [triton_image_input(module, pngs)])


# ---- predictions and parity ---------------------------------------------------------------------------
def test_torchserve_rest_classifies_held_out_pngs_like_in_process(torchserve, pngs, held_out_digits, in_process):
    answers = [post_torchserve(torchserve, None, content=png) for png in pngs]
    assert {a.status_code for a in answers} == {200}
    bodies = [a.json() for a in answers]
    labels = np.array([int(b["label"]) for b in bodies])
    assert np.mean(labels == held_out_digits[1][:N]) >= 0.95
    for body, probabilities in zip(bodies, in_process["PROBABILITIES"], strict=True):
        for entry in body["top_k"]:
            assert entry["probability"] == pytest.approx(probabilities[int(entry["label"])], abs=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_classifies_held_out_pngs_like_in_process(triton, protocol, pngs, held_out_digits, in_process):
    module, port = (triton_http, triton.http) if protocol == "http" else (triton_grpc, triton.grpc)
    result = triton_infer(module, f"127.0.0.1:{port}", pngs)
    labels = [int(v.decode()) for v in result.as_numpy("LABEL")[:, 0]]
    assert np.mean(np.array(labels) == held_out_digits[1][:N]) >= 0.95
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), in_process["PROBABILITIES"], atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("LABEL"), in_process["LABEL"])


def test_pixel_arrays_are_accepted_on_both_servers(torchserve, triton, held_out_digits):
    pixels = held_out_digits[0][:4]
    rest = [post_torchserve(torchserve, None, json={"pixels": p.tolist()}).json()["label"] for p in pixels]
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    tensor = triton_grpc.InferInput("PIXELS", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels.astype(np.float32))
    grpc_labels = [v.decode() for v in client.infer("digits", [tensor]).as_numpy("LABEL")[:, 0]]
    assert rest == grpc_labels == [str(y) for y in held_out_digits[1][:4]]


# ---- bad input among good ones ----------------------------------------------------------------------
def test_torchserve_corrupt_image_among_concurrent_good_ones(torchserve, pngs, held_out_digits):
    bodies = pngs[:12] + [b"\x89PNG\r\n\x1a\n this is not a png"]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post_torchserve(torchserve, None, content=b), bodies))
    assert answers[-1].status_code == 400
    assert "could not decode the image" in answers[-1].json()["error"]["message"]
    assert [a.status_code for a in answers[:-1]] == [200] * 12
    assert [int(a.json()["label"]) for a in answers[:-1]] == list(held_out_digits[1][:12])
    assert httpx.get(f"{torchserve.inference_url}/ping", headers=bearer(torchserve.inference_key)).status_code == 200


def test_triton_corrupt_image_in_the_same_dynamic_batch(triton, pngs):
    """Concurrent requests are batched by Triton into one execute(); the corrupt one alone gets a 400."""
    url = f"127.0.0.1:{triton.grpc}"
    key = triton.access.admin_headers(grpc=True)
    stats_before = _triton_counts(url, key)

    async def send_all():
        async with triton_grpc_aio.InferenceServerClient(url) as client:
            requests = [[png] for png in pngs[:15]] + [[b"not an image"]]
            calls = [client.infer("digits", [triton_image_input(triton_grpc, r)]) for r in requests]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(send_all())
    error = results[-1]
    assert isinstance(error, InferenceServerException) and "could not decode the image" in error.message()
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert all(not isinstance(r, Exception) for r in results[:-1])
    # Triton records an execution's statistics after sending its answers: wait (bounded) for them to settle.
    deadline = time.monotonic() + 10
    while (after := _triton_counts(url, key))[0] - stats_before[0] < 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    requests, executions = (now - before for now, before in zip(after, stats_before, strict=True))
    assert requests == 16 and executions < requests, "concurrent requests should share executions"
    assert triton_grpc.InferenceServerClient(url).is_model_ready("digits")


def test_triton_http_error_is_a_400_naming_the_problem(triton):
    with pytest.raises(InferenceServerException) as info:
        triton_infer(triton_http, f"127.0.0.1:{triton.http}", [b""])
    assert info.value.status() == "400" and "the image is empty" in info.value.message()


def _triton_counts(url, headers) -> tuple[int, int]:
    """Requests and executions so far (the statistics API is behind the access key)."""
    stats = triton_grpc.InferenceServerClient(url).get_inference_statistics("digits", headers=headers).model_stats[0]
    return stats.inference_stats.success.count + stats.inference_stats.fail.count, stats.execution_count


# ---- security and packaging ---------------------------------------------------------------------------
def test_torchserve_refuses_requests_without_the_inference_key(torchserve, pngs):
    assert httpx.post(f"{torchserve.inference_url}/predictions/digits", content=pngs[0]).status_code == 400
    assert post_torchserve(torchserve, None, key="wrong", content=pngs[0]).status_code == 400


def test_mar_loads_on_a_torchserve_whose_python_lacks_this_package(torchserve, pngs):
    """The fixture runs TorchServe from an empty directory without PYTHONPATH; prove its Python cannot see us."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", "import handlers"], cwd=torchserve.workdir, env=env, capture_output=True, text=True
    )
    assert "No module named 'handlers'" in probe.stderr
    assert post_torchserve(torchserve, None, content=pngs[0]).status_code == 200


# ---- observability ------------------------------------------------------------------------------------
def test_per_stage_timings_are_on_both_servers_metrics(torchserve, triton, pngs):
    post_torchserve(torchserve, None, content=pngs[0]).raise_for_status()
    triton_infer(triton_http, f"127.0.0.1:{triton.http}", pngs[:2])
    ts_metrics = httpx.get(f"{torchserve.metrics_url}/metrics", timeout=10).text
    for name in ("MaasPreprocessMs", "MaasForwardMs", "MaasPostprocessMs", "MaasRows", "ts_queue_latency_microseconds"):
        ours = ('ModelName="digits"', 'ModelVersion="1"')  # our handler's metrics carry the version that served
        assert metric_total(ts_metrics, name, *(ours if name.startswith("Maas") else ("digits",))) > 0
    triton_metrics = httpx.get(f"http://127.0.0.1:{triton.metrics}/metrics", timeout=10).text
    for stage in ("preprocess", "forward", "postprocess"):
        assert metric_total(triton_metrics, "maas_stage_duration_ms_total", f'stage="{stage}"', 'model="digits"') > 0
    assert metric_total(triton_metrics, "nv_inference_queue_duration_us", 'model="digits"') > 0


def metric_total(text: str, name: str, *fragments: str) -> float:
    """Sum of a Prometheus metric's samples whose label set holds every fragment."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and all(f in line for f in fragments)
    )
