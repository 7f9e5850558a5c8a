"""The server-agnostic core: validate each request alone, run the valid ones as one batch, answer each alone.

A task subclasses ``Pipeline`` and fills in two small groups of methods:

* wire formats - ``parse_json`` / ``format_json`` (the TorchServe REST contract) and ``parse_tensors`` /
  ``format_tensors`` plus ``input_specs`` / ``output_specs`` (the Triton V2 contract);
* the model - ``preprocess`` (one row -> features), ``collate`` (features -> one batch: a dict of the named
  tensors in ``MODEL_INPUTS``), ``eager_module`` (the network as training wrote it) and ``postprocess`` (batch
  output -> one result per row). ``forward`` runs the artifact's model in whichever format it was exported to
  (``handlers.formats``), so tasks never depend on the format.

``handle_json`` and ``handle_tensors`` drive a server batch through them. A request that fails parsing or
preprocessing gets its own error; the others still share one forward pass. If that pass itself fails, each
request is retried alone so one poisoned request cannot take its neighbours down.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.artifact import Manifest
from handlers.errors import InvalidInput, PayloadTooLarge, ServingError, as_serving_error
from handlers.formats import load_runner
from handlers.log_limit import rate_limited
from handlers.open_inference import decode_inputs, v2_answer, v2_request

log = rate_limited(__name__)  # a client can trigger these: a flood must not flood the log


@dataclass
class Request:
    """One client request after wire parsing: its rows, and whether the client sent a bare single row."""

    rows: list[Any]
    single: bool = False


@dataclass(frozen=True)
class TensorSpec:
    """A Triton input or output: name, Triton data type (``TYPE_FP32``...), dims without the batch dim."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass
class BatchTimings:
    """Wall time of each stage of one server batch, in milliseconds (for metrics and logs)."""

    preprocess_ms: float = 0.0
    forward_ms: float = 0.0
    postprocess_ms: float = 0.0
    rows: int = 0

    def stages(self) -> dict[str, float]:
        return {"preprocess": self.preprocess_ms, "forward": self.forward_ms, "postprocess": self.postprocess_ms}


class Pipeline(ABC):
    """Base of every task. Subclasses are built from an artifact directory by ``handlers.tasks.load_pipeline``."""

    # The network's inputs, in call order, each with the names of its dynamic leading dims (the batch dim, and
    # for text the sequence): exports and Triton configs are built from this.
    MODEL_INPUTS: dict[str, tuple[str, ...]] = {}

    def __init__(self, manifest: Manifest, artifact_dir: Path, device: str = "cpu"):
        self.manifest = manifest
        self.artifact_dir = Path(artifact_dir)
        self.device = device
        self.max_rows_per_request = manifest.serving.max_rows_per_request
        self.last_timings = BatchTimings()

    # ---- wire formats -------------------------------------------------------------------------------
    @abstractmethod
    def parse_json(self, body: Any) -> Request:
        """Turn a TorchServe request body (decoded JSON, text or raw bytes) into rows."""

    @abstractmethod
    def format_json(self, results: list[Any], single: bool) -> Any:
        """JSON-safe answer for one request."""

    @abstractmethod
    def parse_tensors(self, tensors: dict[str, np.ndarray]) -> Request:
        """Turn one Triton request's input tensors (numpy, batch dim first) into rows."""

    @abstractmethod
    def format_tensors(self, results: list[Any]) -> dict[str, np.ndarray]:
        """Output tensors for one Triton request, batch dim first."""

    def client_tensors(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """The Triton inputs a client would send for rows parsed from a TorchServe body (``maas check``)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how a client sends its rows to Triton")

    def client_body(self, row: Any) -> Any:
        """A TorchServe body (JSON-able, or raw bytes) a client would send for one row (the deep health probe)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how a client sends a row to TorchServe")

    @classmethod
    @abstractmethod
    def input_specs(cls, manifest: Manifest) -> list[TensorSpec]: ...

    @classmethod
    @abstractmethod
    def output_specs(cls, manifest: Manifest) -> list[TensorSpec]: ...

    # ---- the model ----------------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, row: Any) -> Any:
        """Validate and convert one row; raise ``InvalidInput`` naming what is wrong."""

    @abstractmethod
    def collate(self, features: list[Any]) -> Any:
        """Stack the features of every valid row of the batch into one model input."""

    @classmethod
    def eager_module(cls, manifest: Manifest, artifact_dir: Path) -> torch.nn.Module:
        """The trained network, called with the ``MODEL_INPUTS`` tensors in order; returns one tensor."""
        raise NotImplementedError(f"{cls.__name__} has no eager module")

    @cached_property
    def model(self):
        """The artifact's network in its stored format (loaded on first use; ``load_pipeline`` loads it at once)."""
        return load_runner(
            self.manifest.model,
            self.artifact_dir,
            self.device,
            list(self.MODEL_INPUTS),
            lambda: self.eager_module(self.manifest, self.artifact_dir),
            self.manifest.serving.threads,
            bool(self.manifest.serving.onnx_spinning),
        )

    def forward(self, batch: Any) -> Any:
        """One forward pass over the collated batch."""
        return self.model(batch)

    def comparable(self, outputs: torch.Tensor) -> np.ndarray:
        """The network's outputs on the scale exports are checked on, ``[rows, k]`` float64: the raw outputs here
        (a regressor's standardised values); classifiers override it with probabilities."""
        return outputs.float().cpu().numpy().astype(np.float64).reshape(len(outputs), -1)

    @abstractmethod
    def postprocess(self, outputs: Any) -> list[Any]:
        """Split the batch output into one result per row, in order."""

    # ---- drivers ------------------------------------------------------------------------------------
    def handle_json(self, bodies: list[Any]) -> list[tuple[int, Any]]:
        """TorchServe: one ``(http_status, json_body)`` per request body: the task's own JSON, or an Open Inference
        Protocol v2 body answered with the Triton model's tensors (``handlers/open_inference.py``)."""
        v2 = [v2_request(body) for body in bodies]
        requests = [self._parse(self.parse_json, body) if tensors is None else
                    self._parse(lambda b: self._parse_tensors(decode_inputs(b)), tensors)
                    for body, tensors in zip(bodies, v2, strict=True)]  # fmt: skip
        answers = []
        for request, outcome, tensors in zip(requests, self.run(requests), v2, strict=True):
            if tensors is not None:
                formatted = outcome if isinstance(outcome, ServingError) else self.format_tensors(outcome)
                answers.append(v2_answer(self.manifest.name, tensors, formatted))
            elif isinstance(outcome, ServingError):
                answers.append((outcome.http_status, {"error": outcome.to_json()}))
            else:
                answers.append((200, self.format_json(outcome, request.single)))
        return answers

    def handle_tensors(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | ServingError]:
        """Triton: output tensors, or the error, per request."""
        requests = [self._parse(self._parse_tensors, tensors) for tensors in inputs]
        return [
            outcome if isinstance(outcome, ServingError) else self.format_tensors(outcome)
            for outcome in self.run(requests)
        ]

    # ---- the stages of a Triton ensemble (scripts/packaging/triton_ensemble.py) -----------------------
    def prepare_tensors(self, inputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | ServingError]:
        """Ensemble preprocessing: each request's rows as the network's inputs (``MODEL_INPUTS``), or its error."""
        outcomes = []
        for tensors in inputs:
            try:
                request = self._parse_tensors(tensors)
                batch = self.collate(self._preprocess_request(request))
                outcomes.append({name: batch[name].cpu().numpy() for name in self.MODEL_INPUTS})
            except Exception as exc:
                outcomes.append(self._error(exc))
        return outcomes

    def finish_tensors(self, outputs: list[np.ndarray]) -> list[dict[str, np.ndarray] | ServingError]:
        """Ensemble postprocessing: each request's network output as its answer tensors, or its error."""
        outcomes = []
        for output in outputs:
            try:
                outcomes.append(self.format_tensors(self.postprocess(torch.from_numpy(output))))
            except Exception as exc:
                outcomes.append(self._error(exc))
        return outcomes

    def run(self, requests: list[Request | ServingError]) -> list[list[Any] | ServingError]:
        """Preprocess per request, one forward pass for all valid rows, results split back per request."""
        timings = BatchTimings()
        start = time.perf_counter()
        outcomes: list[Any] = list(requests)
        features: dict[int, list[Any]] = {}
        for i, request in enumerate(requests):
            if isinstance(request, ServingError):
                continue
            try:
                features[i] = self._preprocess_request(request)
            except Exception as exc:  # one bad request never fails the batch
                outcomes[i] = self._error(exc)
        timings.preprocess_ms = (time.perf_counter() - start) * 1e3
        if features:
            for i, result in self._predict(features, timings).items():
                outcomes[i] = result
        timings.rows = sum(len(f) for f in features.values())
        self.last_timings = timings
        return outcomes

    def _preprocess_request(self, request: Request) -> list[Any]:
        if not request.rows:
            raise InvalidInput("the request holds no rows")
        if len(request.rows) > self.max_rows_per_request:
            raise PayloadTooLarge(
                f"the request holds {len(request.rows)} rows; at most {self.max_rows_per_request} are accepted"
            )
        features = []
        for index, row in enumerate(request.rows):
            try:
                features.append(self.preprocess(row))
            except InvalidInput as exc:
                if not request.single:
                    exc.message = f"row {index}: {exc.message}"
                raise
        return features

    def _predict(self, features: dict[int, list[Any]], timings: BatchTimings) -> dict[int, Any]:
        return self.isolate_failures(features, lambda group: self._forward_split(group, timings))

    def isolate_failures(
        self, groups: dict[int, Any], run: Callable[[dict[int, Any]], dict[int, Any]]
    ) -> dict[int, Any]:
        """``run`` every request's group together; on failure, retry each alone so one cannot fail the others."""
        try:
            return run(groups)
        except Exception as exc:
            if len(groups) == 1:
                return {i: self._error(exc) for i in groups}
        log.warning("batched forward pass failed; retrying %d requests one by one", len(groups))
        results = {}
        for i, group in groups.items():
            try:
                results.update(run({i: group}))
            except Exception as exc:
                results[i] = self._error(exc)
        return results

    def forward_groups(self, features: list[Any]) -> list[list[int]]:
        """Which rows of a batch share a forward pass (indices into ``features``): all of them here. A task whose
        rows are padded to the longest (text) splits a batch where padding costs more than a pass."""
        return [list(range(len(features)))]

    def _forward_split(self, features: dict[int, list[Any]], timings: BatchTimings) -> dict[int, list[Any]]:
        flat = [f for rows in features.values() for f in rows]
        per_row: list[Any] = [None] * len(flat)
        for group in self.forward_groups(flat):
            start = time.perf_counter()
            outputs = self.forward(self.collate([flat[k] for k in group]))
            middle = time.perf_counter()
            for k, result in zip(group, self.postprocess(outputs), strict=True):
                per_row[k] = result
            timings.forward_ms += (middle - start) * 1e3
            timings.postprocess_ms += (time.perf_counter() - middle) * 1e3
        results, offset = {}, 0
        for i, rows in features.items():
            results[i] = per_row[offset : offset + len(rows)]
            offset += len(rows)
        return results

    def _parse_tensors(self, tensors: dict[str, np.ndarray]) -> Request:
        for name, array in tensors.items():  # Triton always adds the batch dim; a direct caller may not
            if np.ndim(array) == 0:
                raise InvalidInput(f"the input {name} has no batch dimension")
        return self.parse_tensors(tensors)

    @staticmethod
    def _parse(parse, payload) -> Request | ServingError:
        try:
            return parse(payload)
        except Exception as exc:
            return Pipeline._error(exc)

    @staticmethod
    def _error(exc: Exception) -> ServingError:
        error = as_serving_error(exc)
        if error is not exc:
            log.exception("unexpected failure while serving a request", exc_info=exc)
        return error
