"""Triton Python-backend adapter of the explainer ``<model>_explain``: the model's own inputs in, ``EXPLANATION``
(one JSON answer per row, the same as TorchServe's ``/explanations``) out.

A sibling model rather than an option of the model itself: an explanation runs the network forward and backward
``steps`` times, so in the model's own instance it would hold every plain request queued behind it (measured in
docs/explanations.md). Options come as request parameters: ``target``, ``steps``, ``png`` (and ``deadline``).
"""

from __future__ import annotations

import json

import numpy as np

from handlers.deadline import DeadlineGate
from handlers.explain import OUTPUT, load_explainer
from handlers.triton_model import artifact_dir, device, log_to_triton, read_inputs, request_deadline, respond


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        log_to_triton()
        config = json.loads(args["model_config"])
        self.explainer = load_explainer(artifact_dir(args).parent, device=device(args))
        self.input_names = [spec["name"] for spec in config["input"]]
        self.deadlines = DeadlineGate()

    def execute(self, requests: list) -> list:
        def run(keep: list[int]) -> list:
            inputs = [read_inputs(requests[i], self.input_names) for i in keep]
            return self.explainer.explain_tensors(inputs, [parameters(requests[i]) for i in keep])

        outcomes, _ = self.deadlines.run([request_deadline(r) for r in requests], run, lambda refused: refused)
        return respond(outcomes, {OUTPUT: np.object_})


def parameters(request) -> dict:
    try:
        return json.loads(request.parameters() or "{}")
    except (AttributeError, ValueError):
        return {}
