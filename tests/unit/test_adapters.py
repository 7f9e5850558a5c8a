"""Both server adapters against fakes of the servers' objects, on the packaged layouts the builders write."""

from __future__ import annotations

import json
import time
import zipfile

import numpy as np
import pytest

from scripts.packaging.build import build
from scripts.serving.samples import digit_png
from scripts.serving.standins import FakeContext, install_fake_pb_utils


@pytest.fixture(scope="module")
def built(digits_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    build(digits_artifact, model_store=root / "store", triton_repository=root / "repo")
    return root


def test_torchserve_handler_sets_status_per_request(built, held_out_digits):
    from handlers.torchserve_handler import MaasHandler

    model_dir = built / "unpacked"
    zipfile.ZipFile(built / "store" / "digits.mar").extractall(model_dir)
    handler = MaasHandler()
    context = FakeContext(str(model_dir))
    handler.initialize(context)
    png = digit_png(held_out_digits[0][0])
    data = [{"body": png}, {"data": b"not an image"}, {"file": png}]  # raw body, "data", multipart field
    answers = [json.loads(a) for a in handler.handle(data, context)]
    assert answers[0]["label"] == answers[2]["label"] == str(held_out_digits[1][0])
    assert context.statuses == {1: (400, answers[1]["error"]["message"])}
    assert set(context.content_types.values()) == {"application/json"}
    assert all(context.headers[idx]["X-Model-Version"] == "1" for idx in range(3))  # the archive's 1.0
    assert context.metrics.totals["MaasRows"] == 2 and context.metrics.totals["MaasBatches"] == 1
    assert context.metrics.dimensions["MaasRows"][0] == ("ModelVersion", "1")
    assert context.metrics.totals["MaasForwardMs"] > 0


def triton_digits_model(built):
    """The Triton adapter, initialised on the built digits repository with the stand-in pb_utils."""
    pb = install_fake_pb_utils()
    from handlers.triton_model import TritonPythonModel

    config = json.dumps(
        {
            "input": [{"name": "IMAGE"}, {"name": "PIXELS"}],
            "output": [
                {"name": n, "data_type": t}
                for n, t in [("LABEL", "TYPE_STRING"), ("PROBABILITY", "TYPE_FP32"), ("PROBABILITIES", "TYPE_FP32")]
            ],
        }
    )
    model = TritonPythonModel()
    model.initialize(
        {
            "model_config": config,
            "model_name": "digits",
            "model_repository": str(built / "repo" / "digits"),
            "model_version": "1",
        }
    )
    return pb, model


def test_triton_model_answers_each_request_and_maps_errors(built, held_out_digits):
    pb, model = triton_digits_model(built)
    images = held_out_digits[0][:3]
    good = pb.InferenceRequest([pb.Tensor("PIXELS", images.astype(np.float32))])
    bad = pb.InferenceRequest([pb.Tensor("IMAGE", np.array([[b"junk"]], dtype=np.object_))])
    rows_key = ("maas_rows_total", (("model", "digits"), ("version", "1")))
    rows_before = pb.MetricFamily.totals.get(rows_key, 0)  # the stand-in is shared by the session (maas check too)
    responses = model.execute([good, bad])
    assert len(responses) == 2
    labels = {t.name(): t.as_numpy() for t in responses[0].output_tensors}["LABEL"]
    assert [v.decode() for v in labels[:, 0]] == [str(y) for y in held_out_digits[1][:3]]
    assert responses[1].error.code() == "INVALID_ARG" and "could not decode" in responses[1].error.message()
    assert pb.MetricFamily.totals[rows_key] - rows_before == 3
    loaded = [m for level, m in pb.Logger.logged if level == "info" and "self-check" in m]  # in the server's log
    assert loaded and "passed" in loaded[-1]


def test_triton_metrics_are_sent_at_most_every_flush_interval_and_none_is_lost(built, held_out_digits, monkeypatch):
    pb, model = triton_digits_model(built)
    import handlers.batched_counters as batched_counters

    clock, interval = [1000.0], model.pipeline.manifest.serving.metrics_interval_s
    monkeypatch.setattr(batched_counters.time, "monotonic", lambda: clock[0])
    rows_key = ("maas_rows_total", (("model", "digits"), ("version", "1")))
    before = pb.MetricFamily.totals.get(rows_key, 0)
    request = lambda n: pb.InferenceRequest([pb.Tensor("PIXELS", held_out_digits[0][:n].astype(np.float32))])  # noqa: E731
    model.execute([request(2)])  # the first batch is sent at once
    assert pb.MetricFamily.totals[rows_key] - before == 2
    clock[0] += interval / 2
    model.execute([request(3)])  # within the interval: kept, not sent
    assert pb.MetricFamily.totals[rows_key] - before == 2
    clock[0] += interval
    model.execute([request(1)])  # the interval passed: everything kept is sent
    assert pb.MetricFamily.totals[rows_key] - before == 6


def test_torchserve_metrics_kept_within_the_interval_are_handed_over_once_batches_stop(built, held_out_digits):
    """TorchServe's metrics may be recorded off the request thread: a timer hands over what the last batches left."""
    from handlers.torchserve_handler import MaasHandler

    model_dir = built / "unpacked-metrics"
    zipfile.ZipFile(built / "store" / "digits.mar").extractall(model_dir)
    handler, context = MaasHandler(), FakeContext(str(model_dir))
    handler.initialize(context)
    png = digit_png(held_out_digits[0][0])
    handler.handle([{"body": png}] * 2, context)  # the first batch is handed over at once
    handler.handle([{"body": png}] * 3, context)  # within the interval: kept
    assert context.metrics.totals["MaasRows"] == 2 and context.metrics.totals["MaasBatches"] == 1
    time.sleep(handler.pipeline.manifest.serving.metrics_interval_s + 0.5)  # no batch comes: the timer fires
    assert context.metrics.totals["MaasRows"] == 5 and context.metrics.totals["MaasBatches"] == 2


def test_a_request_past_its_deadline_is_refused_uncomputed_and_its_batch_answered(built, held_out_digits):
    """Each request of a batch is checked on its own: the expired one gets 504 (Triton: UNAVAILABLE) before any
    preprocessing, a malformed deadline 400, and the others their answers; only the computed rows are counted."""
    from handlers.torchserve_handler import MaasHandler

    past, future = str(int(time.time() * 1e3) - 50), str(int(time.time() * 1e3) + 60_000)
    model_dir = built / "unpacked-deadline"
    zipfile.ZipFile(built / "store" / "digits.mar").extractall(model_dir)
    handler = MaasHandler()
    headers = [{"X-Request-Deadline": past}, {"x-request-deadline": future}, {}, {"X-Request-Deadline": "soon"}]
    context = FakeContext(str(model_dir), request_headers=headers)
    handler.initialize(context)
    png = digit_png(held_out_digits[0][0])
    answers = [json.loads(a) for a in handler.handle([{"body": png}] * 4, context)]
    assert context.statuses[0][0] == 504 and "deadline passed" in answers[0]["error"]["message"]
    assert context.statuses[3][0] == 400 and "Unix time in milliseconds" in answers[3]["error"]["message"]
    assert answers[1]["label"] == answers[2]["label"] == str(held_out_digits[1][0]) and set(context.statuses) == {0, 3}
    assert context.metrics.totals["MaasRows"] == 2 and context.metrics.totals["MaasExpired"] == 1
    handler.handle([{"body": png}], FakeContext(str(model_dir), request_headers=[{"X-Request-Deadline": past}]))
    assert context.metrics.totals["MaasRows"] == 2  # a batch of expired requests only: nothing ran
    assert handler.deadlines.batch_ms > 0  # the batch that ran was timed
    handler.deadlines.batch_ms = 120_000.0  # batches as slow as that: a deadline 60 s away cannot be kept
    late = FakeContext(str(model_dir), request_headers=[{"X-Request-Deadline": future}])
    answer = json.loads(handler.handle([{"body": png}], late)[0])
    assert late.statuses[0][0] == 504 and "answered late" in answer["error"]["message"]
    assert handler.deadlines.reply_margin_ms == 20.0  # serving.reply_margin_ms, for full batches (test_deadline.py)
    assert handler.deadlines.max_batch_size == handler.pipeline.manifest.serving.max_batch_size

    pb, model = triton_digits_model(built)
    rows_key = ("maas_rows_total", (("model", "digits"), ("version", "1")))
    expired_key = ("maas_expired_total", (("model", "digits"), ("version", "1")))
    rows, expired = pb.MetricFamily.totals.get(rows_key, 0), pb.MetricFamily.totals.get(expired_key, 0)
    pixels = [pb.Tensor("PIXELS", held_out_digits[0][:2].astype(np.float32))]
    responses = model.execute([pb.InferenceRequest(pixels, {"deadline": int(past)}),
                               pb.InferenceRequest(pixels, {"deadline": int(future)})])  # fmt: skip
    assert responses[0].error.code() == "UNAVAILABLE" and "not computed" in responses[0].error.message()
    assert responses[1].error is None and len(responses[1].output_tensors) == 3
    assert pb.MetricFamily.totals[rows_key] - rows == 2 and pb.MetricFamily.totals[expired_key] - expired == 1
    model.deadlines.batch_ms = 120_000.0
    late = model.execute([pb.InferenceRequest(pixels, {"deadline": int(future)})])[0]
    assert late.error.code() == "UNAVAILABLE" and "answered late" in late.error.message()
    assert (model.deadlines.max_batch_size, model.deadlines.reply_margin_ms) == (handler.deadlines.max_batch_size, 20.0)
