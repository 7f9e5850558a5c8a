"""Cross-request batching on the real tasks: one forward pass per server batch (text: per length group, across
requests), same answers as one by one."""

from __future__ import annotations

import numpy as np
import pytest

from handlers.tasks import load_pipeline
from handlers.tasks.text import length_groups
from scripts.serving.samples import digit_png


def count_forward_passes(pipeline) -> list[int]:
    """Wrap the pipeline's forward to record the batch size of every call."""
    sizes, forward = [], pipeline.forward

    def counting(batch):
        outputs = forward(batch)
        sizes.append(len(outputs))
        return outputs

    pipeline.forward = counting
    return sizes


def stacked_and_alone(pipeline, requests, passes: list[int] | None = None):
    """``passes``: the rows of each forward pass expected (default: one pass for the whole batch)."""
    sizes = count_forward_passes(pipeline)
    together = pipeline.handle_tensors(requests)
    assert sizes == (passes or [sum(len(next(iter(r.values()))) for r in requests)])
    alone = [pipeline.handle_tensors([r])[0] for r in requests]
    return together, alone


def test_image_requests_share_one_forward_pass_with_the_same_answers(digits_artifact, held_out_digits):
    pipeline = load_pipeline(digits_artifact)
    images = held_out_digits[0]
    requests = [
        {"IMAGE": np.array([[digit_png(x)] for x in images[i : i + 3]], dtype=np.object_)} for i in range(0, 24, 3)
    ]
    together, alone = stacked_and_alone(pipeline, requests)
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_array_equal(t["LABEL"], a["LABEL"])
        np.testing.assert_allclose(t["PROBABILITIES"], a["PROBABILITIES"], atol=1e-6)


def test_text_requests_share_a_forward_pass_per_length_group_with_the_same_answers(text_artifact, held_out_sentences):
    pipeline = load_pipeline(text_artifact)
    texts = held_out_sentences[0]
    requests = [{"TEXT": np.array([[t] for t in texts[i : i + 2]], dtype=np.object_)} for i in range(0, 16, 2)]
    groups = length_groups([len(pipeline.preprocess(t)) for t in texts[:16]], pipeline.call_cost_tokens)
    together, alone = stacked_and_alone(pipeline, requests, [len(g) for g in groups])  # across requests
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_array_equal(t["LABEL"], a["LABEL"])
        # padding to the batch's longest text changes float rounding only
        np.testing.assert_allclose(t["PROBABILITIES"], a["PROBABILITIES"], atol=1e-5)


@pytest.mark.parametrize("bad_index", [0, 3, 7])
def test_a_bad_request_is_left_out_of_the_shared_forward_pass(digits_artifact, held_out_digits, bad_index):
    pipeline = load_pipeline(digits_artifact)
    requests = [{"PIXELS": held_out_digits[0][i : i + 1].astype(np.float32)} for i in range(8)]
    requests[bad_index] = {"IMAGE": np.array([[b"junk"]], dtype=np.object_)}
    sizes = count_forward_passes(pipeline)
    outcomes = pipeline.handle_tensors(requests)
    assert sizes == [7]
    assert [isinstance(o, dict) for o in outcomes] == [i != bad_index for i in range(8)]
