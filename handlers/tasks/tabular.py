"""Tabular models: rows of named numeric features in; class probabilities or a value out.

Contracts
* TorchServe (``POST /predictions/<model>``, JSON): one row as ``{"features": {"name": value, ...}}`` (every
  feature of the schema, any order) or ``{"features": [v1, v2, ...]}`` (every feature, in schema order); several
  rows as ``{"instances": [row, row, ...]}``, each row an object or a list as above (at most
  ``max_rows_per_request``). Answer: classification ``{"label", "probability", "top_k"}``, regression
  ``{"value"}``; a list of those, in row order, for ``instances``.
* Triton: ``FEATURES`` FP32 ``[n, n_features]``, raw (un-standardised) values in schema order. Outputs:
  classification ``LABEL``, ``PROBABILITY``, ``PROBABILITIES``; regression ``VALUE`` FP32 ``[n, 1]``. The schema is
  in the model's config: ``parameters["feature_names"]``, ``["feature_types"]`` and, for category features,
  ``["feature_categories"]`` (JSON).

Values: a ``float`` feature takes any finite number; an ``int`` feature a finite whole number; a ``bool`` feature
``true``/``false`` or 0/1; a ``category`` feature one of its categories (``handlers/tasks/features.py``). JSON
booleans are refused for the other types. A missing (or null) feature without an imputation value, or an unknown,
non-numeric, NaN or infinite one, is an ``InvalidInput`` naming it; the request is refused as a whole and the other
requests of the batch are answered.

The feature schema and its encoding statistics live in the manifest's ``preprocess`` section (``features: [{"name",
"type", "mean", "std", "categories", "impute"}, ...]``), not inside the network: one human-readable, checksummed
record says what a row is and how it is encoded, the networks stay plain ``nets.FeedForward`` modules, and the
training script encodes with the very ``FeatureSchema.encode`` used here, so served and in-process answers agree to
the bit. Regression targets are standardised too (``preprocess.target.mean/std``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.artifact import Manifest
from handlers.classification import Classifier, load_torch_model
from handlers.errors import InvalidInput
from handlers.open_inference import decode_json_body
from handlers.pipeline import Pipeline, Request, TensorSpec
from handlers.tasks.features import USAGE, FeatureSchema


class TabularPipeline(Pipeline):
    """The input side shared by both tabular tasks: schema, wire parsing, standardisation, the forward pass."""

    MODEL_INPUTS = {"features": ("batch",)}

    def __init__(self, manifest: Manifest, artifact_dir: Path, device: str = "cpu"):
        super().__init__(manifest, artifact_dir, device)
        self.schema = FeatureSchema(manifest.preprocess["features"])

    # ---- wire formats -------------------------------------------------------------------------------
    def parse_json(self, body: Any) -> Request:
        body = decode_json_body(body)
        if isinstance(body, dict) and set(body) == {"features"}:
            return Request([body["features"]], single=True)
        if isinstance(body, dict) and set(body) == {"instances"}:
            if not isinstance(body["instances"], list):
                raise InvalidInput(f'"instances" must be a list of rows; {USAGE}')
            return Request(body["instances"])
        raise InvalidInput(USAGE)

    def parse_tensors(self, tensors: dict[str, np.ndarray]) -> Request:
        if "FEATURES" not in tensors:
            raise InvalidInput("send the input FEATURES (FP32 [n, n_features], in schema order)")
        return Request(list(tensors["FEATURES"]))

    def client_body(self, row: Any) -> Any:
        return {"features": row}

    def client_tensors(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """Raw values in schema order; a row the schema refuses has no tensor form (its error is the answer)."""
        return {"FEATURES": np.stack([self.schema.row(row) for row in rows]).astype(np.float32)}

    @classmethod
    def input_specs(cls, manifest: Manifest) -> list[TensorSpec]:
        return [TensorSpec("FEATURES", "TYPE_FP32", (len(manifest.preprocess["features"]),))]

    @classmethod
    def config_parameters(cls, manifest: Manifest) -> dict[str, str]:
        """Published in the Triton config, so a client can read the schema the ``FEATURES`` columns follow."""
        features = manifest.preprocess["features"]
        parameters = {
            "feature_names": json.dumps([f["name"] for f in features]),
            "feature_types": json.dumps([f.get("type", "float") for f in features]),
        }
        if any("categories" in f for f in features):  # FEATURES carries a category's index in this list
            parameters["feature_categories"] = json.dumps({f["name"]: f["categories"] for f in features
                                                           if "categories" in f})  # fmt: skip
        return parameters

    # ---- the model ----------------------------------------------------------------------------------
    def preprocess(self, row: Any) -> np.ndarray:
        return self.schema.row(row)

    def collate(self, features: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"features": torch.from_numpy(self.schema.encode(np.stack(features))).to(self.device)}

    @classmethod
    def eager_module(cls, manifest: Manifest, artifact_dir: Path) -> torch.nn.Module:
        return load_torch_model(manifest, artifact_dir)


class TabularClassifier(TabularPipeline, Classifier):
    """Logistic / softmax regression or a feed-forward network over ``manifest.labels``."""


class TabularRegressor(TabularPipeline):
    """A feed-forward (or linear) regressor; its standardised output is mapped back to the target's scale."""

    def __init__(self, manifest: Manifest, artifact_dir: Path, device: str = "cpu"):
        super().__init__(manifest, artifact_dir, device)
        target = manifest.preprocess.get("target", {})
        self.target_mean = np.float32(target.get("mean", 0.0))
        self.target_std = np.float32(target.get("std", 1.0))

    def postprocess(self, outputs: torch.Tensor) -> list[float]:
        # In float32, so the JSON value and Triton's FP32 VALUE are the same number.
        return (outputs.float().cpu().numpy()[:, 0] * self.target_std + self.target_mean).tolist()

    def format_json(self, results: list[float], single: bool) -> Any:
        answers = [{"value": value} for value in results]
        return answers[0] if single else answers

    def format_tensors(self, results: list[float]) -> dict[str, np.ndarray]:
        return {"VALUE": np.array(results, dtype=np.float32)[:, None]}

    @classmethod
    def output_specs(cls, manifest: Manifest) -> list[TensorSpec]:
        return [TensorSpec("VALUE", "TYPE_FP32", (1,))]
