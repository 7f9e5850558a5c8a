"""Deadlines and overload on the real servers: a request past its deadline is refused uncomputed (Triton's queue
policy, ``serving.deadline_ms`` and the request's ``timeout``: the model ``sentiment_deadline`` is built with a 5 s
deadline), a full batch keeps its reply margin, and a burst leaves TorchServe answering."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from scripts.serving.keys import bearer
from tests.integration.test_digits_serving import metric_total

pytestmark = pytest.mark.models("sentiment", "sentiment_deadline", "sentiment_margin")
TEXT = b"A gorgeous, witty and deeply moving film; the best I have seen this year."


def in_parallel(threads: int, each: int, call) -> Counter:
    """``call()`` ``each`` times on each of ``threads`` threads; how often each outcome came back."""
    outcomes, lock = Counter(), threading.Lock()

    def work():
        for _ in range(each):
            outcome = call()
            with lock:
                outcomes[outcome] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    return outcomes


def test_triton_refuses_a_request_past_its_deadline_without_computing_it(triton):
    metrics_url = f"http://127.0.0.1:{triton.metrics}/metrics"
    scrape = lambda: httpx.get(metrics_url, timeout=10).text  # noqa: E731
    before = scrape()
    local = threading.local()

    def ask() -> str:  # each thread its own client; a 1 µs deadline: refused whenever it had to queue
        if not hasattr(local, "client"):
            local.client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
        text = triton_grpc.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[TEXT]], dtype=np.object_))
        try:
            local.client.infer("sentiment_deadline", [text], timeout=1)
            return "answered"
        except Exception as exc:
            return f"{exc.status()} {exc.message()}"

    outcomes = in_parallel(16, 20, ask)
    refused = outcomes["StatusCode.UNAVAILABLE Request timeout expired"]
    assert refused + outcomes["answered"] == 320, outcomes  # nothing else: no 500, no hang
    assert refused > 0, outcomes  # 16 clients at once: most requests queue behind a forward pass
    rows = ("maas_rows_total", 'model="sentiment_deadline"')
    rejections = ("nv_inference_request_failure", 'model="sentiment_deadline"', 'reason="REJECTED"')
    for _ in range(50):  # the counters move a moment after the answers
        after = scrape()
        computed = metric_total(after, *rows) - metric_total(before, *rows)
        rejected = metric_total(after, *rejections) - metric_total(before, *rejections)
        if computed == outcomes["answered"] and rejected == refused:
            break
        time.sleep(0.1)
    assert computed == outcomes["answered"], "a refused request reached the model"  # one row per answered request
    assert rejected == refused
    answered = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    text = triton_grpc.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXT]], dtype=np.object_))
    assert answered.infer("sentiment_deadline", [text]).as_numpy("LABEL")[0][0] == b"positive"  # within 5 s


def test_a_burst_on_torchserve_is_answered_or_refused_and_leaves_it_answering(torchserve):
    """160 clients at once against a queue of 100 (job_queue_size): each request is answered 200 or refused with
    503, never 500 or left hanging; afterwards TorchServe answers as before."""
    headers = {**bearer(torchserve.inference_key), "Content-Type": "application/json"}
    body = b'{"text": "' + TEXT + b'"}'
    local = threading.local()

    def ask() -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        return local.client.post(f"{torchserve.inference_url}/predictions/sentiment", content=body,
                                 headers=headers).status_code  # fmt: skip

    outcomes = in_parallel(160, 5, ask)
    assert set(outcomes) <= {200, 503} and outcomes[200] > 0, outcomes
    assert httpx.post(f"{torchserve.inference_url}/predictions/sentiment", content=body, headers=headers,
                      timeout=30).json()["label"] == "positive"  # fmt: skip


def test_a_request_whose_deadline_passed_is_refused_by_both_servers_uncomputed(torchserve, triton):
    """The client's deadline (Unix ms): TorchServe's header, Triton's request parameter; checked per request by our
    adapters before any preprocessing (handlers/deadline.py)."""
    past, future = int(time.time() * 1e3) - 10, int(time.time() * 1e3) + 60_000
    headers = {**bearer(torchserve.inference_key), "Content-Type": "application/json"}
    url = f"{torchserve.inference_url}/predictions/sentiment"
    body = b'{"text": "' + TEXT + b'"}'
    refused = httpx.post(url, content=body, headers={**headers, "X-Request-Deadline": str(past)}, timeout=30)
    assert refused.status_code == 504 and "not computed" in refused.json()["error"]["message"]
    answered = httpx.post(url, content=body, headers={**headers, "X-Request-Deadline": str(future)}, timeout=30)
    assert answered.status_code == 200 and answered.json()["label"] == "positive"
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    text = triton_grpc.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXT]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not computed") as late:
        client.infer("sentiment", [text], parameters={"deadline": past})
    assert late.value.status() == "StatusCode.UNAVAILABLE"
    assert client.infer("sentiment", [text], parameters={"deadline": future}).as_numpy("LABEL")[0][0] == b"positive"


def test_a_full_batch_keeps_the_reply_margin_and_a_request_alone_does_not(torchserve, triton):
    """``sentiment_margin`` batches 2 requests at most and keeps a 60 s reply margin in a full batch: with 8 clients
    queued, requests whose deadline is 30 s away are refused uncomputed; one sent alone is answered."""
    margin = "with the server's queue full, its answer up to 60000 ms more"
    deadline = lambda: int(time.time() * 1e3) + 30_000  # noqa: E731
    headers = {**bearer(torchserve.inference_key), "Content-Type": "application/json"}
    url = f"{torchserve.inference_url}/predictions/sentiment_margin"
    body = b'{"text": "' + TEXT + b'"}'
    local = threading.local()

    def torchserve_post() -> httpx.Response:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=60)
        return local.http.post(url, content=body, headers={**headers, "X-Request-Deadline": str(deadline())})

    def ask_torchserve() -> str:
        answer = torchserve_post()
        if answer.status_code == 200:
            return "answered"
        message = answer.json()["error"]["message"]
        return "margin" if answer.status_code == 504 and margin in message else f"{answer.status_code} {message}"

    def triton_infer():
        if not hasattr(local, "grpc"):
            local.grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
        text = triton_grpc.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[TEXT]], dtype=np.object_))
        return local.grpc.infer("sentiment_margin", [text], parameters={"deadline": deadline()})

    def ask_triton() -> str:
        try:
            triton_infer()
            return "answered"
        except InferenceServerException as exc:
            refused = exc.status() == "StatusCode.UNAVAILABLE" and margin in exc.message()
            return "margin" if refused else f"{exc.status()} {exc.message()}"

    for ask in (ask_torchserve, ask_triton):
        outcomes = in_parallel(8, 8, ask)
        assert set(outcomes) <= {"answered", "margin"} and outcomes["margin"] > 0, (ask.__name__, outcomes)
    assert torchserve_post().json()["label"] == "positive"  # alone: a batch with room keeps no margin
    assert triton_infer().as_numpy("LABEL")[0][0] == b"positive"


def test_triton_drops_the_queued_work_of_a_cancelled_grpc_call(triton):
    """A gRPC call cancelled by its client leaves Triton's queue uncomputed (Triton's core checks for cancellation
    as it forms each batch), and the server answers as before. 256 calls at once, all but the first 32 cancelled
    at once: far more than one forward pass takes, so many are still queued when the cancellation arrives."""
    metrics_url = f"http://127.0.0.1:{triton.metrics}/metrics"
    computed = lambda: metric_total(httpx.get(metrics_url, timeout=10).text, "nv_inference_count",  # noqa: E731
                                    'model="sentiment"')  # fmt: skip
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    text = triton_grpc.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXT]], dtype=np.object_))
    client.infer("sentiment", [text])  # warm: the first call's connection set-up is not part of the burst
    before, errors, done = computed(), [], threading.Semaphore(0)

    def callback(result, error):
        errors.append(error)
        done.release()

    calls = [client.async_infer("sentiment", [text], callback=callback) for _ in range(256)]
    for call in calls[32:]:
        call.cancel()
    assert all(done.acquire(timeout=60) for _ in calls), "a call was never answered"
    assert errors.count(None) >= 32, {str(error) for error in errors}  # the 32 not cancelled were all answered
    assert all("CANCELLED" in str(error) for error in errors if error is not None)
    settled, last = 0, -1.0
    while settled < 5:  # the counter moves a moment after the answers: wait until it holds still
        now = computed()
        settled, last = (settled + 1 if now == last else 0), now
        time.sleep(0.2)
    assert last - before < 256, f"{last - before:.0f} of 256 requests computed: no cancelled one was dropped"
    assert client.infer("sentiment", [text]).as_numpy("LABEL")[0][0] == b"positive"
