"""The Open Inference Protocol (KServe v2) JSON body on TorchServe: the same tensors, names, dtypes and shapes as
the Triton model, so one client body works against both servers.

TorchServe routes ``POST /v2/models/<model>/infer`` (and ``/predictions/<model>``) to the handler with the body as
sent; a body ``{"inputs": [...]}`` is decoded here into the Triton model's input tensors and answered
``{"model_name", "id", "outputs": [...]}``. TorchServe's own ``service_envelope=kservev2`` is not used: in 0.12 it
reads only the first request of a batch, the first item of a BYTES tensor and names each output after an input.
An error is ``{"error": "<message>"}`` with the request's own 4xx, as the protocol says. ``decode_json_body`` reads
any JSON body as TorchServe hands it over (decoded already, or bytes).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from handlers.errors import InvalidInput, ServingError

DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}  # fmt: skip
DATATYPES = {np.dtype(dtype): name for name, dtype in DTYPES.items()}


def v2_request(body: Any) -> dict | None:
    """The body as a decoded v2 request when it is one (a JSON object with an ``inputs`` list), else None."""
    if isinstance(body, (bytes, bytearray)):
        if body.lstrip()[:1] != b"{":
            return None
        try:
            body = json.loads(body)
        except ValueError:
            return None  # not JSON at all: the task's own parser names the problem
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        return body
    return None


def decode_inputs(request: dict) -> dict[str, np.ndarray]:
    """The request's input tensors, each checked against its declared datatype and shape."""
    tensors = {}
    for index, spec in enumerate(request["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput(f"inputs[{index}] must be an object with a name, shape, datatype and data")
        name, shape, datatype = spec["name"], spec.get("shape"), spec.get("datatype")
        if datatype not in DTYPES:
            raise InvalidInput(f"input {name}: unknown datatype {datatype!r}; one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):  # fmt: skip
            raise InvalidInput(f"input {name}: shape must be a list of non-negative integers")
        values = np.asarray(spec.get("data"), dtype=np.object_).reshape(-1) if "data" in spec else None
        if values is None or values.size != int(np.prod(shape)):
            got = "no data" if values is None else f"{values.size} values"
            raise InvalidInput(f"input {name}: shape {shape} needs {int(np.prod(shape))} values, got {got}")
        try:
            if datatype == "BYTES":
                array = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)
            else:
                array = values.astype(DTYPES[datatype])
        except (TypeError, ValueError, OverflowError) as exc:  # Overflow: a number the datatype cannot hold
            raise InvalidInput(f"input {name}: data is not {datatype}: {exc}") from None
        tensors[name] = array.reshape(shape)
    return tensors


def v2_answer(model: str, request: dict, outcome: dict[str, np.ndarray] | ServingError) -> tuple[int, Any]:
    """``(http_status, body)``: the requested outputs (all when none are named), or the error."""
    if isinstance(outcome, ServingError):
        return outcome.http_status, {"error": outcome.message}
    wanted = [o.get("name") if isinstance(o, dict) else o for o in request.get("outputs") or []] or list(outcome)
    unknown = [name for name in wanted if name not in outcome]
    if unknown:
        return 400, {"error": f"unknown output {unknown[0]!r}; this model has {', '.join(outcome)}"}
    answer = {"model_name": model, "outputs": [encode_output(name, outcome[name]) for name in wanted]}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    return 200, answer


def encode_output(name: str, array: np.ndarray) -> dict:
    data = array.reshape(-1).tolist()
    if array.dtype == np.object_:
        data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data]
    return {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape), "data": data}


def decode_json_body(body: Any) -> Any:
    """TorchServe decodes ``application/json`` bodies itself; other content types arrive as bytes or text."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"request body is not UTF-8 JSON: {exc}") from None
    if isinstance(body, str):
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    return body
