"""Imported Hugging Face classifiers on the real servers: the same answers as transformers' own pipeline."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from scripts.serving.keys import bearer
from scripts.serving.samples import triton_bytes_input
from tests.fixtures.hf import LABELS
from tests.unit.test_import_hf import ARCHITECTURES, TEXTS, reference_probabilities

pytestmark = pytest.mark.models(*(f"hf_{architecture}" for architecture in ARCHITECTURES))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_imported_model_on_both_servers_answers_as_transformers(torchserve, triton, hf_checkpoints, architecture):
    model, want = f"hf_{architecture}", reference_probabilities(hf_checkpoints[architecture], TEXTS)
    answer = httpx.post(f"{torchserve.inference_url}/predictions/{model}", json={"text": TEXTS},
                        headers=bearer(torchserve.inference_key), timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text
    got = [[next(e["probability"] for e in a["top_k"] if e["label"] == label) for label in LABELS.values()]
           for a in answer.json()]  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-5)

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    result = client.infer(model, [triton_bytes_input(triton_grpc, "TEXT", TEXTS)])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), want, atol=1e-5)
    labels = [label.decode() for label in result.as_numpy("LABEL")[:, 0]]
    assert labels == [list(LABELS.values())[i] for i in want.argmax(1)]
