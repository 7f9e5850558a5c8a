"""Small, seeded training loop shared by the example models (progress printed per epoch)."""

from __future__ import annotations

import inspect
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from handlers.artifact import Manifest, read_held_out, write_artifact_manifest
from handlers.self_check import FP32_TOLERANCE, record_self_check
from handlers.tasks import load_pipeline


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_linear_schedule(optimizer, steps: int):
    """Learning rate: linear warm-up over the first 10% of ``steps``, then linear decay to 0."""
    warmup = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )


def warmup_cosine_schedule(optimizer, steps: int, warmup: int):
    """Learning rate: linear warm-up over ``warmup`` steps (Adam's early steps are noisy at the full rate), then a
    cosine decay to 0 at ``steps``."""
    warmup = max(1, warmup)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(
            (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, steps - warmup))))
        ),
    )


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    augment=None,
    evaluate=None,
) -> nn.Module:
    """Adam with a cosine schedule; ``evaluate(model) -> str`` is printed after each epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start = time.perf_counter()
    # A bar on a terminal (disable=None: none in logs and CI); the per-epoch line is printed either way.
    for epoch in tqdm(range(1, epochs + 1), desc="training", unit="epoch", disable=None, leave=False):
        model.train()
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = augment(x[idx]) if augment else x[idx]
            loss = loss_fn(model(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        report = f" {evaluate(model)}" if evaluate else ""
        tqdm.write(f"epoch {epoch:3d}/{epochs} loss {total / len(x):.4f}{report} ({time.perf_counter() - start:.1f}s)")
    return model.eval()


def write_artifact(out, manifest: Manifest, pipeline: type | None = None) -> None:
    """Write the manifest, then record the eager model's self-check (its answers on a few held-out rows, checked
    again whenever a server loads it) and checksum that too. ``held_out.jsonl`` must be written first.

    ``pipeline``: a ``Pipeline`` subclass defined in the caller's own file (a model no built-in task serves); the
    file is copied into the artifact as ``pipeline.py`` and the manifest names the class, so every server imports
    it from the artifact (README, "Serve your own model")."""
    if pipeline is not None:
        shutil.copyfile(inspect.getsourcefile(pipeline), Path(out) / "pipeline.py")
        manifest.pipeline = {"file": "pipeline.py", "class": pipeline.__name__}
    write_artifact_manifest(out, manifest)
    rows, _ = read_held_out(out)
    record_self_check(out, load_pipeline(out, manifest=manifest, self_check=False), rows, FP32_TOLERANCE)
    write_artifact_manifest(out, manifest)
