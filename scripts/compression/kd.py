"""What distillation and pruning share: the teacher, its training texts and soft labels, the training loop, and
the rule that decides whether a compressed model may replace its teacher.

**Acceptance.** A student is judged on the teacher's held-out rows with the statistics exports are judged by
(``scripts/packaging/acceptance.py``): the paired accuracy drop (teacher - student) with its one-sided 99% bounds
(Agresti-Min). It is refused, and nothing written, when the *lower* bound exceeds ``max_accuracy_drop`` (default 1.5
points): only evidence of a larger loss refuses it, so a small held-out set cannot refuse a good student on noise
(and cannot vouch for a small loss either; the bounds are in the manifest). Label agreement with the teacher is
reported with its exact bounds, not enforced: a smaller model is expected to disagree on hard rows.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from handlers.artifact import HELD_OUT_NAME, Manifest, read_held_out, read_manifest
from handlers.tasks import text
from scripts.packaging.acceptance import CONFIDENCE, accuracy_drop_bounds, lower_bound_rate, upper_bound_rate
from scripts.training.common import seed_everything, warmup_linear_schedule, write_artifact
from scripts.training.text_data import bundled_training_texts, read_labelled_texts
from scripts.training.train_text import predict

TEMPERATURE = 2.0  # softens the teacher's probabilities, so the student learns how sure it was, not only its label
MAX_ACCURACY_DROP = 0.015


class CompressionError(ValueError):
    """The artifact cannot be compressed as asked, or the result is refused; the message says why."""


def load_teacher(artifact: Path):
    """``(manifest, model, tokenizer)`` of an eager Hugging Face text classifier (trained or imported here)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = read_manifest(artifact)
    model = manifest.model
    if manifest.task != "text_classification" or model.get("architecture") != "hf_sequence_classification":
        raise CompressionError(f"{artifact} is a {manifest.task} model; compression takes text classifiers only")
    if model.get("format") != "eager":
        raise CompressionError(f"{artifact} is a {model.get('format')} export: compress the eager artifact it came "
                               "from, then export the student")  # fmt: skip
    if model.get("multi_label"):
        raise CompressionError(f"{artifact} is multi-label; distillation here takes single-label classifiers")
    teacher = AutoModelForSequenceClassification.from_pretrained(artifact, local_files_only=True, use_safetensors=True)
    return manifest, teacher.eval(), AutoTokenizer.from_pretrained(artifact, local_files_only=True)


def training_texts(manifest: Manifest, data: Path | None, text_column: str, limit: int | None) -> list[str]:
    """The texts to teach on: ``data`` (labels not needed: the teacher labels them), else the bundled training
    sentences when the teacher was trained on them (all of them, the ones its training left unused included)."""
    if data is not None:
        texts, _ = read_labelled_texts(data, text_column, text_column)  # any column as the "label": unused
    elif (texts := bundled_training_texts(manifest.metrics)) is None:
        raise CompressionError("pass --data FILE (CSV or JSONL, --text-column): the texts to teach the student on")
    return texts[:limit] if limit else texts


def soft_labels(teacher, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits for every text, computed once."""
    logits = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(texts), batch_size), desc="teacher", unit="batch", disable=None, leave=False):
            batch = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            logits.append(teacher(**batch).logits)
    return torch.cat(logits)


def teach(student, tokenizer, texts: list[str], teacher_logits: torch.Tensor, max_length: int, epochs: int,
          lr: float, seed: int, batch_size: int = 32, temperature: float = TEMPERATURE) -> float:  # fmt: skip
    """Train ``student`` on the teacher's softened probabilities (KL divergence x T^2, Hinton et al. 2015);
    seeded; return the seconds it took."""
    seed_everything(seed)
    steps = epochs * math.ceil(len(texts) / batch_size)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    schedule = warmup_linear_schedule(optimizer, steps)
    bar = tqdm(total=steps, desc="teaching", unit="step", disable=None, leave=False)
    start, step = time.perf_counter(), 0
    for _ in range(epochs):
        student.train()
        for idx in np.array_split(np.random.permutation(len(texts)), steps // epochs):
            batch = tokenizer([texts[j] for j in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            log_p = F.log_softmax(student(**batch).logits / temperature, dim=-1)
            q = F.softmax(teacher_logits[torch.from_numpy(idx)] / temperature, dim=-1)
            loss = F.kl_div(log_p, q, reduction="batchmean") * temperature**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            step += 1
            if step % 50 == 0 or step == steps:  # also where there is no terminal (tqdm's bar is off there)
                tqdm.write(f"step {step}/{steps} distillation loss {loss.item():.4f} "
                           f"({time.perf_counter() - start:.0f}s)")  # fmt: skip
    bar.close()
    student.eval()
    return time.perf_counter() - start


def judge_student(teacher, student, tokenizer, artifact: Path, labels: list[str], max_drop: float) -> dict:
    """The acceptance rule (module docstring) on the teacher's held-out rows; raises ``CompressionError``."""
    texts, targets = read_held_out(artifact)
    truth = np.array([labels.index(t) for t in targets])
    before, after = predict(teacher, tokenizer, texts), predict(student, tokenizer, texts)
    drop, low, high = accuracy_drop_bounds(before == truth, after == truth)
    changed = int(np.sum(before != after))
    report = {
        "confidence": CONFIDENCE, "held_out_rows": len(texts), "max_accuracy_drop": max_drop,
        "teacher_accuracy": round(float(np.mean(before == truth)), 4),
        "accuracy": round(float(np.mean(after == truth)), 4),
        "accuracy_drop": round(drop, 4), "accuracy_drop_bounds": [round(low, 4), round(high, 4)],
        "label_agreement": round(1 - changed / len(texts), 4),
        "disagreement_bounds": [round(lower_bound_rate(changed, len(texts)), 4),
                                round(upper_bound_rate(changed, len(texts)), 4)],
    }  # fmt: skip
    report["passed"] = bool(low <= max_drop)
    if not report["passed"]:
        raise CompressionError(f"refused: held-out accuracy {report['teacher_accuracy']:.4f} -> "
                               f"{report['accuracy']:.4f}, a drop of at least {low:.4f} at {CONFIDENCE:.0%} "
                               f"confidence, beyond the {max_drop:g} allowed (--max-accuracy-drop)")  # fmt: skip
    return report


def write_student(student, tokenizer, teacher_artifact: Path, manifest: Manifest, out: Path, compression: dict,
                  training: dict) -> Manifest:  # fmt: skip
    """The student as an ordinary eager artifact: the teacher's held-out rows, labels and serving settings, and a
    ``compression`` record in its metrics; self-checked like any trained model."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    student.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    shutil.copyfile(teacher_artifact / HELD_OUT_NAME, out / HELD_OUT_NAME)
    metrics = {"held_out_accuracy": compression["accuracy"], "held_out_rows": compression["held_out_rows"],
               **training, "compression": compression}  # fmt: skip
    student_manifest = replace(manifest, name=out.name, model={**manifest.model, "file": "model.safetensors"},
                               metrics=metrics, files={})  # fmt: skip
    write_artifact(out, student_manifest)
    return student_manifest


def teach_and_write(teacher, student, tokenizer, artifact: Path, manifest: Manifest, out: Path, method: dict,
                    texts: list, epochs: int, lr: float, seed: int, data: Path | None,
                    max_drop: float) -> Manifest:  # fmt: skip
    """Teach the student (``teach``, on the teacher's soft labels; no epochs: as it is), judge it
    (``judge_student``), then write it with its ``compression`` record (``method`` and the acceptance figures)
    and how it was trained."""
    max_length = text.max_length(manifest)
    seconds = 0.0
    if epochs:
        logits = soft_labels(teacher, tokenizer, texts, max_length)
        seconds = teach(student, tokenizer, texts, logits, max_length, epochs, lr, seed)
    report = judge_student(teacher, student, tokenizer, artifact, manifest.labels, max_drop)
    training = {"train_rows": len(texts), "epochs": epochs, "train_seconds": round(seconds, 1), "seed": seed,
                "data": str(data) if data else manifest.metrics.get("data")}  # fmt: skip
    written = write_student(student, tokenizer, artifact, manifest, out, {**method, **report}, training)
    print(f"{method['method']}: held-out accuracy {report['accuracy']:.4f} (teacher {report['teacher_accuracy']:.4f}"
          f"; drop bounds {report['accuracy_drop_bounds']}), label agreement {report['label_agreement']:.4f}; "
          f"trained in {seconds:.0f}s; written to {out}")  # fmt: skip
    return written
