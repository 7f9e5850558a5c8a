"""Triton Python-backend models for the stages of an ensemble: preprocessing, the network, postprocessing.

``scripts/packaging/triton_ensemble.py`` writes a repository where the network runs on Triton's own ONNX Runtime or
PyTorch backend (or, where only the Python backend exists, on this file's ``network`` stage) and these stages
do the rest with the same pipeline code as the single-model repository. The config parameter ``maas_stage`` says
which stage an instance is.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from handlers.formats import OUTPUT_NAME
from handlers.tasks import load_pipeline
from handlers.triton_model import artifact_dir, device, log_to_triton, output_dtypes, read_inputs, respond

STAGES = ("preprocess", "network", "postprocess")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        log_to_triton()
        config = json.loads(args["model_config"])
        self.stage = config["parameters"]["maas_stage"]["string_value"]
        if self.stage not in STAGES:
            raise ValueError(f"maas_stage must be one of {STAGES}, not {self.stage!r}")
        self.pipeline = load_pipeline(artifact_dir(args), device=device(args), with_model=self.stage == "network")
        self.input_names = [spec["name"] for spec in config["input"]]
        self.output_dtypes = output_dtypes(config)

    def execute(self, requests: list) -> list:
        inputs = [read_inputs(r, self.input_names) for r in requests]
        if self.stage == "preprocess":
            outcomes = self.pipeline.prepare_tensors(inputs)
        elif self.stage == "network":
            outcomes = self.forward(inputs)
        else:
            outcomes = self.pipeline.finish_tensors([tensors[OUTPUT_NAME] for tensors in inputs])
        return respond(outcomes, self.output_dtypes)

    def forward(self, inputs: list[dict[str, np.ndarray]]) -> list:
        """One pass over every request (Triton's batcher only groups requests whose shapes match, so they stack);
        if it fails, each request is retried alone, as in the single model."""
        results = self.pipeline.isolate_failures(dict(enumerate(inputs)), self._forward_stacked)
        return [results[i] for i in range(len(inputs))]

    def _forward_stacked(self, groups: dict[int, dict[str, np.ndarray]]) -> dict[int, dict[str, np.ndarray]]:
        inputs = list(groups.values())
        batch = {n: torch.from_numpy(np.concatenate([i[n] for i in inputs])) for n in self.pipeline.MODEL_INPUTS}
        output = self.pipeline.forward(batch).float().cpu().numpy()
        bounds = np.cumsum([len(next(iter(i.values()))) for i in inputs])[:-1]
        return {index: {OUTPUT_NAME: part} for index, part in zip(groups, np.split(output, bounds), strict=True)}
