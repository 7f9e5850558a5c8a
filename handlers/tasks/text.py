"""Text classification with a fine-tuned BERT-family model (Hugging Face format, loaded from the artifact only).

Contracts
* TorchServe: JSON ``{"text": "..."}`` (one answer object) or ``{"text": ["...", ...]}`` (a list of answers, in
  order), or a ``text/plain`` body holding one text. Answer: ``{"label", "probability", "top_k"}``.
* Triton: ``TEXT`` (BYTES ``[n, 1]``; UTF-8 bytes or str); outputs ``LABEL``, ``PROBABILITY``, ``PROBABILITIES``.

Each text is tokenized alone, so an empty, non-string or non-UTF-8 item is that request's 400 and nobody else's.
Texts longer than the manifest's ``max_length`` tokens are truncated (the head is kept), as in training; a text over
``max_text_chars`` characters is refused with 413 before tokenizing.

Length groups: a server batch is sorted by length and cut into consecutive groups, each padded to its own longest
text, where that costs less than one pass padded to the batch's longest. The cost of a group is ``call_cost_tokens
+ rows x longest``; the cut is the exact minimum (dynamic programming over the sorted lengths). Measured on the
int8 MiniLM (2 cores): a pass costs ~3.5 ms plus ~0.14 ms per padded token, so ``call_cost_tokens`` defaults to
24 (handlers/settings.py); a manifest may set ``serving.call_cost_tokens`` (a huge value: one pass per
batch, as before).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handlers.artifact import Manifest
from handlers.classification import Classifier
from handlers.tasks.text_input import TextInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # artifacts are self-contained; never reach for a model hub

from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # progress bars would flood the servers' logs at every model load

MAX_LENGTH = 128  # tokens a text is cut to, unless the manifest's preprocess says otherwise


def max_length(manifest: Manifest) -> int:
    """Tokens a text is truncated to: ``preprocess.max_length``, as in training."""
    return int(manifest.preprocess.get("max_length", MAX_LENGTH))


def length_groups(lengths: list[int], call_cost: float) -> list[list[int]]:
    """Indices into ``lengths``, sorted by length and cut into consecutive groups so that the sum over groups of
    ``call_cost + rows x longest`` is least (an optimal cut of this cost is always consecutive in sorted order)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = np.array([lengths[i] for i in order], dtype=np.float64)
    best, cut = np.zeros(len(order) + 1), np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):  # best[end]: the least cost of the first ``end`` sorted rows
        costs = best[:end] + call_cost + (end - np.arange(end)) * ordered[end - 1]
        cut[end] = int(np.argmin(costs))
        best[end] = costs[cut[end]]
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = int(cut[end])
    return groups[::-1]


class LogitsOnly(torch.nn.Module):
    """A sequence classifier as a plain function of (input_ids, attention_mask) -> logits, for export."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class TextClassifier(TextInput, Classifier):
    MODEL_INPUTS = {"input_ids": ("batch", "sequence"), "attention_mask": ("batch", "sequence")}

    def __init__(self, manifest: Manifest, artifact_dir: Path, device: str = "cpu"):
        super().__init__(manifest, artifact_dir, device)
        self.max_length = max_length(manifest)
        self.tokenizer = AutoTokenizer.from_pretrained(artifact_dir, local_files_only=True)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.call_cost_tokens = manifest.serving.call_cost_tokens

    # ---- the model ----------------------------------------------------------------------------------
    def preprocess(self, row: Any) -> list[int]:
        text = self.validate_text(row)
        return self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]

    def forward_groups(self, features: list[list[int]]) -> list[list[int]]:
        return length_groups([len(ids) for ids in features], self.call_cost_tokens)

    def collate(self, features: list[list[int]]) -> dict[str, torch.Tensor]:
        """Pad to the longest text of these rows (right padding, as the tokenizer was trained)."""
        longest = max(len(ids) for ids in features)
        input_ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for i, ids in enumerate(features):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}

    @classmethod
    def eager_module(cls, manifest: Manifest, artifact_dir: Path) -> torch.nn.Module:
        model = AutoModelForSequenceClassification.from_pretrained(
            artifact_dir, local_files_only=True, use_safetensors=True
        )
        return LogitsOnly(model).eval()
