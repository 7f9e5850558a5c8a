"""Fuzzing the wire: arbitrary JSON, bytes and tensors at each task's drivers, in process.

Whatever a client sends, a request is answered or refused on its own: a 4xx naming the problem, never a 5xx from our
code and never an exception out of the driver (which would fail the whole server batch). Budget: the example counts
in ``settings`` below, per test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.errors import ServingError
from handlers.tasks import load_pipeline

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
KEYS = ["text", "pixels", "features", "instances"]
BODIES = (
    JSON
    | st.binary(max_size=64)
    | st.text(max_size=64)
    | st.fixed_dictionaries({}, optional={key: JSON for key in KEYS})
    | st.builds(lambda key, value: {key: value}, st.sampled_from(KEYS), JSON)
)
DTYPES = [np.float32, np.float64, np.int64, np.uint8, np.bool_, np.object_]
NAMES = ["TEXT", "IMAGE", "PIXELS", "FEATURES", "OTHER"]


@st.composite
def tensors(draw) -> dict[str, np.ndarray]:
    out = {}
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        size = int(np.prod(shape))
        if dtype is np.object_:
            items = draw(st.lists(st.binary(max_size=12) | st.text(max_size=12), min_size=size, max_size=size))
            array = np.array(items + [b""], dtype=np.object_)[:-1].reshape(shape)
        else:
            values = draw(st.lists(st.floats(width=32) | st.integers(-300, 300), min_size=size, max_size=size))
            with np.errstate(all="ignore"):
                array = np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
        out[name] = array
    return out


ARTIFACTS = {  # model -> its artifact, from the session's fixtures; only the ones a selected test asks for are made
    "digits": lambda get: get("digits_artifact"),
    "text": lambda get: get("text_artifact"),
    "plants": lambda get: get("tabular_cases")["plants"].artifact,
    "diabetes": lambda get: get("tabular_cases")["diabetes"].artifact,
    "user_gru": lambda get: get("user_pipeline_artifact"),
}


LOADED: dict = {}


@pytest.fixture
def pipeline(request, model):
    """The model's pipeline, loaded once per session (its artifact is a session fixture)."""
    if model not in LOADED:
        LOADED[model] = load_pipeline(ARTIFACTS[model](request.getfixturevalue))
    return LOADED[model]


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("model", ["digits", "text", "plants", "diabetes", "user_gru"])
@FUZZ
@given(bodies=st.lists(BODIES, min_size=1, max_size=4))
def test_any_json_or_bytes_gets_its_own_answer_or_4xx(pipeline, bodies):
    answers = pipeline.handle_json(bodies)
    assert len(answers) == len(bodies)
    for status, body in answers:
        assert status == 200 or 400 <= status < 500, body
        if status != 200:
            assert body["error"]["message"] and body["error"]["type"] != "InternalError"


@pytest.mark.parametrize("model", ["digits", "text", "plants", "diabetes", "user_gru"])
@FUZZ
@given(requests=st.lists(tensors(), min_size=1, max_size=3))
def test_any_tensors_get_their_own_answer_or_4xx(pipeline, requests):
    outcomes = pipeline.handle_tensors(requests)
    assert len(outcomes) == len(requests)
    for outcome in outcomes:
        if isinstance(outcome, ServingError):
            assert 400 <= outcome.http_status < 500 and outcome.message, outcome.message
        else:
            assert all(isinstance(array, np.ndarray) for array in outcome.values())
