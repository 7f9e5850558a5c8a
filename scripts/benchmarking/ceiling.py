"""The ceiling model: a constant answer served exactly as the model it stands in for, the yardstick of tiny models.

``ConstantModel`` takes the same requests as the model (its Triton input specs; any TorchServe body), does no work
per row and answers a constant of the model's output shapes. Built into the same servers with the same batch
settings, its served throughput is the most that server, protocol, client and our adapters give at that
concurrency: a tiny model's served throughput over it says how much of the cost is the model's own.

This file is the pipeline file of every ceiling artifact (copied into it, as "Serve your own model" does), so the
class imports only what the servers have; the build-time helper imports ``scripts`` inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.artifact import Manifest
from handlers.pipeline import Pipeline, Request, TensorSpec

CONSTANT = "constant"


class ConstantModel(Pipeline):
    """Specs from ``model.config`` (``inputs`` / ``outputs``: the stood-in model's, as TensorSpec fields)."""

    @classmethod
    def input_specs(cls, manifest: Manifest) -> list[TensorSpec]:
        return specs(manifest, "inputs")

    @classmethod
    def output_specs(cls, manifest: Manifest) -> list[TensorSpec]:
        return specs(manifest, "outputs")

    @classmethod
    def eager_module(cls, manifest: Manifest, artifact_dir: Path) -> torch.nn.Module:
        return torch.nn.Identity()  # never called: forward answers without it

    def parse_json(self, body: Any) -> Request:
        return Request(rows=[None], single=True)

    def parse_tensors(self, tensors: dict[str, np.ndarray]) -> Request:
        return Request(rows=[None] * len(next(iter(tensors.values()))))

    def preprocess(self, row: Any) -> Any:
        return None

    def collate(self, features: list[Any]) -> int:
        return len(features)

    def forward(self, batch: int) -> int:
        return batch

    def comparable(self, outputs: int) -> np.ndarray:
        return np.zeros((outputs, 1))

    def postprocess(self, outputs: int) -> list[Any]:
        return [CONSTANT] * outputs

    def format_json(self, results: list[Any], single: bool) -> Any:
        return {"label": CONSTANT} if single else [{"label": CONSTANT} for _ in results]

    def format_tensors(self, results: list[Any]) -> dict[str, np.ndarray]:
        tensors = {}
        for spec in self.output_specs(self.manifest):
            shape = (len(results), *(max(d, 1) for d in spec.dims))
            if spec.data_type == "TYPE_STRING":
                tensors[spec.name] = np.full(shape, CONSTANT.encode(), dtype=np.object_)
            else:  # TYPE_FP32 -> float32, TYPE_INT64 -> int64 ...
                dtype = spec.data_type.removeprefix("TYPE_").lower().replace("fp", "float")
                tensors[spec.name] = np.zeros(shape, dtype=dtype)
        return tensors


def specs(manifest: Manifest, key: str) -> list[TensorSpec]:
    return [TensorSpec(**{**spec, "dims": tuple(spec["dims"])}) for spec in manifest.model["config"][key]]


def write_ceiling_artifact(model_artifact: Path, out: Path, name: str) -> Path:
    """A ceiling artifact for ``model_artifact``: its specs, serving settings and held-out rows, no network."""
    import dataclasses
    import shutil

    from handlers.artifact import HELD_OUT_NAME, read_manifest
    from handlers.tasks import pipeline_class
    from scripts.training.common import write_artifact

    manifest = read_manifest(model_artifact)
    task = pipeline_class(manifest, model_artifact)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_artifact / HELD_OUT_NAME, out / HELD_OUT_NAME)  # the self-check is recorded on these
    specs = {"inputs": [dataclasses.asdict(s) for s in task.input_specs(manifest)],
             "outputs": [dataclasses.asdict(s) for s in task.output_specs(manifest)]}  # fmt: skip
    ceiling = Manifest(name=name, task=manifest.task, model={"architecture": "constant", "format": "eager",
                       "config": specs}, labels=manifest.labels, serving=manifest.serving)  # fmt: skip
    write_artifact(out, ceiling, pipeline=ConstantModel)
    return out
