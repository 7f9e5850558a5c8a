"""Train an image classifier on your own folder of images: one sub-folder per label.

    maas train image --data photos/ --out artifacts/photos [--size 32 32] [--channels 1|3] [--epochs 60]
                     [--no-flip] [--recipe stages|small] [--base ARTIFACT | --base efficientnet-lite0]

Images of any size and mode (PNG, JPEG, ...) are decoded exactly as the servers will decode them (the image task's
own preprocessing: grey or RGB, resized to H x W with an area filter, scaled to 0..1, then normalised with the
per-channel mean and std of the training images, recorded in the manifest). ``--channels`` defaults to 1 when every
image is grey, else 3. 20% of the images are held out (seeded) and kept, as sent, for export checks and the
self-check. An unreadable image or a folder without images is refused by name.

The default recipe (``stages``): the ``resnet_stages`` network of ``handlers/nets.py``, one stride-2 residual stage
per halving of the input down to about 4x4 (32x32: three stages, 16-128 channels, ~0.3 M parameters); trained with
random resized crops, horizontal flips (not with ``--no-flip``) and brightness/contrast jitter, AdamW with a
warm-up and a cosine decay, and early stopping on a validation split of 15% of the training rows, restoring the
best epoch's weights (``image_recipe.py``). Training and held-out accuracy are printed and recorded in the
manifest: far apart means over-fitting, both low under-fitting.

``--base ARTIFACT`` starts from another artifact's network of this recipe, with a new head, keeping its input (size,
channels, mean, std). ``--base efficientnet-lite0`` fine-tunes an ImageNet-pretrained EfficientNet-Lite0
(``pretrained.py``: weights from a package, saved as TorchScript, served with the backbone's own preprocessing: RGB,
224 x 224 after a shorter-side resize and centre crop; a smaller ``--size`` trades accuracy for speed).
``--recipe small`` is the first recipe (the digits' two-stage network, no augmentation or validation split), kept
for comparison (``maas bench train-image``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from torch import nn

from handlers.artifact import Manifest, read_manifest, write_held_out
from handlers.errors import ServingError
from handlers.nets import build_module, stage_widths
from handlers.tasks.image import ImageClassifier
from scripts import at_least
from scripts.training.common import fit, predict_logits, seed_everything, write_artifact
from scripts.training.image_recipe import Recipe, fit_early_stopping
from scripts.training.import_image import IMAGE_SUFFIXES
from scripts.training.pretrained import BACKBONES, load_backbone, save_torchscript
from scripts.training.text_data import DataError

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
RECIPES = {"stages": "resnet_stages (augmented, early-stopped)", "small": "small_resnet (the first recipe)"}
VALIDATION_FRACTION = 0.15


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


@dataclass
class Split:
    """A folder decoded and split: ``x`` normalised as the servers will (the manifest's ``preprocess``)."""

    labels: list[str]
    paths: list[Path]
    targets: list[int]
    x: torch.Tensor
    y: torch.Tensor
    test: np.ndarray  # held out: never trained or validated on
    rest: np.ndarray
    preprocess: dict


def load_split(data: Path, name: str, size: tuple[int, int] = (32, 32), channels: int | None = None,
               seed: int = 0, base: dict | None = None) -> Split:  # fmt: skip
    """Decode every image through the serving preprocessing and hold out 20% (seeded); the per-channel mean and
    std come from the other 80%, or from ``base`` (a base model's whole ``preprocess``, resize policy included:
    its input is kept as it was)."""
    labels, paths, targets = read_folder(data)
    if channels is None:
        channels = 1 if all(image_mode(p) in GREY_MODES for p in paths) else 3
    preprocess = {k: v for k, v in (base or {}).items() if k not in ("mean", "std")}
    preprocess |= {"channels": channels, "height": size[0], "width": size[1], "pixel_max": 255.0}
    pixels = decode_all(ImageClassifier(Manifest(name, "image_classification", {}, labels, preprocess), Path()), paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    n_test = max(1, len(paths) // 5)
    test, rest = order[:n_test], order[n_test:]
    mean = np.asarray(base["mean"]) if base else pixels[rest].mean(axis=(0, 2, 3))
    std = np.asarray(base["std"]) if base else pixels[rest].std(axis=(0, 2, 3)) + 1e-6
    preprocess |= {"mean": mean.tolist(), "std": std.tolist()}
    # The same arithmetic as ImageClassifier.preprocess: (x - mean) / std in float32, per channel.
    shape = (channels, 1, 1)
    normalised = (pixels - np.float32(mean).reshape(shape)) / np.float32(std).reshape(shape)
    return Split(labels, paths, targets, torch.from_numpy(normalised), torch.tensor(targets), test, rest, preprocess)


def base_preprocess(base: Path) -> dict:
    """A base model's ``preprocess``; it must be a ``maas train image`` artifact of the default recipe."""
    manifest = read_manifest(base)  # verifies every file's checksum
    if manifest.model.get("architecture") != "resnet_stages":
        raise DataError(f"--base {base}: a network of the default recipe (resnet_stages) is needed, not "
                        f"{manifest.model.get('architecture')!r}")  # fmt: skip
    return manifest.preprocess


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict_logits(model, x).argmax(1) == y).float().mean())


def train_small(split: Split, epochs: int, lr: float = 3e-3) -> tuple[dict, nn.Module, np.ndarray]:
    """The first recipe (``--recipe small``): the digits' two-stage CNN, every training row, no augmentation."""
    x, y, test, rest = split.x, split.y, split.test, split.rest
    config = {"in_channels": split.preprocess["channels"], "num_classes": len(split.labels), "widths": [32, 64]}
    model = build_module("small_resnet", config)
    fit(model, x[rest], y[rest], nn.CrossEntropyLoss(), epochs, lr=lr, weight_decay=1e-4,
        evaluate=lambda m: f"held-out accuracy {accuracy(m, x[test], y[test]):.4f}")  # fmt: skip
    return {"architecture": "small_resnet", "config": config}, model, rest


def validation_split(split: Split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(validation rows, rows to fit)``: 15% of the training rows (seeded); the held-out rows are not among them."""
    rest = np.random.default_rng(seed + 1).permutation(split.rest)
    n_val = max(1, round(len(rest) * VALIDATION_FRACTION))
    return rest[:n_val], rest[n_val:]


def train_stages(split: Split, recipe: Recipe, seed: int, base: Path | None = None
                 ) -> tuple[dict, nn.Module, np.ndarray, dict]:  # fmt: skip
    """The default recipe: ``resnet_stages`` sized to the input, augmented, early-stopped on the validation split.
    With ``base`` (an artifact of this recipe), its network minus the head is the starting point."""
    val, fit_rows = validation_split(split, seed)
    pre = split.preprocess
    config = {"in_channels": pre["channels"], "num_classes": len(split.labels),
              "widths": stage_widths(pre["height"], pre["width"]), "dropout": 0.2}  # fmt: skip
    spec = read_manifest(base).model if base is not None else None
    if spec:
        config["widths"] = spec["config"]["widths"]
    model = build_module("resnet_stages", config)
    if spec:
        weights = {k: v for k, v in load_file(str(base / spec["file"])).items() if not k.startswith("head.")}
        model.load_state_dict(weights, strict=False)  # the head is new: the labels are the new folder's
    x, y = split.x, split.y
    stats = fit_early_stopping(model, x[fit_rows], y[fit_rows], x[val], y[val], recipe, seed)
    return {"architecture": "resnet_stages", "config": config}, model, fit_rows, stats | {"val_rows": len(val)}


def train_pretrained(split: Split, name: str, epochs: int, flip: bool, seed: int
                     ) -> tuple[dict, nn.Module, np.ndarray, dict]:  # fmt: skip
    """Fine-tune a pretrained backbone (every layer, a new head) with the default recipe's augmentation and early
    stopping; a lower learning rate and a shorter warm-up, as the weights start close to a good solution."""
    val, fit_rows = validation_split(split, seed)
    model = load_backbone(name, len(split.labels))
    recipe = Recipe(epochs=epochs, lr=5e-4, warmup_epochs=1, patience=max(3, epochs // 3), flip=flip)
    stats = fit_early_stopping(model, split.x[fit_rows], split.y[fit_rows], split.x[val], split.y[val], recipe, seed)
    return {"architecture": name, "format": "torchscript", "file": "model.pt"}, model, fit_rows, stats | {
        "val_rows": len(val)}  # fmt: skip


def train(data: Path, out: Path, size: tuple[int, int] | None = None, channels: int | None = None,
          epochs: int | None = None, seed: int = 0, recipe: str = "stages", flip: bool = True,
          base: Path | str | None = None) -> Manifest:  # fmt: skip
    """``base``: an artifact of the default recipe, or the name of a pretrained backbone (``BACKBONES``)."""
    seed_everything(seed)
    backbone = BACKBONES.get(str(base)) if base is not None else None
    if backbone:  # its own preprocessing; --size may change the input size
        if channels == 1:
            raise DataError(f"--base {base} takes RGB images: leave --channels out or give 3")
        base_pre = backbone.preprocess(size)
    else:
        base = Path(base) if base is not None else None
        base_pre = base_preprocess(base) if base is not None else None
    if base_pre:  # the base network's input, unchanged: size, channels, mean and std
        size, channels = (base_pre["height"], base_pre["width"]), base_pre["channels"]
    size = size or (32, 32)
    split = load_split(data, out.name, size, channels, seed, base_pre)
    labels, test = split.labels, split.test
    pre = split.preprocess
    network = f"{base} (pretrained)" if backbone else RECIPES[recipe]
    print(f"training {network} on {len(split.rest)} images ({len(labels)} labels, "
          f"{pre['channels']}x{size[0]}x{size[1]}), holding out {len(test)}")  # fmt: skip
    if recipe == "small":
        spec, model, fit_rows = train_small(split, epochs or 30)
        stats = {}
    elif backbone:
        spec, model, fit_rows, stats = train_pretrained(split, str(base), epochs or 15, flip, seed)
    else:
        spec, model, fit_rows, stats = train_stages(split, Recipe(epochs=epochs or 60, flip=flip), seed, base)
    out.mkdir(parents=True, exist_ok=True)
    if spec.get("format") == "torchscript":
        save_torchscript(model, pre["channels"], pre["height"], pre["width"], out / spec["file"])
    else:
        spec |= {"format": "eager", "file": "model.safetensors"}
        save_file(model.state_dict(), str(out / spec["file"]))
    write_held_out(out, [split.paths[i].read_bytes() for i in test], [labels[split.targets[i]] for i in test])
    metrics = {
        "held_out_accuracy": round(accuracy(model, split.x[test], split.y[test]), 4),
        # on the rows it was fitted on, without augmentation: far above held-out means over-fitting
        "train_accuracy": round(accuracy(model, split.x[fit_rows], split.y[fit_rows]), 4),
        "held_out_rows": len(test),
        "train_rows": len(fit_rows),
        **stats,
        "recipe": recipe,
        **({"base": str(base)} if base is not None else {}),
        "flip": flip if recipe == "stages" else False,
        "seed": seed,
        "data": str(data),
    }
    manifest = Manifest(
        name=out.name,
        task="image_classification",
        labels=labels,
        model=spec,
        preprocess=pre,
        serving={"max_batch_size": 32, "max_rows_per_request": 32, "top_k": min(len(labels), 5)},
        metrics=metrics,
    )
    write_artifact(out, manifest)
    print(f"train accuracy {metrics['train_accuracy']:.4f}, held-out accuracy {metrics['held_out_accuracy']:.4f} "
          f"({len(test)} images); artifact written to {out}")  # fmt: skip
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with one sub-folder of images per label")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="the network's input (default: 32 32; a pretrained backbone's own, 224 224)")  # fmt: skip
    parser.add_argument("--channels", type=int, choices=[1, 3], help="default: 1 if every image is grey, else 3")
    parser.add_argument("--epochs", type=at_least(1),
                        help="at most this many (default: 60; --recipe small: 30; pretrained: 15)")  # fmt: skip
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="stages", help="default: stages")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="never mirror images (digits, text, anything with a handedness)")  # fmt: skip
    parser.add_argument("--base", metavar="ARTIFACT|NAME",
                        help="start from this artifact's network (the default recipe's), with a new head, keeping "
                        "its input size, channels, mean and std; or from a pretrained backbone: "
                        f"{', '.join(BACKBONES)}")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.base is not None and args.recipe != "stages":
        parser.error("--base works with the default recipe (stages) only")
    try:
        size = tuple(args.size) if args.size else None
        train(args.data, args.out, size, args.channels, args.epochs, args.seed, args.recipe, args.flip, args.base)
    except DataError as exc:
        raise SystemExit(f"maas train image: {exc}") from None


if __name__ == "__main__":
    main()
