"""A tabular row checked as one array gives exactly what checking it value by value gives: the same vector, or the
same refusal naming the same feature (``FeatureSchema._ordered``'s fast path against ``FeatureSchema._value``)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.errors import InvalidInput
from handlers.tasks.features import FeatureSchema

SCHEMA = FeatureSchema([
    {"name": "age", "type": "float", "mean": 40.0, "std": 10.0},
    {"name": "visits", "type": "int"},
    {"name": "member", "type": "bool"},
    {"name": "colour", "type": "category", "categories": ["red", "green", "blue"]},
    {"name": "income", "type": "float", "impute": 3.5},
])  # fmt: skip
NUMBERS = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-4, 4).map(lambda x: round(x, 1))  # whole numbers, 0/1 and category indices among them
    | st.integers(-3, 3)
    | st.integers()
    | st.sampled_from([2**70, -(2**1100), 2.0000001, 1e39, 0.0, 1.0, -1])
)
VALUES = NUMBERS | st.booleans() | st.none() | st.sampled_from(["red", "blue", "mauve"])
ROWS = st.lists(VALUES, min_size=len(SCHEMA), max_size=len(SCHEMA))


def outcome(check, row):
    try:
        return check(row).tolist()
    except InvalidInput as exc:
        return exc.message


def one_by_one(row) -> np.ndarray:
    return np.array([SCHEMA._value(i, value) for i, value in enumerate(row)], dtype=np.float32)


@settings(max_examples=400, deadline=None)
@given(ROWS)
def test_a_row_checked_as_an_array_gives_what_its_values_give_one_by_one(row):
    expected = outcome(one_by_one, row)
    assert outcome(SCHEMA.row, row) == expected
    if None not in row:  # a named row refuses missing features itself, all of them named at once
        assert outcome(SCHEMA.row, dict(zip(SCHEMA.names, row, strict=True))) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(NUMBERS.filter(lambda v: isinstance(v, float)), min_size=len(SCHEMA), max_size=len(SCHEMA)),
       st.sampled_from([np.float32, np.float64]))  # fmt: skip
def test_a_float_array_row_gives_what_its_values_give_one_by_one(values, dtype):
    with np.errstate(over="ignore"):
        row = np.array(values, dtype=dtype)
    assert outcome(SCHEMA.row, row) == outcome(one_by_one, row.tolist())


def test_refusals_name_the_feature():
    assert outcome(SCHEMA.row, [40.0, 2.5, 1, "red", 1.0]) == "feature 'visits' must be a whole number, got 2.5"
    assert outcome(SCHEMA.row, [40.0, 2, 2, "red", 1.0]) == "feature 'member' must be true, false, 0 or 1, got 2"
    assert outcome(SCHEMA.row, [40.0, 2, 1, 3, 1.0]).startswith("feature 'colour' takes one of its categories")
    assert outcome(SCHEMA.row, [1e39, 2, 1, 0, 1.0]).startswith("feature 'age' is NaN or infinite")
    assert outcome(SCHEMA.row, [40.0, 2, 1, 0, None]) == [40.0, 2.0, 1.0, 0.0, 3.5]  # imputed
