"""The Quick start's language-model samples, streamed from each server and printed token by token.

A completion in the servers' native contract: TorchServe streams NDJSON lines over chunked HTTP; Triton Server-Sent
Events from ``generate_stream`` and responses from gRPC ``ModelStreamInfer``. Then a chat through the OpenAI API with
the ``openai`` client: TorchServe's handler and the frontend over Triton. The same greedy request on each path, so
the texts are the same.
"""

from __future__ import annotations

import json
import queue
import sys
from collections.abc import Iterator

import httpx
import numpy as np

from scripts.serving.keys import TritonAccess

PROMPT = "The model"
QUESTION = "What does json.dumps do?"  # the demo model was trained on chats about the standard library
REQUEST = {"max_tokens": 40, "temperature": 0, "stop": "\n\n"}  # greedy, up to the first blank line


def torchserve_stream(url: str, model: str, key: str) -> Iterator[str]:
    body = {"text_input": PROMPT, "stream": True, **REQUEST}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{url}/predictions/{model}", json=body, headers=headers, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.strip():
                yield json.loads(line)["text_output"]


def triton_sse(address: str, model: str, headers: dict) -> Iterator[str]:
    body = {"text_input": PROMPT, "stream": True, "parameters": REQUEST}
    url = f"http://{address}/v2/models/{model}/generate_stream"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])["text_output"]


def triton_grpc(address: str, model: str, headers: dict, prompt: str = PROMPT, parameters: dict = REQUEST
                ) -> Iterator[str]:  # fmt: skip
    """The text deltas of one gRPC ``ModelStreamInfer`` call (an error response raises)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put(error or result), headers=headers)
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("stream", [1], "BOOL")]
    inputs[0].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([True]))
    client.async_stream_infer(model, inputs, parameters=parameters, enable_empty_final_response=True)
    try:
        while True:
            result = responses.get(timeout=60)
            if isinstance(result, Exception):
                raise result
            if result.get_response().outputs:
                yield result.as_numpy("text_output")[0].decode()
            if result.get_response().parameters["triton_final_response"].bool_param:
                return
    finally:
        client.stop_stream()


def print_streams(model: str, torchserve_url: str, torchserve_key: str, triton_http: str, triton_grpc_address: str,
                  access: TritonAccess | None) -> None:  # fmt: skip
    """``access``: Triton's key, sent when inference is behind it (``maas serve start --protect-inference``)."""
    print(
        f'\nsample: "{PROMPT}" continued by {model}, greedy, {REQUEST["max_tokens"]} tokens at most, up to a blank '
        "line, streamed (newlines shown as \\n)\n"
    )
    streams = {
        "TorchServe REST ": lambda: torchserve_stream(torchserve_url, model, torchserve_key),
        "Triton SSE      ": lambda: triton_sse(triton_http, model, access.inference_headers() if access else {}),
        "Triton gRPC     ": lambda: triton_grpc(
            triton_grpc_address, model, access.inference_headers(grpc=True) if access else {}
        ),
    }
    for name, stream in streams.items():
        print(f"{name} -> {PROMPT}", end="", flush=True)
        for delta in stream():
            print(delta.replace("\n", "\\n"), end="", flush=True)  # token by token, as they arrive
        print()
    sys.stdout.flush()


def openai_chat(base_url: str, key: str, model: str) -> Iterator[str]:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=60, temperature=0,
                                                stream=True):  # fmt: skip
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


def print_chats(model: str, torchserve_base: str, torchserve_key: str, openai_base: str, openai_key: str) -> None:
    print(f'\nsample: "{QUESTION}" asked {model} through the OpenAI API (the openai client), greedy, streamed\n')
    for name, base, key in [("TorchServe /v1", torchserve_base, torchserve_key), ("Triton /v1", openai_base,
                                                                                  openai_key)]:  # fmt: skip
        print(f"{name:<16} -> ", end="", flush=True)
        for delta in openai_chat(base, key, model):
            print(delta.replace("\n", "\\n"), end="", flush=True)
        print()
    print(f"base URLs: {torchserve_base} (key: maas serve key torchserve), {openai_base} (maas serve key openai)")
    sys.stdout.flush()
