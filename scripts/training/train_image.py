"""Train an image classifier on your own folder of images: one sub-folder per label.

    maas train image --data photos/ --out artifacts/photos [--size 32 32] [--channels 1|3] [--epochs 30]

Images of any size and mode (PNG, JPEG, ...) are decoded exactly as the servers will decode them (the image task's
own preprocessing: grey or RGB, resized to H x W with an area filter, scaled to 0..1, then normalised with the
per-channel mean and std of the training images, recorded in the manifest). ``--channels`` defaults to 1 when every
image is grey, else 3. The network is the ResNet-style CNN of ``handlers/nets.py`` (two residual stages, 32 and 64
channels, ~0.3 M parameters), trained with AdamW and a cosine schedule; 20% of the images are held out (seeded) and
kept, as sent, for export checks and the self-check. An unreadable image or a folder without images is refused by
name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file
from torch import nn

from handlers.artifact import Manifest, write_held_out
from handlers.errors import ServingError
from handlers.nets import build_module
from handlers.tasks.image import ImageClassifier
from scripts import at_least
from scripts.training.common import fit, predict_logits, seed_everything, write_artifact
from scripts.training.import_image import IMAGE_SUFFIXES
from scripts.training.text_data import DataError

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def read_folder(data: Path) -> tuple[list[str], list[Path], list[int]]:
    """``(labels, image paths, label indices)``; a label folder without images is refused by name."""
    if not Path(data).is_dir():
        raise DataError(f"{data} {'is not a folder' if Path(data).exists() else 'does not exist'}: --data takes a "
                        "folder with one sub-folder of images per label")  # fmt: skip
    folders = sorted(p for p in Path(data).iterdir() if p.is_dir())
    if len(folders) < 2:
        raise DataError(f"{data}: expected one sub-folder of images per label, at least two; found {len(folders)}")
    labels, paths, targets = [f.name for f in folders], [], []
    for index, folder in enumerate(folders):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += images
        targets += [index] * len(images)
    return labels, paths, targets


def image_mode(path: Path) -> str:
    try:
        with Image.open(path) as image:
            return image.mode
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: could not decode the image ({exc})") from None


def decode_all(pipeline: ImageClassifier, paths: list[Path]) -> np.ndarray:
    """Every image through the serving preprocessing (with mean 0 and std 1: raw 0..1 pixels)."""
    pixels = []
    for path in paths:
        try:
            pixels.append(pipeline.preprocess(path.read_bytes()))
        except ServingError as exc:
            raise DataError(f"{path}: {exc.message}") from None
    return np.stack(pixels)


def train(data: Path, out: Path, size: tuple[int, int] = (32, 32), channels: int | None = None, epochs: int = 30,
          seed: int = 0, lr: float = 3e-3) -> Manifest:  # fmt: skip
    seed_everything(seed)
    labels, paths, targets = read_folder(data)
    if channels is None:
        channels = 1 if all(image_mode(p) in GREY_MODES for p in paths) else 3
    preprocess = {"channels": channels, "height": size[0], "width": size[1], "pixel_max": 255.0}
    pixels = decode_all(ImageClassifier(Manifest(out.name, "image_classification", {}, labels, preprocess), out), paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    n_test = max(1, len(paths) // 5)
    test, rest = order[:n_test], order[n_test:]
    mean = pixels[rest].mean(axis=(0, 2, 3))
    std = pixels[rest].std(axis=(0, 2, 3)) + 1e-6
    preprocess |= {"mean": mean.tolist(), "std": std.tolist()}
    # The same arithmetic as ImageClassifier.preprocess: (x - mean) / std in float32, per channel.
    shape = (channels, 1, 1)
    normalised = (pixels - np.float32(mean).reshape(shape)) / np.float32(std).reshape(shape)
    x, y = torch.from_numpy(normalised), torch.tensor(targets)
    config = {"in_channels": channels, "num_classes": len(labels), "widths": [32, 64]}
    model = build_module("small_resnet", config)

    def accuracy(m: nn.Module) -> float:
        return float((predict_logits(m, x[test]).argmax(1) == y[test]).float().mean())

    print(f"training small_resnet on {len(rest)} images ({len(labels)} labels, {channels}x{size[0]}x{size[1]}), "
          f"holding out {len(test)}")  # fmt: skip
    fit(model, x[rest], y[rest], nn.CrossEntropyLoss(), epochs, lr=lr, weight_decay=1e-4,
        evaluate=lambda m: f"held-out accuracy {accuracy(m):.4f}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    write_held_out(out, [paths[i].read_bytes() for i in test], [labels[targets[i]] for i in test])
    manifest = Manifest(
        name=out.name,
        task="image_classification",
        labels=labels,
        model={"architecture": "small_resnet", "config": config, "format": "eager", "file": "model.safetensors"},
        preprocess=preprocess,
        serving={"max_batch_size": 32, "max_rows_per_request": 32, "top_k": min(len(labels), 5)},
        metrics={
            "held_out_accuracy": round(accuracy(model), 4),
            "held_out_rows": len(test),
            "train_rows": len(rest),
            "seed": seed,
            "data": str(data),
        },  # fmt: skip
    )
    write_artifact(out, manifest)
    print(f"held-out accuracy {manifest.metrics['held_out_accuracy']:.4f}; artifact written to {out}")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with one sub-folder of images per label")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    parser.add_argument("--channels", type=int, choices=[1, 3], help="default: 1 if every image is grey, else 3")
    parser.add_argument("--epochs", type=at_least(1), default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        train(args.data, args.out, tuple(args.size), args.channels, args.epochs, args.seed)
    except DataError as exc:
        raise SystemExit(f"maas train image: {exc}") from None


if __name__ == "__main__":
    main()
