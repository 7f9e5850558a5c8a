"""One Open Inference Protocol v2 body, sent as it is to TorchServe and to Triton: the same answer from both."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from handlers.open_inference import encode_output
from scripts.serving.keys import bearer

pytestmark = pytest.mark.models("digits", "sentiment")

TOLERANCE = 1e-5


def outputs_of(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def both(torchserve, triton, model: str, body: dict) -> tuple[httpx.Response, httpx.Response]:
    path = f"/v2/models/{model}/infer"
    served = httpx.post(f"{torchserve.inference_url}{path}", json=body, headers=bearer(torchserve.inference_key),
                        timeout=60)  # fmt: skip
    reference = httpx.post(f"http://127.0.0.1:{triton.http}{path}", json=body, timeout=60)
    return served, reference


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/predictions/digits"])
def test_digits_v2_body_answers_as_triton(torchserve, triton, held_out_digits, path):
    body = {"id": "parity", "inputs": [encode_output("PIXELS", np.asarray(held_out_digits[0][:5], dtype=np.float32))]}
    served = httpx.post(f"{torchserve.inference_url}{path}", json=body, headers=bearer(torchserve.inference_key),
                        timeout=60)  # fmt: skip
    reference = httpx.post(f"http://127.0.0.1:{triton.http}/v2/models/digits/infer", json=body, timeout=60)
    assert served.status_code == reference.status_code == 200, (served.text, reference.text)
    ours, theirs = served.json(), reference.json()
    assert ours["id"] == theirs["id"] == "parity"
    specs = lambda answer: {(o["name"], o["datatype"], tuple(o["shape"])) for o in answer["outputs"]}  # noqa: E731
    assert specs(ours) == specs(theirs)
    got, expected = outputs_of(ours), outputs_of(theirs)
    assert (got["LABEL"] == expected["LABEL"]).all()
    for name in ("PROBABILITY", "PROBABILITIES"):
        np.testing.assert_allclose(got[name], expected[name], atol=TOLERANCE)


def test_text_v2_body_answers_as_triton(torchserve, triton, held_out_sentences):
    texts = np.array([[t] for t in held_out_sentences[0][:6]], dtype=np.object_)
    served, reference = both(torchserve, triton, "sentiment", {"inputs": [encode_output("TEXT", texts)]})
    assert served.status_code == reference.status_code == 200, (served.text, reference.text)
    got, expected = outputs_of(served.json()), outputs_of(reference.json())
    assert (got["LABEL"] == expected["LABEL"]).all()
    np.testing.assert_allclose(got["PROBABILITIES"], expected["PROBABILITIES"], atol=TOLERANCE)


def test_a_bad_v2_body_is_a_400_naming_the_problem_on_both(torchserve, triton):
    body = {"inputs": [{"name": "PIXELS", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 10}]}
    served, reference = both(torchserve, triton, "digits", body)
    assert served.status_code == 400 and "needs 64 values, got 10" in served.json()["error"], served.text
    # Triton's own frontend refuses this one before the model (with a 500 in 2.51: README, error table).
    assert reference.status_code in (400, 500) and "error" in reference.json()
