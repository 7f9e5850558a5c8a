"""Why the model answered what it did: Integrated Gradients (Captum) through the pipeline's own preprocessing.

A request asks for an explanation (TorchServe: ``/explanations/<model>``, or the header ``X-Explain: true`` on
``/predictions``; Triton: the sibling model ``<model>_explain``) and may name, as headers ``X-Explain-Target``,
``X-Explain-Steps`` and ``X-Explain-Png`` or as the Triton parameters ``target``, ``steps`` and ``png``:

* ``target``: the label (or output index) to explain; by default the one the model answered;
* ``steps``: integration steps, at most ``serving.explain_max_steps`` (default ``serving.explain_steps``);
* ``png``: image models add a heat map over the input as a base64 PNG.

Each row's answer carries its completeness check: Integrated Gradients' attributions sum to the explained output
at the input minus that at the baseline, and ``convergence_delta`` is what is left over. Requests are parsed and
checked one by one as for predictions, so a bad one gets its own 4xx and the others of the batch are answered.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from handlers.errors import InvalidInput, ServingError
from handlers.open_inference import decode_inputs, v2_answer, v2_request
from handlers.pipeline import Pipeline, Request

EXPLAIN_HEADERS = {"target": "X-Explain-Target", "steps": "X-Explain-Steps", "png": "X-Explain-Png"}
OUTPUT = "EXPLANATION"  # the Triton explainer's output: one JSON answer per row (BYTES [n, 1])
TRUE = ("1", "true", "yes")


def is_true(value: Any) -> bool:
    """A flag's header or parameter value: "true", "1" or "yes" (any case), or True."""
    return str(value).lower() in TRUE


class ExplanationUnavailable(ServingError):
    """The model can answer but not be explained: its stored form has no gradients (an ONNX export)."""

    http_status = 501
    triton_code = "UNSUPPORTED"


@dataclass(frozen=True)
class ExplainOptions:
    target: str | None
    steps: int
    png: bool = False


def read_options(raw: dict[str, Any], steps: int, max_steps: int) -> ExplainOptions:
    """A request's options (header or parameter values by option name), checked against the model's limit."""
    asked = raw.get("steps")
    if asked not in (None, ""):
        try:
            steps = int(str(asked))
        except ValueError:
            raise InvalidInput(f"steps must be a whole number, not {str(asked)[:40]!r}") from None
        if not 1 <= steps <= max_steps:
            raise InvalidInput(f"steps must be between 1 and {max_steps} (serving.explain_max_steps), not {steps}")
    target = raw.get("target")
    png = is_true(raw.get("png", ""))
    return ExplainOptions(None if target in (None, "") else str(target), steps, png)


class Explainer(ABC):
    """The shared driver: parse and preprocess each request as its pipeline does, then ``explain_rows``."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.serving = pipeline.manifest.serving
        self.module = differentiable(pipeline)
        labels = getattr(pipeline, "labels", None)
        self.labels = list(labels) if labels else None
        # A classifier is explained on the probabilities it answers with, not its logits: a two-class net may put
        # a constant 0 in one logit, whose attributions would all be 0.
        self.forward = (lambda *inputs: pipeline.scores(self.module(*inputs))) if self.labels else self.module
        model = pipeline.manifest.model
        self.described = f"the {model.get('format', 'eager')} model ({model['file']})"

    @abstractmethod
    def explain_rows(self, rows: list[Any], features: list[Any], options: ExplainOptions) -> list[dict]:
        """One answer per row: ``attributions`` and the fields of ``answer``."""

    # ---- drivers ---------------------------------------------------------------------------------------------
    def explain_json(self, bodies: list[Any], options: list[dict]) -> list[tuple[int, Any]]:
        """TorchServe: ``(http_status, body)`` per request: the task's own JSON, or an Open Inference Protocol body
        answered with the ``EXPLANATION`` tensor (one JSON string per row)."""
        answers = []
        for body, raw in zip(bodies, options, strict=True):
            v2, request = v2_request(body), None
            try:
                if v2 is None:
                    request = self.pipeline.parse_json(body)
                else:
                    request = self.pipeline._parse_tensors(decode_inputs(v2))
                outcome = self._explain(request, raw)
            except Exception as exc:
                outcome = Pipeline._error(exc)
            if v2 is not None:
                answers.append(v2_answer(self.pipeline.manifest.name, v2, outcome if isinstance(outcome, ServingError)
                                         else as_tensors(outcome)))  # fmt: skip
            elif isinstance(outcome, ServingError):
                answers.append((outcome.http_status, {"error": outcome.to_json()}))
            else:
                answers.append((200, outcome[0] if request.single else outcome))
        return answers

    def explain_tensors(self, inputs: list[dict[str, np.ndarray]], options: list[dict]) -> list[Any]:
        """Triton: the ``EXPLANATION`` tensor, or the error, per request."""
        outcomes = []
        for tensors, raw in zip(inputs, options, strict=True):
            try:
                outcomes.append(as_tensors(self._explain(self.pipeline._parse_tensors(tensors), raw)))
            except Exception as exc:
                outcomes.append(Pipeline._error(exc))
        return outcomes

    def _explain(self, request: Request, raw: dict) -> list[dict]:
        options = read_options(raw, self.serving.explain_steps, self.serving.explain_max_steps)
        features = self.pipeline._preprocess_request(request)
        return self.explain_rows(request.rows, features, options)

    # ---- shared by the tasks ---------------------------------------------------------------------------------
    def target_index(self, target: str | None, outputs: torch.Tensor) -> int:
        """The output to explain: the named label (or index), else the one the model answered."""
        width = outputs.shape[-1]
        if target is None:
            return int(outputs.argmax()) if self.labels else 0
        if self.labels and target in self.labels:
            return self.labels.index(target)
        if target.isdigit() and int(target) < width:
            return int(target)
        known = f"one of {self.labels}" if self.labels else f"an output index below {width}"
        raise InvalidInput(f"target {target[:40]!r} is not {known}")

    def answer(self, outputs: torch.Tensor, baseline_outputs: torch.Tensor, target: int, delta: float,
               options: ExplainOptions) -> dict:  # fmt: skip
        """The fields every explained row carries, beside its ``attributions``."""
        score, base = float(outputs[target]), float(baseline_outputs[target])
        answer = {"target": self.labels[target] if self.labels else target, "target_index": target,
                  "output": "probability" if self.labels else "the model's output", "score": score,
                  "baseline_score": base, "convergence_delta": delta, "relative_delta": abs(delta) / max(
                      abs(score - base), 1e-12), "steps": options.steps, "method": "integrated_gradients",
                  "explained_model": self.described}  # fmt: skip
        if self.labels:
            answer["label"] = self.labels[int(outputs.argmax())]
        return answer

    def integrate(self, attribution, inputs, baselines, targets: list[int], steps: int, **kwargs):
        """Captum's ``attribute`` with the model's limits: ``explain_batch`` points per forward pass, Gauss-Legendre
        steps (fewer for the same completeness than a Riemann sum). Returns (attributions, deltas)."""
        with torch.enable_grad():
            attributions, deltas = attribution.attribute(
                inputs, baselines=baselines, target=targets, n_steps=steps, method="gausslegendre",
                internal_batch_size=max(len(targets), self.serving.explain_batch), return_convergence_delta=True,
                **kwargs)  # fmt: skip
        return attributions.detach(), [float(d) for d in deltas.detach().reshape(-1)]


def differentiable(pipeline: Pipeline) -> torch.nn.Module:
    """The network the pipeline runs, if gradients flow through it (eager or TorchScript weights)."""
    module = getattr(pipeline.model, "module", None)
    if not isinstance(module, torch.nn.Module):
        model = pipeline.manifest.model
        source = (
            f" (exported from {model['exported_from'][:12]}: explain that artifact)" if "exported_from" in model else ""
        )
        raise ExplanationUnavailable(f"{pipeline.manifest.name} is stored as {model.get('format')}, which has no "
                                     f"gradients; explanations need eager or TorchScript weights{source}")  # fmt: skip
    return module


def as_tensors(answers: list[dict]) -> dict[str, np.ndarray]:
    return {OUTPUT: np.array([[json.dumps(a, allow_nan=False).encode()] for a in answers], dtype=np.object_)}
