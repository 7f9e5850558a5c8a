"""Shared answer shape of every classifier: top label, its probability, the top-k, and all probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from handlers.artifact import Manifest
from handlers.nets import build_module
from handlers.pipeline import Pipeline, TensorSpec


def load_torch_model(manifest: Manifest, artifact_dir: Path) -> torch.nn.Module:
    """Rebuild the manifest's architecture and load its safetensors weights (strictly: no missing keys)."""
    spec = manifest.model
    module = build_module(spec["architecture"], spec.get("config", {}))
    module.load_state_dict(load_file(str(Path(artifact_dir) / spec["file"])), strict=True)
    return module.eval()


class Classifier(Pipeline):
    """A pipeline whose model returns logits over ``manifest.labels``.

    Single-label models answer softmax probabilities. Multi-label ones (``model.multi_label``, a Hugging Face
    ``problem_type: multi_label_classification`` head) score each label on its own with a sigmoid; their JSON
    answer adds ``labels``, every label scoring at least ``serving.threshold`` (0.5).
    """

    def __init__(self, manifest: Manifest, artifact_dir: Path, device: str = "cpu"):
        super().__init__(manifest, artifact_dir, device)
        if not manifest.labels:
            raise ValueError(f"{manifest.name}: a classification artifact needs labels")
        self.labels = list(manifest.labels)
        self.label_bytes = np.array([label.encode() for label in self.labels], dtype=np.object_)
        self.top_k = max(1, min(manifest.serving.top_k, len(self.labels)))
        self.multi_label = bool(manifest.model.get("multi_label", False))
        self.threshold = manifest.serving.threshold

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def comparable(self, outputs: torch.Tensor) -> np.ndarray:
        """Probabilities: a logit's scale is arbitrary (a confident logistic regression's logits run to tens)."""
        return self.scores(outputs.double()).cpu().numpy()

    def decisions(self, outputs: torch.Tensor) -> np.ndarray:
        """What the model decides per row: the top label's index, or (multi-label) one yes/no per label."""
        if self.multi_label:
            return self.comparable(outputs) >= self.threshold
        return outputs.argmax(dim=1).cpu().numpy()

    def postprocess(self, logits: torch.Tensor) -> list[np.ndarray]:
        """``scores`` in numpy: torch's softmax wakes its thread pool even for a [32, 10] batch (~40 us, and its
        threads then contend with ONNX Runtime's on a small machine)."""
        values = logits.detach().float().cpu().numpy()
        if self.multi_label:
            with np.errstate(over="ignore"):  # exp(-logit) overflows for a logit below -88: its score is 0
                return list(1.0 / (1.0 + np.exp(-values)))
        exponents = np.exp(values - values.max(axis=-1, keepdims=True))
        return list(exponents / exponents.sum(axis=-1, keepdims=True))

    def format_json(self, results: list[np.ndarray], single: bool) -> Any:
        answers = [self.describe(p) for p in results]
        return answers[0] if single else answers

    def describe(self, probabilities: np.ndarray) -> dict:
        order = np.argsort(-probabilities, kind="stable")[: self.top_k]
        top = [{"label": self.labels[i], "probability": float(probabilities[i])} for i in order]
        answer = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        if self.multi_label:
            answer["labels"] = [self.labels[i] for i in np.flatnonzero(probabilities >= self.threshold)]
        return answer

    def format_tensors(self, results: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Called per request (often one row), so a few whole-array numpy calls and no per-row Python."""
        probabilities = np.array(results, dtype=np.float32)
        return {
            "LABEL": self.label_bytes[probabilities.argmax(axis=1)][:, None],
            "PROBABILITY": probabilities.max(axis=1, keepdims=True),
            "PROBABILITIES": probabilities,
        }

    @classmethod
    def output_specs(cls, manifest: Manifest) -> list[TensorSpec]:
        return [
            TensorSpec("LABEL", "TYPE_STRING", (1,)),
            TensorSpec("PROBABILITY", "TYPE_FP32", (1,)),
            TensorSpec("PROBABILITIES", "TYPE_FP32", (len(manifest.labels or []),)),
        ]
