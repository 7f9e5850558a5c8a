"""Stand-ins for the servers' objects a handler talks to: TorchServe's context and Triton's
``triton_python_backend_utils`` (which exists only inside tritonserver).

For ``maas check`` (both adapters in process, before any server starts) and the adapters' unit tests. They are
not the servers: the integration tests run the real TorchServe and tritonserver.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np


class FakeContext:
    """TorchServe's Context as a handler sees it: system properties, the archive's manifest, and per-request
    status, content type and headers."""

    def __init__(self, model_dir: str, version: str = "1.0", request_headers: list[dict] | None = None):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
        self.request_headers = request_headers or []
        self.manifest = {"model": {"modelVersion": version}}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.metrics = FakeMetrics()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers.setdefault(idx, {})[key] = value

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_headers[idx] if idx < len(self.request_headers) else {}


class FakeMetrics:
    """Sums what a handler reports through ``context.metrics``."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.dimensions: dict[str, list] = {}

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None, metric_type=None):
        self.add_counter(name, value, idx, dimensions)

    def add_counter(self, name, value, idx=None, dimensions=None):
        self.totals[name] = self.totals.get(name, 0) + value
        self.dimensions[name] = [(d.name, d.value) for d in dimensions or []]


def install_fake_pb_utils() -> types.ModuleType:
    """A stand-in for ``triton_python_backend_utils``, which exists only inside tritonserver.

    Installed once per session: adapter modules keep the module they imported first.
    """
    if "triton_python_backend_utils" in sys.modules:
        return sys.modules["triton_python_backend_utils"]
    module = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        INVALID_ARG, INTERNAL, UNAVAILABLE = "INVALID_ARG", "INTERNAL", "UNAVAILABLE"

        def __init__(self, message, code=INTERNAL):
            self._message, self._code = message, code

        def message(self):
            return self._message

        def code(self):
            return self._code

    class InferenceRequest:
        def __init__(self, inputs, parameters=None):
            self.inputs, self._parameters = inputs, parameters or {}

        def parameters(self):  # the real one returns the request's parameters as a JSON string
            return json.dumps(self._parameters)

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    class MetricFamily:
        COUNTER, GAUGE = "COUNTER", "GAUGE"
        totals: dict[tuple, float] = {}

        def __init__(self, name, description, kind):
            self.name = name

        def Metric(self, labels):  # noqa: N802 - the real API's spelling
            family, key = self, (self.name, tuple(sorted(labels.items())))

            class Metric:
                def increment(self, value):
                    family.totals[key] = family.totals.get(key, 0) + value

            return Metric()

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs if t.name() == name), None)

    class Logger:  # the server log: (level, message) pairs
        logged: list[tuple[str, str]] = []
        log_info = staticmethod(lambda message: Logger.logged.append(("info", message)))
        log_warn = staticmethod(lambda message: Logger.logged.append(("warn", message)))
        log_error = staticmethod(lambda message: Logger.logged.append(("error", message)))

    types_map = {"TYPE_FP32": np.float32, "TYPE_STRING": np.object_, "BYTES": np.object_, "TYPE_INT64": np.int64}
    module.Tensor, module.TritonError, module.MetricFamily = Tensor, TritonError, MetricFamily
    module.InferenceRequest, module.InferenceResponse = InferenceRequest, InferenceResponse
    module.get_input_tensor_by_name = get_input_tensor_by_name
    module.Logger = Logger
    module.triton_string_to_numpy = types_map.__getitem__
    sys.modules["triton_python_backend_utils"] = module
    return module
