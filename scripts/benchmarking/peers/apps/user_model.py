"""The model code a user of another serving stack writes for our artifacts: plain PyTorch, ONNX Runtime and
tokenizers, no maas import. Every peer app in this folder wraps ``load(artifact)``; ``predict`` takes a list of
JSON rows (``{"pixels": [[...]]}`` or ``{"text": "..."}``) and returns one ``{"label", "probability"}`` per row, so
each stack runs the same computation and answers the same labels as our handlers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def load(artifact: str | os.PathLike):
    artifact = Path(artifact)
    manifest = json.loads((artifact / "pipeline.json").read_text())
    kind = TextModel if manifest["task"] == "text_classification" else DigitsModel
    return kind(artifact, manifest)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Model:
    def __init__(self, artifact: Path, manifest: dict):
        self.labels = manifest["labels"]
        self.file = str(artifact / manifest["model"]["file"])
        self.format = manifest["model"]["format"]

    def answers(self, logits: np.ndarray) -> list[dict]:
        probabilities = softmax(logits)
        best = probabilities.argmax(axis=1)
        return [{"label": self.labels[i], "probability": float(p[i])} for i, p in zip(best, probabilities, strict=True)]

    def onnx_session(self):
        import onnxruntime

        return onnxruntime.InferenceSession(self.file, providers=["CPUExecutionProvider"])


class DigitsModel(Model):
    """The 8x8 digits CNN exported to ONNX: pixels 0..16 scaled to 0..1."""

    def __init__(self, artifact: Path, manifest: dict):
        super().__init__(artifact, manifest)
        self.pixel_max = float(manifest["preprocess"]["pixel_max"])
        self.session = self.onnx_session()

    def predict(self, rows: list[dict]) -> list[dict]:
        pixels = np.asarray([row["pixels"] for row in rows], dtype=np.float32)[:, None] / self.pixel_max
        return self.answers(self.session.run(None, {"pixels": pixels})[0])


class TextModel(Model):
    """A Hugging Face sequence classifier, eager (transformers) or exported to ONNX int8."""

    def __init__(self, artifact: Path, manifest: dict):
        super().__init__(artifact, manifest)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(artifact, local_files_only=True)
        self.max_length = int(manifest["preprocess"].get("max_length", 128))
        if self.format == "eager":
            import torch
            from transformers import AutoModelForSequenceClassification

            self.torch = torch
            self.model = AutoModelForSequenceClassification.from_pretrained(artifact, local_files_only=True).eval()
        else:
            self.session = self.onnx_session()

    def predict(self, rows: list[dict]) -> list[dict]:
        texts = [row["text"] for row in rows]
        if self.format == "eager":
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")  # fmt: skip
            with self.torch.inference_mode():
                logits = self.model(**batch).logits.float().numpy()
        else:
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="np")  # fmt: skip
            feed = {"input_ids": batch["input_ids"].astype(np.int64),
                    "attention_mask": batch["attention_mask"].astype(np.int64)}  # fmt: skip
            logits = self.session.run(None, feed)[0]
        return self.answers(logits)
