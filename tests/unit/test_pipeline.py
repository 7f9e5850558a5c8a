"""The server-agnostic driver, on a toy task: per-request errors, one forward pass, failure isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handlers.artifact import Manifest
from handlers.errors import InternalError, InvalidInput, PayloadTooLarge
from handlers.pipeline import Pipeline, Request, TensorSpec


class Doubler(Pipeline):
    """Rows are numbers; the 'model' doubles them and fails on a row equal to 13."""

    def __init__(self, max_rows: int = 4):
        manifest = Manifest(name="toy", task="toy", model={}, serving={"max_rows_per_request": max_rows})
        super().__init__(manifest, artifact_dir=".")
        self.forward_batches: list[list[float]] = []

    def parse_json(self, body):
        return Request(body, single=False) if isinstance(body, list) else Request([body], single=True)

    def format_json(self, results, single):
        return results[0] if single else results

    def parse_tensors(self, tensors):
        return Request(list(tensors["X"]))

    def format_tensors(self, results):
        return {"Y": np.array(results)}

    @classmethod
    def input_specs(cls, manifest):
        return [TensorSpec("X", "TYPE_FP32", (1,))]

    @classmethod
    def output_specs(cls, manifest):
        return [TensorSpec("Y", "TYPE_FP32", (1,))]

    def preprocess(self, row):
        if not isinstance(row, (int, float)):
            raise InvalidInput(f"expected a number, got {type(row).__name__}")
        return float(row)

    def collate(self, features):
        return torch.tensor(features)

    def forward(self, batch):
        self.forward_batches.append(batch.tolist())
        if (batch == 13).any():
            raise RuntimeError("poisoned row")
        return batch * 2

    def postprocess(self, outputs):
        return outputs.tolist()


def test_valid_requests_share_one_forward_pass():
    pipeline = Doubler()
    answers = pipeline.handle_json([1, [2, 3], 4])
    assert answers == [(200, 2.0), (200, [4.0, 6.0]), (200, 8.0)]
    assert pipeline.forward_batches == [[1.0, 2.0, 3.0, 4.0]]
    assert pipeline.last_timings.rows == 4


def test_a_bad_request_gets_its_own_400_and_the_rest_are_answered():
    pipeline = Doubler()
    answers = pipeline.handle_json([1, "x", [2, "y"]])
    assert answers[0] == (200, 2.0)
    assert answers[1][0] == 400 and "expected a number, got str" in answers[1][1]["error"]["message"]
    assert answers[2][0] == 400 and answers[2][1]["error"]["message"].startswith("row 1: ")
    assert pipeline.forward_batches == [[1.0]]


def test_too_many_rows_is_413_and_an_empty_request_is_400():
    answers = Doubler(max_rows=2).handle_json([[1, 2, 3], [], 5])
    assert [status for status, _ in answers] == [413, 400, 200]
    assert "3 rows; at most 2" in answers[0][1]["error"]["message"]


def test_a_failing_forward_pass_is_retried_per_request_so_only_the_poisoned_one_fails():
    pipeline = Doubler()
    answers = pipeline.handle_json([1, 13, 2])
    assert answers[0] == (200, 2.0) and answers[2] == (200, 4.0)
    assert answers[1][0] == 500
    # the generic message never leaks the exception text
    assert "poisoned" not in answers[1][1]["error"]["message"]
    assert pipeline.forward_batches[0] == [1.0, 13.0, 2.0] and len(pipeline.forward_batches) == 4


def test_tensor_driver_returns_outputs_or_errors_per_request():
    outcomes = Doubler().handle_tensors([{"X": np.array([1.0, 2.0])}, {}, {"X": np.array([13.0])}])
    np.testing.assert_array_equal(outcomes[0]["Y"], [2.0, 4.0])
    assert isinstance(outcomes[1], InternalError)  # KeyError in parse_tensors is a server-side bug: 500
    assert isinstance(outcomes[2], InternalError)


@pytest.mark.parametrize(
    "error,status,code", [(InvalidInput, 400, "INVALID_ARG"), (PayloadTooLarge, 413, "INVALID_ARG")]
)
def test_error_table(error, status, code):
    assert (error("m").http_status, error("m").triton_code) == (status, code)
