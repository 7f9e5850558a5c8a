"""The sentiment model on the real TorchServe (REST) and tritonserver (HTTP and gRPC): parity, bad items, long texts."""

from __future__ import annotations

import asyncio
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
from scripts.serving.samples import triton_text_input

pytestmark = pytest.mark.models("sentiment")

N = 24
LONG_TEXT = "An overlong, tedious and joyless slog that never finds its footing. " * 150  # ~1,900 tokens


@pytest.fixture(scope="module")
def sentences(held_out_sentences):
    return held_out_sentences[0][:N] + [LONG_TEXT]


@pytest.fixture(scope="module")
def in_process(text_artifact, sentences):
    return load_pipeline(text_artifact).handle_tensors([{"TEXT": np.array(sentences, dtype=np.object_)}])[0]


def post(torchserve, body) -> httpx.Response:
    url = f"{torchserve.inference_url}/predictions/sentiment"
    return httpx.post(url, json=body, headers=bearer(torchserve.inference_key), timeout=60)


def test_torchserve_matches_in_process(torchserve, sentences, in_process):
    answers = [post(torchserve, {"text": s}) for s in sentences]
    assert {a.status_code for a in answers} == {200}
    labels = np.array([a.json()["label"].encode() for a in answers], dtype=np.object_)
    np.testing.assert_array_equal(labels, in_process["LABEL"][:, 0])
    for answer, probabilities in zip(answers, in_process["PROBABILITIES"], strict=True):
        for entry in answer.json()["top_k"]:
            index = ["negative", "positive"].index(entry["label"])
            assert entry["probability"] == pytest.approx(probabilities[index], abs=1e-4)


def test_torchserve_list_of_texts_in_one_request(torchserve, sentences, in_process):
    answer = post(torchserve, {"text": sentences[:5]})
    assert answer.status_code == 200
    assert [a["label"].encode() for a in answer.json()] == list(in_process["LABEL"][:5, 0])


@pytest.mark.parametrize("protocol,as_type", [("http", str), ("grpc", str), ("grpc", bytes)])
def test_triton_matches_in_process_with_str_or_bytes(triton, protocol, as_type, sentences, in_process):
    module, port = (triton_http, triton.http) if protocol == "http" else (triton_grpc, triton.grpc)
    texts = sentences if as_type is str else [s.encode() for s in sentences]
    result = module.InferenceServerClient(f"127.0.0.1:{port}").infer("sentiment", [triton_text_input(module, texts)])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), in_process["PROBABILITIES"], atol=1e-4)
    np.testing.assert_array_equal(result.as_numpy("LABEL"), in_process["LABEL"])


def test_text_far_beyond_max_length_is_truncated_not_refused(torchserve, triton, in_process):
    rest = post(torchserve, {"text": LONG_TEXT})
    assert rest.status_code == 200 and rest.json()["label"].encode() == in_process["LABEL"][-1, 0]
    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    result = client.infer("sentiment", [triton_text_input(triton_http, [LONG_TEXT])])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES")[0], in_process["PROBABILITIES"][-1], atol=1e-4)


def test_torchserve_batch_mixing_valid_texts_with_invalid_items(torchserve, sentences):
    bodies = [{"text": s} for s in sentences[:8]] + [{"text": ""}, {"text": 7}, {"text": ["ok", ""]}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post(torchserve, b), bodies))
    assert [a.status_code for a in answers] == [200] * 8 + [400] * 3
    messages = [a.json()["error"]["message"] for a in answers[8:]]
    assert messages == ["the text is empty", "a text must be a string, got int", "row 1: the text is empty"]


def test_triton_batch_mixing_valid_texts_with_invalid_items(triton, sentences):
    url = f"127.0.0.1:{triton.grpc}"

    async def send_all():
        async with triton_grpc_aio.InferenceServerClient(url) as client:
            groups = [[s.encode()] for s in sentences[:8]] + [[b"\xff\xfe"], [b"fine", b""]]
            calls = [client.infer("sentiment", [triton_text_input(triton_grpc, g)]) for g in groups]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(send_all())
    assert all(not isinstance(r, Exception) for r in results[:8])
    bad_utf8, empty = results[8:]
    assert isinstance(bad_utf8, InferenceServerException) and "not valid UTF-8" in bad_utf8.message()
    assert isinstance(empty, InferenceServerException) and "row 1: the text is empty" in empty.message()
    assert triton_grpc.InferenceServerClient(url).is_model_ready("sentiment")
