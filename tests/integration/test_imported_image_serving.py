"""Imported TorchScript and ONNX image classifiers on the real servers: answers as with the user's preprocessing."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from scripts.serving.keys import bearer
from scripts.serving.samples import triton_bytes_input
from tests.fixtures.image_import import LABELS, reference_probabilities
from tests.unit.test_import_image import IMAGES

pytestmark = pytest.mark.models("pets_torchscript", "pets_onnx")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_imported_image_model_on_both_servers(torchserve, triton, image_model, fmt):
    model, want = f"pets_{fmt}", reference_probabilities(image_model, IMAGES)
    url = f"{torchserve.inference_url}/predictions/{model}"
    headers = bearer(torchserve.inference_key) | {"Content-Type": "application/octet-stream"}
    for image, probabilities in zip(IMAGES, want, strict=True):
        answer = httpx.post(url, content=image, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        for entry in answer.json()["top_k"]:
            assert entry["probability"] == pytest.approx(probabilities[LABELS.index(entry["label"])], abs=1e-5)

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    result = client.infer(model, [triton_bytes_input(triton_grpc, "IMAGE", IMAGES)])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), want, atol=1e-5)
