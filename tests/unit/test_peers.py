"""``maas bench peers`` without the peers' servers: the user's model code every peer runs answers as our pipeline
does, each stack's body and reply are read right, and the report renders from a run's figures."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest

from scripts.benchmarking.peers.bench import held_out_rows, triton_body
from scripts.benchmarking.peers.report import markdown
from scripts.benchmarking.peers.stacks import APPS, PEERS_BY_KEY, label_in


@pytest.fixture()
def user_model(monkeypatch):
    monkeypatch.syspath_prepend(str(APPS))  # the peers' apps import it as a top-level module, as a user's would
    yield importlib.import_module("user_model")
    sys.modules.pop("user_model", None)


@pytest.mark.parametrize("model", ["digits_onnx", "sentiment_eager"])
def test_the_peers_model_code_gives_our_pipelines_answers(user_model, request, model):
    """The peers compute what we compute: same labels on held-out rows as our pipeline's, probabilities close.
    (Not int8: dynamic quantization scales each batch's activations, so its answers depend on what is batched.)"""
    from handlers.tasks import load_pipeline

    artifact = request.getfixturevalue("exported")("digits", "onnx") if model == "digits_onnx" else (
        request.getfixturevalue("text_artifact"))  # fmt: skip
    rows = held_out_rows(artifact)[:40]
    ours = load_pipeline(artifact).handle_json(rows)
    theirs = user_model.load(artifact).predict(rows)
    assert [status for status, _ in ours] == [200] * len(rows)
    assert [a["label"] for _, a in ours] == [t["label"] for t in theirs]
    assert np.allclose([a["probability"] for _, a in ours], [t["probability"] for t in theirs], atol=1e-4)


def test_each_stack_gets_the_row_in_the_body_its_api_defines():
    row = json.dumps({"text": "fine"}).encode()
    assert json.loads(PEERS_BY_KEY["bentoml"].body(row)) == {"rows": [{"text": "fine"}]}
    assert json.loads(PEERS_BY_KEY["kserve"].body(row)) == {"instances": [{"text": "fine"}]}
    assert PEERS_BY_KEY["litserve"].body(row) == PEERS_BY_KEY["fastapi"].body(row) == row


def test_labels_are_read_from_every_stacks_reply_shape():
    assert label_in({"label": "7", "probability": 0.9}) == "7"
    assert label_in({"predictions": [{"label": "negative"}]}) == "negative"
    assert label_in([{"label": "3"}]) == "3"
    assert label_in({"error": {"message": "bad"}}) is None


def test_triton_gets_the_same_values_as_tensors():
    body, json_size = triton_body({"pixels": [[16] * 8] * 8})
    header = json.loads(body[:json_size])
    assert header["inputs"][0]["name"] == "PIXELS" and header["inputs"][0]["shape"] == [1, 8, 8]
    assert np.frombuffer(body[json_size:], dtype=np.float32).tolist() == [16.0] * 64
    body, json_size = triton_body({"text": "good film"})
    assert json.loads(body[:json_size])["inputs"][0]["shape"] == [1, 1] and body.endswith(b"good film")


def test_the_report_has_a_row_per_stack_and_model_with_its_figures():
    point = lambda c, rate: {"concurrency": c, "throughput": rate, "p50_ms": 1000 / rate, "p99_ms": 5.0,  # noqa: E731
                             "errors": 0, "client_cores": 0.05}  # fmt: skip
    report = {"command": "maas bench peers", "date": "today", "cpus": 2, "load_average_at_start": 0.3,
              "duration_s": 10, "warmup_s": 3, "check_rows": 50,
              "setups": {"maas_triton": "defaults", "fastapi": "no batching"},
              "labels": {"maas_triton": "maas on Triton", "fastapi": "FastAPI"},
              "results": {"maas_triton": {"digits": {"check": {"labels": ["7"]}, "points": [point(1, 2000.0),
                                                                                             point(16, 7000.0)]}},
                          "fastapi": {"digits": {"check": {"labels": ["7"], "agree": 49, "of": 50},
                                                 "points": [point(1, 2800.0), point(16, 2600.0)]}}}}  # fmt: skip
    text = markdown(report)
    assert "| maas on Triton | defaults | 2,000 | 7,000 | 0.50 | 5.0 | 0 | 0.05 | reference |" in text
    assert "| FastAPI | no batching | 2,800 | 2,600 | 0.36 | 5.0 | 0 | 0.05 | 49/50 |" in text
