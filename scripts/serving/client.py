"""Clients that lose no request: per-request deadlines and bounded retries with backoff, for both servers.

Inference here is idempotent, so a request that failed for a transient reason can simply be sent again:

* TorchServe: 502/503/504 (queue full, server busy), 507 and 500 ``Worker died.`` (the worker died mid-batch;
  TorchServe restarts it), a refused or reset connection, a timed-out read;
* Triton (HTTP or gRPC): gRPC UNAVAILABLE, a refused or reset connection, and the Python backend's
  ``Stub process '...' is not healthy`` (the model's stub died; ``maas serve start`` reloads the model within
  seconds), a model that is reloading (not ready / unavailable).

A 4xx (a bad request, a wrong key, an unknown model) is never retried: it is the answer. Each try carries the
request's deadline (TorchServe: the header ``X-Request-Deadline``; Triton: the parameter ``deadline``, and its
``timeout``), so a server does not compute what the client no longer waits for. Each retry waits
``backoff * 2**attempt`` seconds (at most ``max_backoff``, with jitter), and no request outlives its ``deadline``.

    client = TorchServeClient("http://127.0.0.1:8080", key=read_inference_key(Path(".")))
    response = client.predict("sentiment", json={"text": "What a delight!"})   # an httpx.Response
    triton = TritonClient("127.0.0.1:8001", protocol="grpc")
    result = triton.infer("sentiment", {"TEXT": np.array([[b"What a delight!"]], dtype=object)})

With ``canary=CanarySplit()``, a client sends a running canary its share of the requests (``canary.py``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from handlers.deadline import DEADLINE_HEADER, DEADLINE_PARAMETER
from scripts.serving.canary import CanarySplit
from scripts.serving.keys import TritonAccess

TORCHSERVE_TRANSIENT = {502, 503, 504, 507}
TRITON_TRANSIENT = ("StatusCode.UNAVAILABLE", "is not healthy", "is not ready", "has no available versions",
                    "Request timeout expired")  # fmt: skip


@dataclass
class RetryPolicy:
    attempts: int = 10
    deadline: float = 30.0  # seconds for the whole request, retries included
    backoff: float = 0.1
    max_backoff: float = 2.0
    retried: int = field(default=0, compare=False)  # retries made so far through this policy (for reports)

    def run(self, call: Callable[[float], Any], transient: Callable[[Any], bool]) -> Any:
        """``call(seconds_left)`` until it returns a non-transient outcome (an exception or a value ``transient``
        accepts counts as transient), the attempts are spent or the deadline passes; the last outcome wins."""
        end = time.monotonic() + self.deadline
        for attempt in range(self.attempts):
            left = end - time.monotonic()
            try:
                outcome = call(max(left, 0.1))
                if not transient(outcome):
                    return outcome
            except Exception as exc:
                if not transient(exc):
                    raise
                outcome = exc
            pause = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
            if attempt == self.attempts - 1 or time.monotonic() + pause >= end:
                break
            self.retried += 1
            time.sleep(pause)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def torchserve_transient(outcome: Any) -> bool:
    if isinstance(outcome, httpx.Response):
        # A worker killed mid-batch fails its requests with 500 "Worker died." (TorchServe 0.12; 507 elsewhere).
        died = outcome.status_code == 500 and "Worker died" in outcome.text
        return outcome.status_code in TORCHSERVE_TRANSIENT or died
    return isinstance(outcome, (httpx.TransportError, ConnectionError))


def triton_transient(outcome: Any) -> bool:
    if isinstance(outcome, InferenceServerException):
        text = f"{outcome.status()} {outcome.message()}"
        if "is restricted" in text:  # a missing key: gRPC says UNAVAILABLE, but no retry will bring the key
            return False
        return any(marker in text for marker in TRITON_TRANSIENT)
    return isinstance(outcome, (ConnectionError, OSError, httpx.TransportError))


def unix_ms(seconds_from_now: float) -> int:
    """A deadline as the servers read it: Unix time in milliseconds (``handlers/deadline.py``)."""
    return int((time.time() + seconds_from_now) * 1e3)


def infer_inputs(module, inputs: dict[str, np.ndarray]) -> list:
    """tritonclient's ``InferInput`` objects (of ``module``: tritonclient.http or .grpc) for numpy arrays."""
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class TorchServeClient:
    """TorchServe's REST inference API with retries; ``predict`` returns the final ``httpx.Response``."""

    def __init__(self, url: str, key: str | None = None, policy: RetryPolicy | None = None, timeout: float = 10.0,
                 canary: CanarySplit | None = None):  # fmt: skip
        """``canary``: send a canary's share of the requests to it (``maas serve deploy --canary``)."""
        self.canary = canary
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.policy = policy or RetryPolicy()

    def predict(self, model: str, **request: Any) -> httpx.Response:
        """``request``: httpx's ``json=``, ``content=`` and ``headers=``."""

        def call(left: float) -> httpx.Response:  # routed per try: a retry follows a canary that has ended
            path = self.canary.torchserve_path(model) if self.canary else f"/predictions/{model}"
            wait = min(left, self.http.timeout.read or left)  # this try is abandoned after it: so is its work
            headers = {**request.get("headers", {}), DEADLINE_HEADER: str(unix_ms(wait))}  # refused uncomputed after
            return self.http.post(path, timeout=wait, **{**request, "headers": headers})

        return self.policy.run(call, torchserve_transient)

    def close(self) -> None:
        self.http.close()


class TritonClient:
    """Triton's V2 inference over ``http`` or ``grpc`` with retries; ``infer`` returns tritonclient's result."""

    def __init__(self, url: str, protocol: str = "grpc", access: TritonAccess | None = None,
                 policy: RetryPolicy | None = None, timeout: float = 10.0,
                 canary: CanarySplit | None = None):  # fmt: skip
        """``access``: the server's key (``read_triton_key()``), sent when inference is behind it; ``canary``: send a
        canary's share of the requests to it (``maas serve deploy --canary``)."""
        self.canary = canary
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        self.module, self.protocol, self.timeout = module, protocol, timeout
        kwargs = {} if protocol == "grpc" else {"network_timeout": timeout, "connection_timeout": timeout}
        self.client = module.InferenceServerClient(url, **kwargs)
        self.headers = access.inference_headers(grpc=protocol == "grpc") if access else {}
        self.policy = policy or RetryPolicy()

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> Any:
        tensors = infer_inputs(self.module, inputs)

        def call(left: float) -> Any:
            wait = min(left, self.timeout)  # this try is abandoned after it (gRPC: cancelled, so dropped if queued)
            timeout = {"client_timeout": wait} if self.protocol == "grpc" else {}
            name = self.canary.triton_model(model) if self.canary else model
            # the try's wait, as the request's deadline (and queue timeout): refused uncomputed once nobody waits
            return self.client.infer(name, tensors, headers=self.headers, timeout=int(wait * 1e6),
                                     parameters={DEADLINE_PARAMETER: unix_ms(wait)}, **timeout)  # fmt: skip

        return self.policy.run(call, triton_transient)

    def close(self) -> None:
        self.client.close()
