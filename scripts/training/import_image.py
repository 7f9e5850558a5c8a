"""Import a trained image classifier saved as TorchScript or ONNX (from your own training code).

    maas import torchscript FILE --out ARTIFACT --labels LABELS.txt --input-size H W [--channels 1|3]
                            [--mean M ...] [--std S ...] [--resize plain|shorter_side] [--resize-shorter N]
                            [--interpolation bilinear|box] [--held-out DIR] [--name NAME]
    maas import onnx FILE ...   (the same options)
    e.g.  maas import torchscript resnet.pt --out artifacts/pets --labels labels.txt --input-size 224 224 \\
              --channels 3 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --resize shorter_side --held-out val/

The model takes one float32 tensor ``[batch, channels, H, W]`` and returns class logits ``[batch, classes]``; the
answer is the built-in image task's (label, probability, top-k). Preprocessing, as your training did it:
``--resize plain`` (the default) resizes straight to H x W, torchvision's ``Resize((H, W))``: an image already of
that size passes unchanged. ``--resize shorter_side`` resizes the shorter side to ``--resize-shorter`` (default
256/224 of the crop) then centre-crops H x W, torchvision's ``Resize(S)`` + ``CenterCrop((H, W))``, the classic
ImageNet evaluation transform: choose it for ImageNet-style models. Pixels go to 0..1, then ``(x - mean) / std``
per channel. Clients send encoded images of any size and mode, or JSON/Triton pixel
arrays of the model's shape on the 0..255 scale.

``--held-out DIR`` (one sub-folder per label, images inside) gives exports and the load-time self-check their rows
and measures held-out accuracy; without it, 16 synthetic images are recorded with the model's own answers.
The model file is copied into the artifact as it is (a TorchScript file is code: import only models you trust).
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from handlers.artifact import Manifest, write_artifact_manifest, write_held_out
from handlers.formats import FILES
from handlers.tasks import load_pipeline
from scripts.training.common import write_artifact
from scripts.training.hf_checkpoint import ImportRefused

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def probe_images(count: int = 16, seed: int = 0) -> list[bytes]:
    """Varied synthetic PNGs (sizes, aspect ratios, gradients, noise) for models imported without held-out rows."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        height, width = int(rng.integers(48, 320)), int(rng.integers(48, 320))
        ramp = np.linspace(0, 255, width)[None, :, None] * rng.random(3)[None, None, :]
        noise = rng.normal(0, 40 + 5 * i, (height, width, 3))
        pixels = np.clip(ramp + noise + rng.integers(0, 120, 3), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def read_image_folder(directory: Path, labels: list[str]) -> tuple[list[bytes], list[str]]:
    """Images in one sub-folder per label; a folder that is not a label is refused by name."""
    folders = sorted(p for p in Path(directory).iterdir() if p.is_dir())
    unknown = [f.name for f in folders if f.name not in labels]
    if not folders or unknown:
        raise ImportRefused(f"{directory}: expected one sub-folder per label of {labels}; not labels: {unknown}")
    rows, targets = [], []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                rows.append(path.read_bytes())
                targets.append(folder.name)
    if not rows:
        raise ImportRefused(f"{directory}: no images found")
    return rows, targets


def import_image(fmt: str, source: Path, out: Path, labels_file: Path, size: tuple[int, int], channels: int = 3,
                 mean: list[float] | None = None, std: list[float] | None = None, resize: str = "plain",
                 resize_shorter: int | None = None, interpolation: str = "bilinear", held_out: Path | None = None,
                 name: str | None = None) -> Manifest:  # fmt: skip
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise ImportRefused(f"{source} does not exist")
    labels = [line.strip() for line in Path(labels_file).read_text().splitlines() if line.strip()]
    if len(labels) < 2:
        raise ImportRefused(f"{labels_file}: expected one label per line, at least two")
    for option, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != channels:
            raise ImportRefused(f"{option} gives {len(values)} values; the model has {channels} channels")
    height, width = size
    preprocess = {"channels": channels, "height": height, "width": width, "pixel_max": 255.0, "resize": resize,
                  "resize_shorter": resize_shorter or round(max(height, width) * 256 / 224),
                  "interpolation": interpolation}  # fmt: skip
    if mean is not None or std is not None:
        preprocess |= {"mean": mean or [0.0] * channels, "std": std or [1.0] * channels}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out / FILES[fmt])
    manifest = Manifest(
        name=name or out.name,
        task="image_classification",
        labels=labels,
        model={"format": fmt, "file": FILES[fmt], "imported_from": str(source.resolve())},
        preprocess=preprocess,
        serving={"max_batch_size": 32, "max_rows_per_request": 32, "top_k": min(len(labels), 5)},
    )
    try:
        rows, targets = read_image_folder(held_out, labels) if held_out else (probe_images(), None)
        answers = answer_rows(out, manifest, rows)
    except ImportRefused:
        shutil.rmtree(out)
        raise
    metrics = {"held_out_rows": len(rows)}
    if targets:
        metrics["held_out_accuracy"] = round(float(np.mean([a == t for a, t in zip(answers, targets, strict=True)])), 4)
    else:
        metrics["held_out"] = "synthetic probe images; targets are the model's own answers"
    manifest.metrics = metrics
    write_held_out(out, rows, targets or answers)
    write_artifact(out, manifest)
    print(f"imported {source} ({fmt}, {len(labels)} labels, {channels}x{height}x{width}) to {out}; "
          f"held-out: {metrics.get('held_out_accuracy', metrics.get('held_out'))}")  # fmt: skip
    return manifest


def answer_rows(out: Path, manifest: Manifest, rows: list[bytes]) -> list[str]:
    """The model's labels for the rows, refusing a model that does not take or give what the options say."""
    write_artifact_manifest(out, manifest)
    pipeline = load_pipeline(out, manifest=manifest, self_check=False)
    batch = pipeline.collate([pipeline.preprocess(row) for row in rows])
    try:
        logits = pipeline.forward(batch)
    except Exception as exc:
        shape = [len(rows), pipeline.channels, pipeline.height, pipeline.width]
        raise ImportRefused(f"the model does not take float32 images of shape {shape} (check --input-size and "
                            f"--channels): {str(exc)[:300]}") from None  # fmt: skip
    expected = (len(rows), len(manifest.labels))
    if tuple(logits.shape) != expected:
        raise ImportRefused(f"the model answers shape {list(logits.shape)} for {len(rows)} images; expected "
                            f"{list(expected)}: one logit per label of the labels file")  # fmt: skip
    return [manifest.labels[i] for i in logits.argmax(dim=1).tolist()]


def main(argv: list[str] | None = None, fmt: str = "torchscript") -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help=f"the {fmt} model file")
    parser.add_argument("--out", type=Path, required=True, help="the artifact directory to write")
    parser.add_argument("--labels", type=Path, required=True, help="a text file: one label per line, output order")
    parser.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3)
    parser.add_argument("--mean", type=float, nargs="+", help="per channel, on the 0..1 scale")
    parser.add_argument("--std", type=float, nargs="+", help="per channel, on the 0..1 scale")
    resize_help = ("plain (default): torchvision's Resize((H, W)), an image of the input size passes unchanged; "
                   "shorter_side: Resize(S) + CenterCrop((H, W)), for ImageNet-style models")  # fmt: skip
    parser.add_argument("--resize", choices=["plain", "shorter_side"], default="plain", help=resize_help)
    parser.add_argument("--resize-shorter", type=int, help="shorter side before the crop (default: 256/224 of it)")
    parser.add_argument("--interpolation", choices=["bilinear", "box"], default="bilinear")
    parser.add_argument("--held-out", type=Path, help="a folder with one sub-folder of images per label")
    parser.add_argument("--name", help="model name on the servers (default: the --out directory's name)")
    args = parser.parse_args(argv)
    try:
        import_image(fmt, args.source, args.out, args.labels, tuple(args.input_size), args.channels,
                     args.mean, args.std, args.resize, args.resize_shorter, args.interpolation, args.held_out,
                     args.name)  # fmt: skip
    except ImportRefused as exc:
        raise SystemExit(f"maas import {fmt}: {exc}") from None


def main_onnx(argv: list[str] | None = None) -> None:
    main(argv, fmt="onnx")
