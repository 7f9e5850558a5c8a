"""The Open Inference Protocol v2 body on the TorchServe path: Triton's tensors in, Triton's tensors out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.open_inference import DTYPES, encode_output
from handlers.tasks import load_pipeline


@pytest.fixture(scope="module")
def digits(digits_artifact):
    return load_pipeline(digits_artifact)


@pytest.fixture(scope="module")
def text(text_artifact):
    return load_pipeline(text_artifact)


def v2_body(name: str, array: np.ndarray, **extra) -> dict:
    return {"inputs": [encode_output(name, array)], **extra}


def test_a_v2_body_gets_the_triton_models_outputs(digits, held_out_digits):
    pixels = np.asarray(held_out_digits[0][:3], dtype=np.float32)
    expected = digits.handle_tensors([{"PIXELS": pixels}])[0]
    body = v2_body("PIXELS", pixels, id="req-1")
    for wire in (body, json.dumps(body).encode()):  # decoded by TorchServe (application/json), or raw bytes
        ((status, answer),) = digits.handle_json([wire])
        assert status == 200 and answer["id"] == "req-1" and answer["model_name"] == "digits"
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert set(outputs) == set(expected)
        for name, array in expected.items():
            assert outputs[name]["shape"] == list(array.shape)
            assert outputs[name]["datatype"] == {"float32": "FP32", "object": "BYTES"}[array.dtype.name]
        got = np.array(outputs["PROBABILITIES"]["data"]).reshape(outputs["PROBABILITIES"]["shape"])
        np.testing.assert_allclose(got, expected["PROBABILITIES"], atol=1e-6)
        assert outputs["LABEL"]["data"] == [v.decode() for v in expected["LABEL"].reshape(-1)]


def test_text_as_v2_strings_and_only_the_outputs_asked_for(text):
    texts = np.array([["A joy from start to end."], ["Tedious and flat."]], dtype=np.object_)
    ((status, answer),) = text.handle_json([v2_body("TEXT", texts, outputs=[{"name": "LABEL"}])])
    assert status == 200 and [o["name"] for o in answer["outputs"]] == ["LABEL"]
    expected = text.handle_tensors([{"TEXT": np.char.encode(texts.astype(str))}])[0]["LABEL"]
    assert answer["outputs"][0]["data"] == [v.decode() for v in expected.reshape(-1)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "PIXELS", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 63}, "needs 64 values, got 63"),
        ({"name": "PIXELS", "shape": [1, 8, 8], "datatype": "FP99", "data": [0.0] * 64}, "unknown datatype 'FP99'"),
        ({"name": "PIXELS", "shape": [1, -8, 8], "datatype": "FP32", "data": [0.0] * 64}, "non-negative integers"),
        ({"name": "PIXELS", "shape": [1, 8, 8], "datatype": "FP32", "data": ["x"] * 64}, "data is not FP32"),
        ({"name": "PIXELS", "shape": [], "datatype": "UINT8", "data": 9.3e18}, "data is not UINT8"),  # hypothesis
        ({"name": "PIXELS", "shape": [1, 8, 8], "datatype": "FP32"}, "got no data"),
        ("PIXELS", "inputs[0] must be an object"),
        ({"name": "WRONG", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}, "IMAGE"),
    ],
)
def test_bad_v2_requests_get_their_own_400_in_a_mixed_batch(digits, held_out_digits, spec, message):
    good = v2_body("PIXELS", np.asarray(held_out_digits[0][:1], dtype=np.float32))
    plain = {"pixels": np.asarray(held_out_digits[0][0]).tolist()}  # the task's own JSON, same batch
    answers = digits.handle_json([good, {"inputs": [spec]}, plain])
    assert [status for status, _ in answers] == [200, 400, 200]
    assert message in answers[1][1]["error"], answers[1][1]
    label = next(o for o in answers[0][1]["outputs"] if o["name"] == "LABEL")
    assert answers[2][1]["label"] == label["data"][0]


def test_an_unknown_output_is_refused_by_name(digits, held_out_digits):
    body = v2_body("PIXELS", np.asarray(held_out_digits[0][:1], dtype=np.float32), outputs=[{"name": "NOPE"}])
    ((status, answer),) = digits.handle_json([body])
    assert status == 400 and "unknown output 'NOPE'" in answer["error"] and "PROBABILITIES" in answer["error"]


V2_SPECS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["PIXELS", "IMAGE", "TEXT", "X"]),
        "shape": st.lists(st.integers(-2, 70), max_size=4),
        "datatype": st.sampled_from([*DTYPES, "FP99"]),
        "data": st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
            lambda inner: st.lists(inner, max_size=70),
            max_leaves=80,
        ),
    }
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(st.one_of(V2_SPECS, st.integers(), st.text(max_size=3)), max_size=3))
def test_any_v2_body_is_answered_or_refused_with_a_4xx(digits, specs):
    ((status, answer),) = digits.handle_json([{"inputs": specs}])
    assert status == 200 or (400 <= status < 500 and answer["error"]), (status, answer)
