"""Reliability parts that need no server: health probes, the retrying client, rate-limited logs, Triton's key."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import stat
import time
import types

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from handlers.artifact import read_manifest
from handlers.log_limit import RateLimit
from handlers.tasks import load_pipeline
from scripts.packaging.probe import encode_tensor, make_probe
from scripts.serving.client import RetryPolicy, TorchServeClient, triton_transient
from scripts.serving.keys import ADMIN_APIS, KEY_HEADER, TritonAccess
from scripts.serving.pod_probe import torchserve_body
from scripts.serving.probe import decode_tensor, triton_inputs
from scripts.serving.processes import free_ports


# ---- deep health probes ----------------------------------------------------------------------------------
@pytest.fixture(params=["digits", "text", "tabular"])
def artifact(request):
    if request.param == "tabular":
        return request.getfixturevalue("tabular_artifacts")[0]
    return request.getfixturevalue(f"{request.param}_artifact")  # only the one asked for is trained


def test_a_probe_is_answered_through_both_servers_contracts(artifact):
    """The probe is one held-out row in each server's wire form, and each adapter path answers it."""
    pipeline = load_pipeline(artifact)
    probe = make_probe(artifact, read_manifest(artifact))
    body, content_type = torchserve_body(probe)
    body = json.loads(body) if content_type == "application/json" else body  # as TorchServe decodes it
    assert len(pipeline.parse_json(body).rows) == len(pipeline.parse_tensors(triton_inputs(probe)).rows) == 1
    ((status, answer),) = pipeline.handle_json([body])
    assert status == 200, answer
    from_tensors = pipeline.handle_tensors([triton_inputs(probe)])[0]
    assert not isinstance(from_tensors, Exception), from_tensors


def test_an_artifact_without_a_self_check_has_no_probe(digits_artifact, tmp_path):
    copy = tmp_path / "digits"
    shutil.copytree(digits_artifact, copy)
    (copy / "self_check.json").unlink()
    assert make_probe(copy, read_manifest(copy, verify=False)) is None


# ---- the retrying client ---------------------------------------------------------------------------------
def torchserve_answering(statuses: list[int]) -> tuple[TorchServeClient, list]:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(statuses[min(len(calls) - 1, len(statuses) - 1)], json={"n": len(calls)})

    client = TorchServeClient("http://ts.invalid", key="k", policy=RetryPolicy(backoff=0.001))
    client.http = httpx.Client(base_url="http://ts.invalid", transport=httpx.MockTransport(answer))
    return client, calls


@pytest.mark.parametrize("transient", [503, 507])
def test_transient_torchserve_failures_are_retried(transient):
    client, calls = torchserve_answering([transient, transient, 200])
    response = client.predict("digits", content=b"x")
    assert response.status_code == 200 and len(calls) == 3 and client.policy.retried == 2


def test_each_try_carries_the_deadline_of_its_own_wait():
    """A try the client abandons after its read timeout must not be computed later: its deadline is that timeout,
    not the whole request's (a retry would otherwise double the work)."""
    client, calls = torchserve_answering([200])
    client.http = httpx.Client(base_url="http://ts.invalid", timeout=2.0, transport=client.http._transport)
    sent = time.time() * 1e3
    client.predict("digits", content=b"x")  # the policy allows 30 s in all
    deadline = float(calls[0].headers["X-Request-Deadline"])
    assert sent + 1_000 < deadline <= time.time() * 1e3 + 2_000


@pytest.mark.parametrize("refusal", [400, 404, 413])
def test_a_4xx_is_the_answer_and_never_retried(refusal):
    client, calls = torchserve_answering([refusal, 200])
    assert client.predict("digits", content=b"x").status_code == refusal and len(calls) == 1


def test_retries_are_bounded_by_attempts_and_by_the_deadline():
    client, calls = torchserve_answering([507])
    client.policy = RetryPolicy(attempts=4, backoff=0.001)
    assert client.predict("digits", content=b"x").status_code == 507 and len(calls) == 4
    policy, tries = RetryPolicy(attempts=100, deadline=0.3, backoff=0.05, max_backoff=0.05), []

    def failing(_left):
        tries.append(1)
        raise ConnectionResetError("reset by peer")

    with pytest.raises(ConnectionResetError):
        policy.run(failing, lambda outcome: isinstance(outcome, ConnectionError))
    assert 2 <= len(tries) < 100


@pytest.mark.parametrize(
    ("status", "message", "transient"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", True),
        (
            "StatusCode.INTERNAL",
            "Failed to process the request(s) for model 'digits_0_0', message: Stub process "
            "'digits_0_0' is not healthy.",
            True,
        ),  # fmt: skip
        ("StatusCode.UNAVAILABLE", "Request for unknown model: 'digits' has no available versions", True),
        ("StatusCode.INVALID_ARGUMENT", "could not decode the image", False),
        ("400", "[request id: <id_unknown>] unexpected shape for input 'IMAGE'", False),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", False),
        ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-k'", False),
    ],
)
def test_triton_failures_retried_are_the_transient_ones(status, message, transient):
    assert triton_transient(InferenceServerException(message, status=status)) is transient


# ---- bounded logs ----------------------------------------------------------------------------------------
def test_repeated_messages_are_rate_limited_and_the_drop_is_reported():
    now = [0.0]
    limit = RateLimit(burst=3, period=60, clock=lambda: now[0])

    def record(msg="bad request from %s"):
        return logging.LogRecord("handlers.pipeline", logging.WARNING, __file__, 1, msg, ("x",), None)

    assert [limit.filter(record()) for _ in range(10)] == [True] * 3 + [False] * 7
    assert limit.filter(record("another message"))  # each message template has its own budget
    now[0] = 61
    late = record()
    assert limit.filter(late) and "[7 more like this in the last 61 s not logged]" in late.getMessage()


# ---- Triton's access key ---------------------------------------------------------------------------------
def test_the_triton_key_restricts_every_admin_api_and_optionally_inference(tmp_path):
    access = TritonAccess()
    http, grpc = access.server_flags()
    assert http == f"--http-restricted-api={','.join(ADMIN_APIS)}:{KEY_HEADER}={access.key}"
    assert grpc.startswith("--grpc-restricted-protocol=") and "inference" not in grpc
    assert access.inference_headers() == {} and access.admin_headers() == {KEY_HEADER: access.key}
    assert access.admin_headers(grpc=True) == {f"triton-grpc-protocol-{KEY_HEADER}": access.key}
    protected = TritonAccess(protect_inference=True)
    assert "inference" in protected.server_flags()[0] and protected.inference_headers() == {KEY_HEADER: protected.key}
    assert len(access.key) >= 40 and access.key != protected.key
    access.write(tmp_path / "key.json")
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600
    assert TritonAccess.read(tmp_path / "key.json") == access and TritonAccess.read(tmp_path / "none") is None


def test_probe_tensors_keep_their_dtype():
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[b"\x00\xffpng"]], dtype=np.object_)):
        back = decode_tensor(encode_tensor("X", array))
        assert back.dtype == array.dtype and back.shape == array.shape and (back == array).all()


def test_ports_for_one_server_are_distinct_and_free():
    # Taken one at a time, the kernel may hand out the same just-released port twice (a CI failure: TorchServe's
    # HTTP and gRPC ports collided); taken together they differ, and each can be bound.
    ports = free_ports(64)
    assert len(set(ports)) == 64
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_each_triton_probe_gets_its_own_headers(monkeypatch):
    """tritonclient adds int-valued headers to the dict it is given; a language model probed after a classifier
    got them, and httpx refused them: the supervisor's check crashed and took tritonserver down."""
    import scripts.serving.health as health

    class Client:  # tritonclient.http's client, as far as the probe uses it
        def __init__(self, *args, **kwargs):
            pass

        def infer(self, model, inputs, headers):
            headers["Inference-Header-Content-Length"] = 42  # what tritonclient does with binary inputs
            return types.SimpleNamespace(get_response=lambda: {"model_version": "1"})

        def close(self):
            pass

    sent = []
    monkeypatch.setattr(health.triton_http, "InferenceServerClient", Client)
    monkeypatch.setattr(health, "triton_inputs", lambda probe: {})
    monkeypatch.setattr(health, "infer_inputs", lambda module, inputs: [])
    monkeypatch.setattr(health.httpx, "post", lambda url, json, headers, timeout: sent.append(dict(headers))
                        or httpx.Response(200))  # fmt: skip
    probes = {"a_classifier": {"inputs": {}}, "b_lm": {health.GENERATE: {"text_input": "x"}}}
    results = health.triton_health("127.0.0.1:1", headers={"maas-triton-key": "k"}, probes=probes)
    assert [r.ok for r in results] == [True, True] and sent == [{"maas-triton-key": "k"}]
