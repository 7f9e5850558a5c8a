"""Explanations on the real servers: TorchServe's ``/explanations/<model>`` (and ``X-Explain: true`` on
``/predictions``) and Triton's ``<model>_explain`` give the same attributions; explanations and predictions of one
TorchServe batch are each answered their way; the Open Inference Protocol body works on both."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from scripts.serving.keys import bearer

pytestmark = pytest.mark.models("digits", "sentiment", "wine")
TEXTS = ["An unbelievably tedious, lifeless film.", "A warm, funny and moving story."]


def close(a: list | float, b: list | float, tolerance: float = 1e-4) -> bool:
    return np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=0, atol=tolerance)


def scores(answer: dict) -> list:
    attributions = answer["attributions"]
    return [a["score"] for a in attributions] if isinstance(attributions[0], dict) else attributions


def triton_explain(triton, model: str, name: str, array: np.ndarray, datatype: str, **parameters) -> list[dict]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    result = client.infer(f"{model}_explain", [tensor], parameters=parameters)
    return [json.loads(row[0]) for row in result.as_numpy("EXPLANATION")]


def test_both_servers_give_the_same_attributions(torchserve, triton, held_out_digits, tabular_cases):
    headers = bearer(torchserve.inference_key)
    url = torchserve.inference_url
    explained = httpx.post(f"{url}/explanations/sentiment", json={"text": TEXTS}, headers=headers, timeout=60)
    assert explained.status_code == 200, explained.text
    texts = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    for served, other in zip(
        explained.json(), triton_explain(triton, "sentiment", "TEXT", texts, "BYTES"), strict=True
    ):
        assert [w["word"] for w in served["attributions"]] == [w["word"] for w in other["attributions"]]
        assert close(scores(served), scores(other)) and close(served["convergence_delta"], other["convergence_delta"])
    image = held_out_digits[0][0]
    png = {"X-Explain": "true", "X-Explain-Png": "true", "X-Explain-Steps": "64"}
    flagged = httpx.post(
        f"{url}/predictions/digits", json={"pixels": image.tolist()}, headers=headers | png, timeout=60
    )
    assert flagged.status_code == 200 and flagged.json()["png"] and flagged.json()["steps"] == 64
    pixels = np.asarray(image, dtype=np.float32)[None]
    other = triton_explain(triton, "digits", "PIXELS", pixels, "FP32", png=True, steps=64)[0]
    assert close(scores(flagged.json()), scores(other)) and flagged.json()["target"] == other["target"]
    row = tabular_cases["wine"].held_out()[0][0]
    table = httpx.post(f"{url}/explanations/wine", json={"features": row.tolist()}, headers=headers, timeout=60).json()
    other = triton_explain(triton, "wine", "FEATURES", np.asarray(row, dtype=np.float32)[None], "FP32")[0]
    assert [a["feature"] for a in table["attributions"]] == [a["feature"] for a in other["attributions"]]
    assert close(scores(table), scores(other)) and table["relative_delta"] < 0.05


def test_explanations_and_predictions_sent_together_are_each_answered(torchserve, held_out_digits):
    """24 requests at once on one worker, whose batches mix the endpoints (TorchServe queues both endpoints'
    requests for the same worker): each request gets its own kind of answer, or its own 400."""
    headers = bearer(torchserve.inference_key)
    images = [image.tolist() for image in held_out_digits[0][:8]]

    def ask(i: int) -> tuple[int, httpx.Response]:
        kind = i % 3  # a prediction, an explanation, a bad explanation
        path = "predictions" if kind == 0 else "explanations"
        body = {"pixels": images[i % 8] if kind < 2 else "nope"}
        return kind, httpx.post(f"{torchserve.inference_url}/{path}/digits", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(24)))
    for kind, response in answers:
        assert response.status_code == (400 if kind == 2 else 200), response.text
        if kind == 0:
            assert "top_k" in response.json() and "attributions" not in response.json()
        elif kind == 1:
            assert len(response.json()["attributions"]) == 8 and response.json()["label"] == response.json()["target"]


def test_the_open_inference_protocol_body_asks_both_servers(torchserve, triton):
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [TEXTS[0]]}]}
    served = httpx.post(f"{torchserve.inference_url}/explanations/sentiment", json=body,
                        headers=bearer(torchserve.inference_key), timeout=60)  # fmt: skip
    other = httpx.post(f"http://127.0.0.1:{triton.http}/v2/models/sentiment_explain/infer", json=body, timeout=60)
    assert served.status_code == 200 == other.status_code, (served.text, other.text)
    served, other = (json.loads(r.json()["outputs"][0]["data"][0]) for r in (served, other))
    assert close(scores(served), scores(other))
    bad = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [""]}]}
    refused = httpx.post(f"http://127.0.0.1:{triton.http}/v2/models/sentiment_explain/infer", json=bad, timeout=60)
    assert refused.status_code == 400 and "empty" in refused.text
