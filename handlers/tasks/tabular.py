"""Tabular models: rows of named numeric features in; class probabilities or a value out.

Contracts
* TorchServe (``POST /predictions/<model>``, JSON): one row as ``{"features": {"name": value, ...}}`` (every
  feature of the schema, any order) or ``{"features": [v1, v2, ...]}`` (every feature, in schema order); several
  rows as ``{"instances": [row, row, ...]}``, each row an object or a list as above (at most
  ``max_rows_per_request``). Answer: classification ``{"label", "probability", "top_k"}``, regression
  ``{"value"}``; a list of those, in row order, for ``instances``.
* Triton: ``FEATURES`` FP32 ``[n, n_features]``, raw (un-standardised) values in schema order. Outputs:
  classification ``LABEL``, ``PROBABILITY``, ``PROBABILITIES``; regression ``VALUE`` FP32 ``[n, 1]``. The schema is
  in the model's config: ``parameters["feature_names"]`` and ``parameters["feature_types"]`` (JSON lists).

Values: a ``float`` feature takes any finite number; an ``int`` feature a finite whole number; a ``bool`` feature
``true``/``false`` or 0/1. JSON booleans are refused for the other types, strings everywhere. A missing
(or null), unknown, non-numeric, NaN or infinite feature is an ``InvalidInput`` naming it; the request is refused
as a whole and the other requests of the batch are answered.

The feature schema and its standardisation statistics live in the manifest's ``preprocess`` section
(``features: [{"name", "type", "mean", "std"}, ...]``), not inside the network: one human-readable, checksummed
record says what a row is and how it is scaled, the networks stay plain ``nets.FeedForward`` modules, and the
training script standardises with the very ``FeatureSchema.standardise`` used here, so served and in-process
answers agree to the bit. Regression targets are standardised too (``preprocess.target.mean/std``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.artifact import Manifest
from handlers.classification import Classifier, load_torch_model
from handlers.errors import InvalidInput
from handlers.pipeline import Pipeline, Request, TensorSpec, decode_json_body

FEATURE_TYPES = ("float", "int", "bool")
FLOAT32_MAX = float(np.finfo(np.float32).max)
USAGE = (
    'send {"features": {"name": value, ...}} or {"features": [value, ...]} for one row, '
    'or {"instances": [row, ...]} for several'
)


class FeatureSchema:
    """Feature names, order and types, their standardisation, and the validation of one row against them."""

    def __init__(self, features: list[dict]):
        self.names = [str(f["name"]) for f in features]
        self.types = [str(f.get("type", "float")) for f in features]
        unknown = sorted(set(self.types) - set(FEATURE_TYPES))
        if unknown:
            raise ValueError(f"unknown feature types {unknown}; known: {list(FEATURE_TYPES)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")
        self.index = {name: i for i, name in enumerate(self.names)}
        self.mean = np.array([f.get("mean", 0.0) for f in features], dtype=np.float32)
        self.std = np.array([f.get("std", 1.0) for f in features], dtype=np.float32)
        self._ints = np.array([t == "int" for t in self.types])
        self._bools = np.array([t == "bool" for t in self.types])

    def __len__(self) -> int:
        return len(self.names)

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Raw ``[n, n_features]`` -> float32 ``(x - mean) / std``: the one scaling used in training and serving."""
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.std

    def row(self, row: Any) -> np.ndarray:
        """One row (named object or ordered list/array) -> validated raw float32 vector in schema order."""
        if isinstance(row, dict):
            return self._named(row)
        if isinstance(row, (list, tuple, np.ndarray)) and np.ndim(row) == 1:
            if len(row) != len(self):
                raise InvalidInput(f"expected {len(self)} features, got {len(row)}")
            if isinstance(row, np.ndarray) and row.dtype.kind == "f":
                return self._array(row)
            return np.array([self._value(i, v) for i, v in enumerate(row)], dtype=np.float32)
        raise InvalidInput(f"a row must be an object of named features or a list of {len(self)} values; {USAGE}")

    def _named(self, row: dict) -> np.ndarray:
        unknown = [name for name in row if name not in self.index]
        missing = [name for name in self.names if row.get(name) is None]
        problems = []
        if unknown:
            problems.append(f"unknown {_feature_list(unknown)}")
        if missing:
            problems.append(f"{_feature_list(missing)} {'is' if len(missing) == 1 else 'are'} missing")
        if problems:
            raise InvalidInput("; ".join(problems))
        return np.array([self._value(i, row[name]) for i, name in enumerate(self.names)], dtype=np.float32)

    def _array(self, row: np.ndarray) -> np.ndarray:
        """A float vector (a row of Triton's FEATURES): checked at numpy speed; the slow path names the culprit."""
        with np.errstate(over="ignore", invalid="ignore"):
            values = row.astype(np.float32)
            ok = (
                np.isfinite(values).all()
                and (values[self._ints] == np.round(values[self._ints])).all()
                and np.isin(values[self._bools], (0.0, 1.0)).all()
            )
        if not ok:
            for i, value in enumerate(row.tolist()):
                self._value(i, value)
        return values

    def _value(self, i: int, value: Any) -> float:
        name, kind = self.names[i], self.types[i]
        if value is None:
            raise InvalidInput(f"feature {name!r} is missing")
        if isinstance(value, (bool, np.bool_)):
            if kind != "bool":
                raise InvalidInput(f"feature {name!r} must be a number, got {_show(value)}")
            return float(value)
        if not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidInput(f"feature {name!r} must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            raise InvalidInput(f"feature {name!r} is NaN or infinite (or beyond the float32 range)")
        if kind == "int" and not number.is_integer():
            raise InvalidInput(f"feature {name!r} must be a whole number, got {number:g}")
        if kind == "bool" and number not in (0.0, 1.0):
            raise InvalidInput(f"feature {name!r} must be true, false, 0 or 1, got {number:g}")
        return number


def _feature_list(names: list[str]) -> str:
    quoted = ", ".join(_show(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"feature{'s' if len(names) > 1 else ''} {quoted}"


def _show(value: Any) -> str:
    """A short, safe rendering of a client's value for an error message."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


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
        return {
            "feature_names": json.dumps([f["name"] for f in features]),
            "feature_types": json.dumps([f.get("type", "float") for f in features]),
        }

    # ---- the model ----------------------------------------------------------------------------------
    def preprocess(self, row: Any) -> np.ndarray:
        return self.schema.row(row)

    def collate(self, features: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"features": torch.from_numpy(self.schema.standardise(np.stack(features))).to(self.device)}

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
