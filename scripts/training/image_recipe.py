"""The image training recipe: augmentation, warm-up + cosine AdamW, early stopping on a validation split.

Used by ``maas train image`` (``train_image.py``). Augmentation works on the decoded, normalised float batches with
torch ops only, so it needs no image library and costs little beside the network:

* a random resized crop (a box of 60-100% of the area, aspect ratio 3/4-4/3, resampled bilinearly back to the
  input size): the subject moves and changes size as it does between photos;
* a horizontal flip, half the time, unless the caller says the data must not be mirrored (digits, text);
* brightness and contrast, the same for every channel so that a colour stays that colour.

Early stopping watches the validation split (carved from the training rows by the caller; the held-out split is
never seen here) and restores the weights of the best epoch: highest validation accuracy, ties to the lower
validation loss (a small split's accuracy moves in coarse steps).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scripts.training.common import predict_logits, warmup_cosine_schedule


@dataclass(frozen=True)
class Recipe:
    epochs: int = 60
    lr: float = 2e-3
    weight_decay: float = 5e-4
    batch_size: int = 32
    warmup_epochs: int = 3
    patience: int = 20  # epochs without a better validation score before stopping, once past half of ``epochs``
    min_scale: float = 0.6  # random resized crop: the smallest fraction of the area kept
    max_ratio: float = 4 / 3  # and the box's aspect ratio, between 1 / max_ratio and max_ratio
    flip: bool = True
    jitter: float = 0.2  # brightness and contrast: +-20%
    label_smoothing: float = 0.1


def augment(x: torch.Tensor, recipe: Recipe, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop (+ flip) per image as one affine resampling, then brightness and contrast."""
    n = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    area = uniform(recipe.min_scale, 1.0)
    ratio = torch.exp(uniform(-math.log(recipe.max_ratio), math.log(recipe.max_ratio)))
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # fractions
    # affine_grid's coordinates run -1..1: a box of fraction f can be centred anywhere within +-(1 - f).
    centre_x, centre_y = (1 - width) * uniform(-1, 1), (1 - height) * uniform(-1, 1)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if recipe.flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if recipe.jitter:
        # Inputs are standardised (mean ~0, std ~1 per channel): scaling is contrast, shifting brightness.
        contrast = uniform(1 - recipe.jitter, 1 + recipe.jitter).view(n, 1, 1, 1)
        brightness = uniform(-recipe.jitter, recipe.jitter).view(n, 1, 1, 1)
        out = out * contrast + brightness
    return out


def fit_early_stopping(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, recipe: Recipe,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Train ``model`` in place and leave it in eval mode with the best epoch's weights. Prints one line per epoch
    (loss and accuracy on the augmented training batches, validation accuracy, seconds) and returns
    ``{"best_epoch", "epochs_run", "val_accuracy", "val_loss", "seconds"}``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    scheduler = warmup_cosine_schedule(optimizer, recipe.epochs * steps_per_epoch,
                                       recipe.warmup_epochs * steps_per_epoch)  # fmt: skip
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    best, best_state, best_epoch, start = (-1.0, 0.0), None, 0, time.perf_counter()
    epoch = 0
    # A bar on a terminal (disable=None: none in logs and CI); the per-epoch line is printed either way.
    for epoch in tqdm(range(1, recipe.epochs + 1), desc="training", unit="epoch", disable=None, leave=False):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, right = 0.0, 0
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            logits = model(augment(x[idx], recipe, generator))
            loss = loss_fn(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            right += int((logits.argmax(1) == y[idx]).sum())
        val_logits = predict_logits(model, x_val)
        val_loss = float(F.cross_entropy(val_logits, y_val))
        val_accuracy = float((val_logits.argmax(1) == y_val).float().mean())
        improved = (val_accuracy, -val_loss) > best
        if improved:
            best, best_epoch = (val_accuracy, -val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
        tqdm.write(f"epoch {epoch:3d}/{recipe.epochs} loss {total / len(x):.4f} train acc {right / len(x):.4f} "
                   f"val acc {val_accuracy:.4f} val loss {val_loss:.4f}{' *' if improved else ''} "
                   f"({time.perf_counter() - start:.1f}s)")  # fmt: skip
        # Not in the first half: a small validation split's early best (a lucky epoch) would end training too soon.
        if epoch - best_epoch >= recipe.patience and epoch >= recipe.epochs // 2:
            tqdm.write(f"stopping early: no better validation score in {recipe.patience} epochs")
            break
    model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "epochs_run": epoch, "val_accuracy": round(best[0], 4),
            "val_loss": round(-best[1], 4), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
