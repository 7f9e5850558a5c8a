"""Serve your own model, written in one file: a character-level GRU sentiment classifier.

    PYTHONPATH=. .venv/bin/python examples/char_gru.py --out artifacts/char_gru   # train (~1 min)
    .venv/bin/maas build artifacts/char_gru                             # .mar + Triton model, this file inside
    .venv/bin/maas serve stop && .venv/bin/maas serve start             # serves it as "char_gru" on both

Three parts, all a new kind of model needs:

1. the network (``CharGRU``): any ``torch.nn.Module``; its weights are stored as safetensors;
2. the pipeline (``CharGRUClassifier``): how a request becomes a batch and a batch an answer. ``TextInput`` gives the
   text wire formats of both servers, ``Classifier`` the answer (label, probability, top-k); this class adds
   ``preprocess`` (one text -> byte codes), ``collate`` (pad a batch) and ``eager_module`` (rebuild the network);
3. training (``train``), which writes the artifact with ``write_artifact(..., pipeline=CharGRUClassifier)``: this
   file is copied into the artifact and every server imports the class from there.

The pipeline part runs inside the servers, where only ``handlers`` (shipped in every archive), torch and numpy are
importable: build-time helpers (``scripts``) are imported inside ``train`` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from handlers.classification import Classifier
from handlers.tasks.text_input import TextInput

MAX_BYTES = 200  # a text's first 200 UTF-8 bytes are read; the rest is ignored


class CharGRU(nn.Module):
    """Byte embeddings -> GRU -> the hidden state at each text's last byte -> class logits. Code 0 is padding."""

    def __init__(self, num_classes: int, embedding: int = 32, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(257, embedding, padding_idx=0)
        self.gru = nn.GRU(embedding, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embed(codes))
        last = (codes != 0).sum(dim=1).clamp(min=1) - 1  # right padding: the state after the last real byte
        return self.head(states[torch.arange(len(codes)), last])


def byte_codes(text: str) -> list[int]:
    return [byte + 1 for byte in text.encode("utf-8")[:MAX_BYTES]]


def pad(rows: list[list[int]]) -> torch.Tensor:
    codes = torch.zeros((len(rows), max(len(row) for row in rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        codes[i, : len(row)] = torch.tensor(row)
    return codes


class CharGRUClassifier(TextInput, Classifier):
    MODEL_INPUTS = {"codes": ("batch", "sequence")}

    def preprocess(self, row: Any) -> list[int]:
        return byte_codes(self.validate_text(row))  # validate_text: the row's own 4xx when it is not a usable text

    def collate(self, features: list[list[int]]) -> dict[str, torch.Tensor]:
        return {"codes": pad(features).to(self.device)}

    @classmethod
    def eager_module(cls, manifest, artifact_dir: Path) -> nn.Module:
        module = CharGRU(len(manifest.labels), **manifest.model["config"])
        module.load_state_dict(load_file(str(Path(artifact_dir) / manifest.model["file"])))
        return module.eval()


def train(out: Path, train_size: int = 10000, n_test: int = 500, epochs: int = 8, seed: int = 0) -> None:
    from safetensors.torch import save_file

    from handlers.artifact import Manifest, write_held_out
    from scripts.training.common import fit, predict_logits, seed_everything, write_artifact
    from scripts.training.text_data import LABELS, sentiment_split

    seed_everything(seed)
    (texts, labels), (test_texts, test_labels) = sentiment_split(seed, n_test)
    texts, labels = texts[:train_size], labels[:train_size]
    config = {"embedding": 32, "hidden": 128}
    model = CharGRU(len(LABELS), **config)
    x, x_test = pad([byte_codes(t) for t in texts]), pad([byte_codes(t) for t in test_texts])  # as served
    y = torch.as_tensor(labels, dtype=torch.long)

    def accuracy(m: nn.Module) -> float:
        return float((predict_logits(m, x_test).argmax(1).numpy() == test_labels).mean())

    fit(model, x, y, nn.CrossEntropyLoss(), epochs, lr=3e-3, evaluate=lambda m: f"held-out accuracy {accuracy(m):.4f}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    write_held_out(out, list(test_texts), [LABELS[int(t)] for t in test_labels])
    manifest = Manifest(
        name=out.name,
        task="text_classification_char_gru",
        labels=LABELS,
        model={"architecture": "char_gru", "format": "eager", "file": "model.safetensors", "config": config},
        serving={"max_batch_size": 32, "max_rows_per_request": 32, "top_k": 2},
        metrics={"held_out_accuracy": round(accuracy(model), 4), "held_out_rows": len(test_texts), "seed": seed},
    )
    write_artifact(out, manifest, pipeline=CharGRUClassifier)
    print(f"held-out accuracy {manifest.metrics['held_out_accuracy']:.4f}; artifact written to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/char_gru"))
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    train(args.out, args.train_size, epochs=args.epochs)
