"""Tabular models on the real TorchServe (REST, with the token) and the real tritonserver (HTTP and gRPC).

Served answers on the held-out rows must match the pipeline run in this process; a bad feature is its own 4xx
naming the feature while concurrent requests are answered. ``plants`` is trained from a CSV the fixture writes.
"""

from __future__ import annotations

import asyncio
import json
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

CASES = ["breast_cancer", "wine", "diabetes", "plants"]
ROWS = 32  # rows per request: max_rows_per_request and Triton's max_batch_size

pytestmark = pytest.mark.models(*CASES)


@pytest.fixture(scope="module")
def pipelines(tabular_cases):
    return {name: load_pipeline(case.artifact) for name, case in tabular_cases.items()}


def json_row(pipeline, vector) -> dict:
    """A held-out row as a client would write it: named, ints as JSON ints, bools as true/false."""
    cast = {"float": float, "int": lambda v: int(round(v)), "bool": bool}
    return {n: cast[t](v) for n, t, v in zip(pipeline.schema.names, pipeline.schema.types, vector, strict=True)}


def chunks(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + ROWS] for i in range(0, len(x), ROWS)]


def post(torchserve, model: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**bearer(torchserve.inference_key), "Content-Type": "application/json"}
    return httpx.post(f"{torchserve.inference_url}/predictions/{model}", content=content, headers=headers, timeout=30)


def flatten(answer) -> tuple[list[str], np.ndarray]:
    """JSON answers -> (labels, numbers): top-k probabilities for classifiers, the value for regressors."""
    answers = answer if isinstance(answer, list) else [answer]
    if "value" in answers[0]:
        return [], np.array([a["value"] for a in answers])
    labels = [f"{a['label']}:{e['label']}" for a in answers for e in a["top_k"]]
    return labels, np.array([e["probability"] for a in answers for e in a["top_k"]])


def outputs_of(result, names: list[str]) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in names}


# ---- predictions on held-out rows match in-process ---------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_torchserve_rest_matches_in_process_on_held_out_rows(torchserve, tabular_cases, pipelines, name):
    pipeline = pipelines[name]
    x, _ = tabular_cases[name].held_out()
    for chunk in chunks(x):
        body = {"instances": [json_row(pipeline, row) for row in chunk.tolist()]}
        served = post(torchserve, name, body)
        assert served.status_code == 200, served.text
        (status, expected) = pipeline.handle_json([body])[0]
        (labels, numbers), (expected_labels, expected_numbers) = flatten(served.json()), flatten(expected)
        assert status == 200 and labels == expected_labels
        np.testing.assert_allclose(numbers, expected_numbers, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", CASES)
def test_triton_matches_in_process_on_held_out_rows(triton, tabular_cases, pipelines, name, protocol):
    module, port = (triton_http, triton.http) if protocol == "http" else (triton_grpc, triton.grpc)
    client = module.InferenceServerClient(f"127.0.0.1:{port}")
    pipeline = pipelines[name]
    x, y = tabular_cases[name].held_out()
    predicted = []
    for chunk in chunks(x.astype(np.float32)):
        tensor = module.InferInput("FEATURES", list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(chunk)
        (expected,) = pipeline.handle_tensors([{"FEATURES": chunk}])
        served = outputs_of(client.infer(name, [tensor]), list(expected))
        for key, value in expected.items():
            if value.dtype == np.object_:
                np.testing.assert_array_equal(served[key], value)
            else:
                np.testing.assert_allclose(served[key], value, rtol=1e-6, atol=1e-5)
        predicted.append(served["VALUE"][:, 0] if "VALUE" in served else served["PROBABILITIES"].argmax(1))
    if "held_out_accuracy" in pipeline.manifest.metrics:  # the served model scores what training recorded
        accuracy = pipeline.manifest.metrics["held_out_accuracy"]  # rounded to 4 places
        assert np.mean(np.concatenate(predicted) == y) == pytest.approx(accuracy, abs=1e-4)


def test_the_csv_model_answers_named_typed_features_on_both_servers(torchserve, triton):
    """The model trained from the fixture's own CSV: named float/int/bool features by REST, a vector on Triton."""
    rows = [[2.0, 12, False, 1.4], [4.1, 31, True, 1.6], [6.2, 7, True, 1.5]]
    names = ["petal length (cm)", "leaf count", "flowering", "height, m"]
    served = post(torchserve, "plants", {"instances": [dict(zip(names, r, strict=True)) for r in rows]})
    assert served.status_code == 200 and [a["label"] for a in served.json()] == ["fern", "moss", "palm"]
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    config = client.get_model_config("plants", headers=triton.access.admin_headers(grpc=True)).config
    assert json.loads(config.parameters["feature_names"].string_value) == names
    assert json.loads(config.parameters["feature_types"].string_value) == ["float", "int", "bool", "float"]
    tensor = triton_grpc.InferInput("FEATURES", [3, 4], "FP32")
    tensor.set_data_from_numpy(np.array(rows, dtype=np.float32))
    labels = client.infer("plants", [tensor]).as_numpy("LABEL")[:, 0]
    assert [v.decode() for v in labels] == ["fern", "moss", "palm"]


def test_the_schema_is_readable_from_triton_http(triton, pipelines):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    config = client.get_model_config("breast_cancer", headers=triton.access.admin_headers())  # behind the key
    assert json.loads(config["parameters"]["feature_names"]["string_value"]) == pipelines["breast_cancer"].schema.names
    assert config["input"][0]["name"] == "FEATURES" and config["input"][0]["dims"] == [30]


# ---- bad features among good requests ----------------------------------------------------------------------
BAD_ROWS = {  # change to a held-out breast_cancer row -> what the error must say
    "missing": ({"mean radius": ...}, "feature 'mean radius' is missing"),
    "unknown": ({"foo": 1.0}, "unknown feature 'foo'"),
    "non-numeric": ({"mean area": "abc"}, "feature 'mean area' must be a number, got 'abc'"),
    "nan": ({"mean area": float("nan")}, "feature 'mean area' is NaN or infinite"),
    "infinite": ({"worst area": float("inf")}, "feature 'worst area' is NaN or infinite"),
}


def bad_body(pipeline, vector, change: dict) -> bytes:
    row = json_row(pipeline, vector) | change
    row = {k: v for k, v in row.items() if v is not ...}
    return json.dumps({"instances": [json_row(pipeline, vector), row]}).encode()  # NaN/Infinity as Python writes


def test_torchserve_bad_features_among_concurrent_good_requests(torchserve, tabular_cases, pipelines):
    pipeline = pipelines["breast_cancer"]
    x, _ = tabular_cases["breast_cancer"].held_out()
    good = [{"features": json_row(pipeline, row)} for row in x[:10].tolist()]
    bad = [bad_body(pipeline, x[0].tolist(), change) for change, _ in BAD_ROWS.values()]
    bodies = good + bad + [{"features": x[0].tolist()[:29]}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(torchserve, "breast_cancer", body), bodies))
    expected = [body for _, body in pipeline.handle_json(good)]
    assert [a.status_code for a in answers[: len(good)]] == [200] * len(good)
    assert [a.json()["label"] for a in answers[: len(good)]] == [e["label"] for e in expected]
    messages = [f"row 1: {fragment}" for _, fragment in BAD_ROWS.values()] + ["expected 30 features, got 29"]
    for answer, message in zip(answers[len(good) :], messages, strict=True):
        assert answer.status_code == 400 and message in answer.json()["error"]["message"]


def test_triton_bad_feature_in_the_same_dynamic_batch(triton, tabular_cases, pipelines):
    """Concurrent gRPC requests: the one with a NaN is refused naming the feature and row; the rest are answered."""
    x, _ = tabular_cases["wine"].held_out()
    x = x[:16].astype(np.float32)
    poisoned = x[:3].copy()
    poisoned[1, 4] = np.inf
    requests = [x[i : i + 1] for i in range(len(x))] + [poisoned]

    async def send_all():
        async with triton_grpc_aio.InferenceServerClient(f"127.0.0.1:{triton.grpc}") as client:
            calls = []
            for rows in requests:
                tensor = triton_grpc.InferInput("FEATURES", list(rows.shape), "FP32")
                tensor.set_data_from_numpy(rows)
                calls.append(client.infer("wine", [tensor]))
            return await asyncio.gather(*calls, return_exceptions=True)

    *results, error = asyncio.run(send_all())
    assert isinstance(error, InferenceServerException) and error.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"row 1: feature {pipelines['wine'].schema.names[4]!r} is NaN or infinite" in error.message()
    (expected,) = pipelines["wine"].handle_tensors([{"FEATURES": x}])
    served = np.concatenate([r.as_numpy("PROBABILITIES") for r in results])
    np.testing.assert_allclose(served, expected["PROBABILITIES"], rtol=1e-6, atol=1e-5)


def test_triton_http_refuses_a_wrong_number_of_features(triton):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    tensor = triton_http.InferInput("FEATURES", [1, 9], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 9), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("diabetes", [tensor])
    assert info.value.status() == "400" and "FEATURES" in info.value.message()
