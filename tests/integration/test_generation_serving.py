"""Language models on the real servers: streamed and whole answers, shared batches, seeds, refusals, cancellation.

TorchServe is driven over HTTP (chunked NDJSON), Triton over HTTP ``generate`` / ``generate_stream`` (SSE) and gRPC
``ModelStreamInfer``. The expected text is the engine's own, in process (its tokens equal ``model.generate``'s:
tests/unit/test_generation_engine.py); the prompts are those whose greedy picks keep clear of near ties, so a batch
shared with other requests cannot change them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc

from handlers.generation.sampling import SamplingParams
from handlers.generation.service import GenerationService
from scripts.serving.keys import bearer
from scripts.serving.lm_samples import triton_grpc as grpc_stream
from tests.fixtures.lm import KINDS, stable_prompts

pytestmark = pytest.mark.models(*(f"lm_{kind}" for kind in KINDS))
GREEDY = {"max_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def expected(lm_artifacts) -> dict:
    """(kind, prompt) -> the in-process engine's greedy text, for every stable prompt."""
    answers = {}
    for kind, artifact in lm_artifacts.items():
        engine = GenerationService(artifact).engine
        for prompt in stable_prompts(artifact):
            answers[kind, prompt] = engine.generate(prompt, SamplingParams(**GREEDY))[0]
    return answers


def torchserve_generate(torchserve, model: str, body: dict) -> tuple[int, list[dict]]:
    """Status and the NDJSON lines (one line for a whole answer or an error)."""
    url = f"{torchserve.inference_url}/predictions/{model}"
    with httpx.stream("POST", url, json=body, headers=bearer(torchserve.inference_key), timeout=60) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    return response.status_code, lines


def triton_generate(triton, model: str, body: dict, stream: bool = False) -> tuple[int, list[dict]]:
    url = f"http://127.0.0.1:{triton.http}/v2/models/{model}/generate{'_stream' if stream else ''}"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        text = "".join(response.iter_text())
    if not stream or response.status_code != 200:
        return response.status_code, [json.loads(text)]
    return 200, [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_answers_on_both_servers_equal_the_engine_in_process(torchserve, triton, lm_artifacts, expected,
                                                                      kind):  # fmt: skip
    """Every prompt at once, whole and streamed, on both servers: they share batches at different positions."""
    model, prompts = f"lm_{kind}", stable_prompts(lm_artifacts[kind])
    address = f"127.0.0.1:{triton.grpc}"
    calls = []
    for prompt in prompts:
        body = {"text_input": prompt, "exclude_input_in_output": True, **GREEDY}
        calls += [
            ("ts", prompt, lambda b=body: torchserve_generate(torchserve, model, b)),
            ("ts-stream", prompt, lambda b=body: torchserve_generate(torchserve, model, b | {"stream": True})),
            ("triton", prompt, lambda b=body: triton_generate(triton, model, b)),
            ("triton-sse", prompt, lambda b=body: triton_generate(triton, model, b | {"stream": True}, True)),
            ("triton-grpc", prompt, lambda p=prompt: list(grpc_stream(address, model, {}, p, GREEDY))),
        ]
    with ThreadPoolExecutor(len(calls)) as pool:
        outcomes = list(pool.map(lambda call: call[2](), calls))
    for (path, prompt, _), outcome in zip(calls, outcomes, strict=True):
        want = expected[kind, prompt]
        if path == "triton-grpc":
            assert "".join(outcome) == want, (path, prompt)
            continue
        status, lines = outcome
        assert status == 200, (path, lines)
        assert "".join(line["text_output"] for line in lines) == want, (path, prompt, lines)
        assert lines[-1]["finish_reason"] in ("stop", "length"), (path, lines[-1])
        if path.startswith("ts"):
            assert lines[-1]["usage"]["completion_tokens"] >= 1
        else:  # Triton: the counts come with the last answer only, as the finish reason does
            assert lines[-1]["completion_tokens"] >= 1
            assert not any("completion_tokens" in line or "finish_reason" in line for line in lines[:-1]), lines


def test_torchserve_streams_with_the_content_type_and_version_of_its_first_chunk(torchserve):
    """Headers go out with the status line: a stream of many chunks (and a whole answer) keeps them."""
    url = f"{torchserve.inference_url}/predictions/lm_gpt2"
    for stream, kind in ((True, "application/x-ndjson"), (False, "application/json")):
        body = {"text_input": "the model", "max_tokens": 12, "ignore_eos": True, "stream": stream}
        with httpx.stream("POST", url, json=body, headers=bearer(torchserve.inference_key), timeout=60) as response:
            lines = [line for line in response.iter_lines() if line.strip()]
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), response.headers
        assert response.headers["x-model-version"] == "1" and (len(lines) > 1 if stream else len(lines) == 1), lines


def test_a_whole_answer_repeats_the_prompt_unless_asked_not_to(torchserve, triton, lm_artifacts, expected):
    prompt = stable_prompts(lm_artifacts["gpt2"])[0]
    body = {"text_input": prompt, **GREEDY}
    status, [line] = torchserve_generate(torchserve, "lm_gpt2", body)
    assert status == 200 and line["text_output"] == prompt + expected["gpt2", prompt]
    status, [line] = triton_generate(triton, "lm_gpt2", body)
    assert status == 200 and line["text_output"] == prompt + expected["gpt2", prompt]


def test_a_seeded_sample_is_the_same_alone_and_in_a_busy_batch(torchserve, triton):
    seeded = {"text_input": "the model", "max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": 7,
              "exclude_input_in_output": True}  # fmt: skip
    others = [{"text_input": f"the engine {i}", "max_tokens": 16, "temperature": 1.0} for i in range(6)]
    for generate in (lambda b: torchserve_generate(torchserve, "lm_llama", b),
                     lambda b: triton_generate(triton, "lm_llama", b)):  # fmt: skip
        _, [alone] = generate(seeded)
        with ThreadPoolExecutor(7) as pool:
            busy = list(pool.map(generate, [seeded, *others]))
        assert all(status == 200 for status, _ in busy)
        assert busy[0][1][0]["text_output"] == alone["text_output"]


BAD = [
    ({"text_input": ""}, "prompt is empty"),
    ({"text_input": "x" * 3000}, "this model's context is"),
    ({"text_input": "hi", "max_tokens": 0}, "max_tokens must be at least 1"),
    ({"text_input": "hi", "max_tokens": 100000}, "max_tokens must be at most"),
    ({"text_input": "hi", "temperature": -1}, "temperature must be at least 0"),
    ({"text_input": "hi", "top_p": 0}, "top_p must be in (0, 1]"),
    ({"text_input": "hi", "top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"text_input": "hi", "max_tokens": "5"}, "max_tokens"),
    ({"text_input": 5}, "text_input must be a string"),
    ({"text_input": "hi", "bogus": 1}, "unknown field bogus"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_requests_are_refused_before_any_token_and_the_servers_stay_healthy(torchserve, triton, body, message):
    status, lines = torchserve_generate(torchserve, "lm_gpt2", body)
    assert status == 400 and message in lines[0]["error"]["message"], lines
    # Triton's generate takes sampling settings as request parameters, the prompt as an input
    params = {k: v for k, v in body.items() if k != "text_input"}
    status, [answer] = triton_generate(triton, "lm_gpt2", {"text_input": body["text_input"], "parameters": params})
    if isinstance(body["text_input"], str):
        assert status == 400 and message in answer["error"], answer
    else:  # Triton's own HTTP frontend refuses it before the model sees it (as a 500: its parser's fault, not ours)
        assert "Unable to parse JSON bytes" in answer["error"], answer
    assert torchserve_generate(torchserve, "lm_gpt2", {"text_input": "hi", "max_tokens": 2})[0] == 200
    assert triton_generate(triton, "lm_gpt2", {"text_input": "hi", "parameters": {"max_tokens": 2}})[0] == 200


def test_non_utf8_bodies_are_refused(torchserve, triton):
    headers = bearer(torchserve.inference_key) | {"Content-Type": "text/plain"}
    response = httpx.post(f"{torchserve.inference_url}/predictions/lm_gpt2", content=b'{"text_input": "\xff"}',
                          headers=headers, timeout=30)  # fmt: skip
    assert response.status_code == 400 and "UTF-8" in response.text
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error or result))
    text = triton_grpc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    client.async_stream_infer("lm_gpt2", [text])
    error = results.get(timeout=30)
    client.stop_stream()
    assert isinstance(error, Exception) and "not UTF-8" in str(error)


def metric(text: str, name: str, **labels) -> float:
    """The sum of a Prometheus sample's values over the series whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


LONG = {"max_tokens": 240, "temperature": 0, "ignore_eos": True}


def wait_for(condition, timeout: float = 20.0) -> None:

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_client_that_goes_away_frees_its_slot_on_torchserve(torchserve):
    """The client reads one chunk and closes the connection: TorchServe drops the request and calls the handler no
    more for it (with nothing else in flight, it calls it not at all, and the engine stops a couple of steps after
    the last call: no generation runs on for nobody). When another request arrives, the handler cancels the sequence:
    counted as cancelled, its slot free."""
    url = f"{torchserve.inference_url}/predictions/lm_gpt2"
    scrape = lambda: httpx.get(f"{torchserve.metrics_url}/metrics", timeout=10).text  # noqa: E731
    before = metric(scrape(), "maas_request_finished_cancelled_total", ModelName="lm_gpt2")
    generated = metric(scrape(), "maas_generation_tokens_total", ModelName="lm_gpt2")
    with httpx.stream("POST", url, json={"text_input": "the model", "stream": True, **LONG},
                      headers=bearer(torchserve.inference_key), timeout=60) as response:  # fmt: skip
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert json.loads(first)["finish_reason"] is None
    time.sleep(1.0)  # an engine left running would generate all 240 tokens by now
    assert torchserve_generate(torchserve, "lm_gpt2", {"text_input": "hi", "max_tokens": 2})[0] == 200
    wait_for(lambda: metric(scrape(), "maas_request_finished_cancelled_total", ModelName="lm_gpt2") == before + 1)
    wait_for(lambda: metric(scrape(), "maas_num_requests_running", ModelName="lm_gpt2") == 0)
    ran_on = metric(scrape(), "maas_generation_tokens_total", ModelName="lm_gpt2") - generated - 2
    assert ran_on < LONG["max_tokens"] // 4, f"the cancelled sequence generated {ran_on} tokens"


def test_a_cancelled_grpc_stream_frees_its_slot_on_triton(triton):
    scrape = lambda: httpx.get(f"http://127.0.0.1:{triton.metrics}/metrics", timeout=10).text  # noqa: E731
    reason = {"model": "lm_gpt2", "finished_reason": "cancelled"}
    before = metric(scrape(), "maas_request_finished_total", **reason)
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error or result))
    inputs = [triton_grpc.InferInput("text_input", [1], "BYTES"), triton_grpc.InferInput("stream", [1], "BOOL")]
    inputs[0].set_data_from_numpy(np.array([b"the model"], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([True]))
    client.async_stream_infer("lm_gpt2", inputs, parameters=LONG)
    first = results.get(timeout=60)
    assert not isinstance(first, Exception), first
    client.stop_stream(cancel_requests=True)
    wait_for(lambda: metric(scrape(), "maas_request_finished_total", **reason) == before + 1)
    wait_for(lambda: metric(scrape(), "maas_num_requests_running", model="lm_gpt2") == 0)
    generated = metric(scrape(), "maas_generation_tokens_total", model="lm_gpt2")
    assert triton_generate(triton, "lm_gpt2", {"text_input": "hi", "parameters": {"max_tokens": 2}})[0] == 200
    wait_for(lambda: metric(scrape(), "maas_generation_tokens_total", model="lm_gpt2") == generated + 2)
    assert metric(scrape(), "maas_time_to_first_token_seconds_count", model="lm_gpt2") >= 2


@pytest.fixture(scope="module")
def torchserve_grpc(torchserve, tmp_path_factory):
    import grpc

    from tests.fixtures.torchserve_grpc import torchserve_grpc_stubs

    inference_pb2, inference_pb2_grpc = torchserve_grpc_stubs(tmp_path_factory.mktemp("ts-grpc"))
    channel = grpc.insecure_channel(f"127.0.0.1:{torchserve.grpc_port}")
    yield inference_pb2, inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    channel.close()


def test_torchserve_refuses_grpc_for_language_models_at_once(torchserve, torchserve_grpc):
    """TorchServe 0.12's gRPC job reports a live stream as closed, so continuous batching drops a gRPC request after
    its first chunk and the call would hang until its deadline: both calls are answered at once with why."""
    inference_pb2, stub = torchserve_grpc
    metadata = [("authorization", f"Bearer {torchserve.inference_key}")]
    body = json.dumps({"text_input": "the model", "stream": True, **GREEDY}).encode()
    request = inference_pb2.PredictionsRequest(model_name="lm_gpt2", input={"data": body})
    [message] = list(stub.StreamPredictions(request, metadata=metadata, timeout=30))
    assert "answer over HTTP only" in json.loads(message.prediction)["error"]["message"]
    answer = stub.Predictions(request, metadata=metadata, timeout=30)
    assert "answer over HTTP only" in json.loads(answer.prediction)["error"]["message"]
    assert torchserve_generate(torchserve, "lm_gpt2", {"text_input": "hi", "max_tokens": 2})[0] == 200


def test_the_deep_health_probe_asks_each_language_model_for_a_token(torchserve, triton, built_models):
    """The probe written at build time (one greedy token) answers on both servers: ``maas serve status`` and the
    Triton supervisor see a live model, not only a ready one."""
    from scripts.serving.health import torchserve_health, triton_health

    store, repository = built_models.root / "model_store", built_models.root / "model_repository"
    results = torchserve_health(torchserve.inference_url, torchserve.inference_key, store)
    results += triton_health(f"127.0.0.1:{triton.http}", repository)
    language_models = [r for r in results if r.model.startswith("lm_")]
    assert len(language_models) == 2 * len(KINDS), results
    assert all(r.ok for r in language_models), language_models
    assert {r.detail for r in language_models} == {"HTTP 200, version 1", "generate: HTTP 200"}


def thread_cores(process) -> list[set[int]]:
    """The cores each thread of ``process`` may run on (a thread that ended meanwhile is left out)."""
    cores = []
    for thread in process.threads():
        with contextlib.suppress(OSError):
            cores.append(os.sched_getaffinity(thread.id))
    return cores


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="one core")
def test_each_language_model_engine_has_cores_of_its_own_and_the_servers_stay_unbound(torchserve, triton):
    """``serving.bind_cores`` on the real servers: each language model's process (a TorchServe worker, a Triton stub)
    has its engine's threads on every core but the first and all its other threads on the first; the servers' own
    processes keep every core. (Classifiers' processes are not looked at: ONNX Runtime pins its own pool threads.)"""
    allowed = os.sched_getaffinity(0)
    others = {min(allowed)}
    engine = allowed - others
    for server in (torchserve, triton):
        root = psutil.Process(server.process.pid)
        tree = [root, *root.children(recursive=True)]
        shapes = {process: thread_cores(process) for process in tree}
        bound = [p for p, cores in shapes.items() if engine in cores and all(c in (engine, others) for c in cores)]
        if server is triton:  # a stub names its model's file; a TorchServe worker names no model
            stubs = [p for p in tree if any(f"/lm_{kind}/" in part for kind in KINDS for part in p.cmdline())]
            assert len(stubs) == len(KINDS) and set(stubs) <= set(bound), [shapes[p] for p in stubs]
        assert len(bound) >= len(KINDS), f"{len(bound)} language-model processes bound under {root.name()}"
        front = [(p.name(), cores) for p, cores in shapes.items() if p.name() in ("java", "tritonserver")]
        assert front and all(c == allowed for _, cores in front for c in cores), front
