"""A user's own pipeline file (the tutorial's GRU) on the real servers: imported from the archive, same answers."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from handlers.tasks import load_pipeline
from scripts.serving.keys import bearer
from scripts.serving.samples import triton_bytes_input

pytestmark = pytest.mark.models("char_gru")

TEXTS = ["Great fun from start to finish.", "A bore.", "Neither good nor bad, " * 20]


def test_user_pipeline_on_both_servers_answers_as_in_process(torchserve, triton, user_pipeline_artifact):
    want = load_pipeline(user_pipeline_artifact).handle_json([{"text": TEXTS}])[0][1]
    url, headers = f"{torchserve.inference_url}/predictions/char_gru", bearer(torchserve.inference_key)
    answer = httpx.post(url, json={"text": TEXTS}, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    for got, expected in zip(answer.json(), want, strict=True):
        assert got["label"] == expected["label"] and abs(got["probability"] - expected["probability"]) < 1e-5
    refused = httpx.post(url, json={"text": ""}, headers=headers, timeout=60)
    assert refused.status_code == 400 and "empty" in refused.json()["error"]["message"]

    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    result = client.infer("char_gru", [triton_bytes_input(triton_http, "TEXT", TEXTS)])
    np.testing.assert_allclose(result.as_numpy("PROBABILITY")[:, 0], [a["probability"] for a in want], atol=1e-5)
    with pytest.raises(InferenceServerException) as error:
        client.infer("char_gru", [triton_bytes_input(triton_http, "TEXT", [b"\xff"])])
    assert error.value.status() == "400" and "not valid UTF-8" in error.value.message()
    assert client.is_model_ready("char_gru")
