"""What a benchmark sends: per task, held-out requests in each server's wire form and the in-process equivalent."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handlers.artifact import HELD_OUT_NAME, read_held_out, read_manifest
from scripts import ARTIFACTS_DIR
from scripts.benchmarking.loadgen import Workload
from scripts.serving.samples import digit_png, triton_image_input, triton_text_input


@dataclass
class ModelUnderTest:
    name: str
    task: str
    artifact: Path
    workload: Workload
    pipeline_inputs: Callable[[int], dict]  # item index -> one Triton-style request for handle_tensors
    description: str


def text_model(name: str, artifact: Path) -> ModelUnderTest:
    from scripts.training.text_data import sentiment_split

    _, (sentences, _) = sentiment_split()
    tokens = [len(ids) for ids in load_tokenizer(artifact)(sentences)["input_ids"]]
    workload = Workload(
        [json.dumps({"text": s}).encode() for s in sentences],
        "application/json",
        lambda module, i: [triton_text_input(module, [sentences[i]])],
    )
    return ModelUnderTest(
        name, "text_classification", artifact, workload,
        lambda i: {"TEXT": np.array([[sentences[i % len(sentences)].encode()]], dtype=np.object_)},
        f"{len(sentences)} held-out sentences, {int(np.median(tokens))} tokens median, {max(tokens)} max",
    )  # fmt: skip


def load_tokenizer(artifact: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(artifact, local_files_only=True)


def image_model(name: str, artifact: Path) -> ModelUnderTest:
    from scripts.training.train_digits import digits_split

    _, x_test, _, _ = digits_split()
    pngs = [digit_png(x) for x in x_test]
    workload = Workload(pngs, "image/png", lambda module, i: [triton_image_input(module, [pngs[i]])])
    return ModelUnderTest(
        name, "image_classification", artifact, workload,
        lambda i: {"IMAGE": np.array([[pngs[i % len(pngs)]]], dtype=np.object_)},
        f"{len(pngs)} held-out digits as {len(pngs[0])}-byte 32x32 PNGs",
    )  # fmt: skip


def tabular_model(name: str, artifact: Path) -> ModelUnderTest:
    """The held-out rows: ``{"features": [...]}`` for TorchServe, ``FEATURES`` FP32 [1, n] for Triton."""
    rows, _ = read_held_out(artifact)
    matrix = np.asarray(rows, dtype=np.float32)

    def triton_input(module, i: int) -> list:
        tensor = module.InferInput("FEATURES", [1, matrix.shape[1]], "FP32")
        tensor.set_data_from_numpy(matrix[i : i + 1])
        return [tensor]

    workload = Workload([json.dumps({"features": row}).encode() for row in rows], "application/json", triton_input)
    task = read_manifest(artifact).task
    return ModelUnderTest(
        name, task, artifact, workload, lambda i: {"FEATURES": matrix[i % len(matrix)][None, :]},
        f"{len(rows)} held-out rows of {matrix.shape[1]} features",
    )  # fmt: skip


WORKLOADS = {
    "text_classification": text_model,
    "image_classification": image_model,
    "tabular_classification": tabular_model,
    "tabular_regression": tabular_model,
}


def model_under_test(name: str, held_out_required: bool = False) -> ModelUnderTest:
    """``artifacts/<name>`` with its task's workload; ``held_out_required``: refuse an artifact without held-out
    rows (the formats benchmark checks each export on them)."""
    artifact = ARTIFACTS_DIR / name
    task = read_manifest(artifact).task
    if task not in WORKLOADS:
        raise SystemExit(f"{name}: no benchmark workload for task {task!r} (known: {sorted(WORKLOADS)})")
    if held_out_required and not (artifact / HELD_OUT_NAME).is_file():
        raise SystemExit(f"{artifact / HELD_OUT_NAME} is missing (still training?): the exports are checked on it")
    return WORKLOADS[task](name, artifact)


def load_workload(artifact: Path) -> Workload:
    """The workload ``model_under_test`` builds for this artifact (its task's), in another process."""
    return WORKLOADS[read_manifest(artifact).task](artifact.name, artifact).workload
