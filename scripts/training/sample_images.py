"""Image folders made offline, one sub-folder per label, for tests and ``maas bench train-image``.

* ``write_shapes``: circles, squares and triangles (upright, tilted up to 20 degrees), each in a random colour on
  a random background, on canvases of 40-95 px a side, saved as PNG and JPEG: a user's photos of objects, in miniature.
* ``write_digits``: scikit-learn's 8x8 digits upscaled (bilinear) with Gaussian noise, grey PNG; must not be flipped.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def _save(image: Image.Image, folder: Path, index: int) -> None:
    fmt = "JPEG" if index % 2 else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    (folder / f"{index}.{fmt.lower()}").write_bytes(buffer.getvalue())


def _colours(rng: np.random.Generator, colour: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A background and a shape colour far enough apart to see the shape (as in a photo anyone would label);
    without ``colour``, a dark grey shape on a light grey background (an easier task: only the shape varies)."""
    if not colour:
        return (int(rng.integers(150, 256)),) * 3, (int(rng.integers(0, 100)),) * 3
    while True:
        background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(background - colour).sum() > 150:
            return tuple(int(v) for v in background), tuple(int(v) for v in colour)


def shape_image(shape: str, rng: np.random.Generator, colour: bool = True) -> Image.Image:
    width, height = int(rng.integers(40, 96)), int(rng.integers(40, 96))
    background, fill = _colours(rng, colour)
    image = Image.new("RGB", (width, height), background)
    radius = rng.uniform(0.25, 0.45) * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        corners = 4 if shape == "square" else 3
        # upright, give or take 20 degrees (a square stands on a side, a triangle on its base)
        turn = math.pi / 2 + (math.pi / corners if corners == 4 else 0) + rng.uniform(-0.35, 0.35)
        draw.polygon([(cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                       cy + radius * math.sin(turn + 2 * math.pi * k / corners)) for k in range(corners)],
                     fill=fill)  # fmt: skip
    return image


def write_shapes(root: Path, per_label: int = 120, seed: int = 0, colour: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            _save(shape_image(shape, rng, colour), root / shape, i)
    return root


def write_digits(root: Path, per_label: int = 40, size: int = 32, noise: float = 20.0, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits  # only here: scikit-learn is slow to import

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        rows = rng.permutation(np.flatnonzero(digits.target == label))[:per_label]
        for i, row in enumerate(rows):
            small = Image.fromarray((digits.images[row] * 255 / 16).astype(np.uint8))
            pixels = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
            pixels = np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            (folder / f"{i}.png").write_bytes(buffer.getvalue())
    return root
