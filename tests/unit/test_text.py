"""The text pipeline in-process: accepted forms, per-item errors, truncation and per-batch padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.tasks import load_pipeline
from handlers.tasks.text import length_groups


@pytest.fixture(scope="module")
def pipeline(text_artifact):
    return load_pipeline(text_artifact)


def test_held_out_sentences_beat_chance(pipeline, held_out_sentences):
    texts, labels = held_out_sentences
    outcome = pipeline.handle_tensors(
        [{"TEXT": np.array(texts[i : i + 32], dtype=np.object_)} for i in range(0, 192, 32)]
    )
    predicted = np.concatenate([o["LABEL"].reshape(-1) for o in outcome])
    accuracy = np.mean(
        [p.decode() == ("positive" if y else "negative") for p, y in zip(predicted, labels, strict=False)]
    )
    assert accuracy >= 0.7


def test_json_forms_and_plain_text_agree(pipeline):
    text = "A gorgeous, witty and moving film."
    single, several, plain, raw = pipeline.handle_json([{"text": text}, {"text": [text, "Dull."]}, text, text.encode()])
    assert single[0] == several[0] == plain[0] == raw[0] == 200
    assert isinstance(several[1], list) and len(several[1]) == 2
    for other in (several[1][0], plain[1], raw[1]):  # batch-mates pad differently: equal up to float noise
        assert other["label"] == single[1]["label"]
        assert other["probability"] == pytest.approx(single[1]["probability"], abs=1e-5)


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        ({"text": ""}, 400, "the text is empty"),
        ({"text": "   "}, 400, "the text is empty"),
        ({"text": 42}, 400, "must be a string, got int"),
        ({"text": ["fine", None]}, 400, "row 1: a text must be a string, got NoneType"),
        (b"\xff\xfe not utf-8", 400, "not valid UTF-8"),
        ({"txt": "typo"}, 400, '{"text": "..."}'),
        (b'{"text": "unterminated', 400, "not valid JSON"),
        ({"text": "x" * 20001}, 413, "at most 20000"),
        ({"text": ["ok"] * 33}, 413, "33 rows; at most 32"),
    ],
)
def test_bad_items_get_their_own_error(pipeline, body, status, fragment):
    answers = pipeline.handle_json([{"text": "great"}, body, {"text": "awful"}])
    assert answers[1][0] == status and fragment in answers[1][1]["error"]["message"]
    assert answers[0][0] == answers[2][0] == 200


def test_tensor_input_accepts_str_and_bytes_and_rejects_bad_utf8_per_request(pipeline):
    as_str, as_bytes, bad = pipeline.handle_tensors(
        [
            {"TEXT": np.array([["what a delight"]], dtype=np.object_)},
            {"TEXT": np.array([[b"what a delight"]], dtype=np.object_)},
            {"TEXT": np.array([[b"ok"], [b"\xc3\x28"]], dtype=np.object_)},
        ]
    )
    np.testing.assert_allclose(as_str["PROBABILITIES"], as_bytes["PROBABILITIES"], atol=1e-5)
    assert bad.http_status == 400 and bad.message.startswith("row 1: the text is not valid UTF-8")


def test_long_text_is_truncated_and_batches_pad_to_their_longest(pipeline):
    long_text = "a tedious, overlong and joyless slog " * 200
    ids = pipeline.preprocess(long_text)
    assert len(ids) == pipeline.max_length
    batch = pipeline.collate([pipeline.preprocess("short"), pipeline.preprocess("a little longer text")])
    assert batch["input_ids"].shape[1] == len(pipeline.preprocess("a little longer text")) < pipeline.max_length
    assert batch["attention_mask"].sum().item() == len(pipeline.preprocess("short")) + batch["input_ids"].shape[1]


def test_padding_does_not_change_answers(pipeline, monkeypatch):
    monkeypatch.setattr(pipeline, "call_cost_tokens", 1e9)  # one pass per batch: the short text is padded
    alone = pipeline.handle_json([{"text": "short and sweet"}])[0][1]
    padded = pipeline.handle_json([{"text": "short and sweet"}, {"text": "a much longer review " * 10}])[0][1]
    assert alone["probability"] == pytest.approx(padded["probability"], abs=1e-5)


def group_cost(lengths, groups, call_cost):
    return sum(call_cost + len(g) * max(lengths[i] for i in g) for g in groups)


def partitions(items):
    """Every way to cut a sorted list into consecutive groups."""
    if not items:
        yield []
        return
    for cut in range(1, len(items) + 1):
        for rest in partitions(items[cut:]):
            yield [items[:cut], *rest]


@given(st.lists(st.integers(1, 128), max_size=7), st.sampled_from([0, 1, 24, 1e9]))
def test_length_groups_are_a_least_cost_partition(lengths, call_cost):
    groups = length_groups(lengths, call_cost)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = min((group_cost(lengths, p, call_cost) for p in partitions(order)), default=0)
    assert group_cost(lengths, groups, call_cost) == pytest.approx(best)
    if call_cost == 1e9 and lengths:
        assert len(groups) == 1


def test_a_batch_runs_in_length_groups_and_answers_in_order(pipeline, monkeypatch):
    texts = ["ok", "a long and winding review of a film that never ends " * 4, "fine", "dull " * 40, "great"]
    alone = [pipeline.handle_json([{"text": t}])[0][1] for t in texts]
    widths = []
    forward = pipeline.forward
    monkeypatch.setattr(pipeline, "forward", lambda batch: widths.append(batch["input_ids"].shape) or forward(batch))
    together = pipeline.handle_json([{"text": t} for t in texts])
    lengths = [len(pipeline.preprocess(t)) for t in texts]
    assert len(widths) == len(length_groups(lengths, pipeline.call_cost_tokens)) > 1
    assert sum(rows for rows, _ in widths) == len(texts) and max(w for _, w in widths) == max(lengths)
    for (status, answer), expected in zip(together, alone, strict=True):
        assert status == 200 and answer["label"] == expected["label"]
        assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-5)
