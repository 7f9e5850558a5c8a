"""``maas train image`` recipes against a plain CNN, on image folders made offline.

    maas bench train-image [--folders shapes,digits32] [--seeds 0] [--out reports]

For each folder (``scripts/training/sample_images.py``: coloured shapes, 360 PNG/JPEG images of 40-95 px; the 8x8
digits upscaled to 32x32 with noise, 400 grey PNGs, never flipped) and seed, on the same seeded 20% held-out split:

* ``stages``: the default recipe of ``maas train image`` (``resnet_stages``, augmented, early-stopped);
* ``stages --channels 1`` (colour folders only): the same on grey input, for labels that colour does not decide;
* ``small``: the first recipe (``--recipe small``: the digits' two-stage CNN, 30 epochs, no augmentation);
* ``plain CNN``: the issue's baseline, a few lines of PyTorch: three 3x3 convolutions (32, 64, 64) with two
  max-pools, a linear layer on the flattened map, Adam 1e-3, horizontal flips (not on digits), 60 epochs, batch 32;
* ``efficientnet-lite0, 128 px``: ``--base efficientnet-lite0 --size 128 128``, the ImageNet-pretrained backbone
  fine-tuned (15 epochs at most; 128 px rather than its own 224 to keep a 2-core run to minutes).

Reports held-out accuracy with its exact (Clopper-Pearson) 95% interval (seeds pooled: every held-out answer
counts), training accuracy and training seconds (on this machine's cores; the load average is recorded, as other
work slows training). Writes ``train_image.json`` and ``train_image.md`` to ``--out``. No photographic set is
included: no installed package ships a labelled one offline.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from scripts import REPO_ROOT
from scripts.packaging.acceptance import accuracy_interval
from scripts.training.common import seed_everything
from scripts.training.sample_images import write_digits, write_shapes
from scripts.training.train_image import accuracy, load_split, train

FOLDERS = {  # name -> (writer, may be mirrored, in colour)
    "shapes": (lambda root, seed: write_shapes(root, per_label=120, seed=seed), True, True),
    "digits32": (lambda root, seed: write_digits(root, per_label=40, seed=seed), False, False),
}
PRETRAINED = "efficientnet-lite0, 128 px"
METHODS = ("stages", "stages --channels 1", "small", "plain CNN", PRETRAINED)


def plain_cnn(data: Path, seed: int, flip: bool, epochs: int = 60) -> dict:
    """The issue's ten lines of PyTorch, on the split and preprocessing ``maas train image`` uses."""
    seed_everything(seed)
    split = load_split(data, "plain", seed=seed)
    c, k = split.preprocess["channels"], len(split.labels)
    model = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, k),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = split.x[split.rest], split.y[split.rest]
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(32):
            xb = x[idx]
            if flip:
                xb = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test = split.test
    return {"held_out_accuracy": accuracy(model, split.x[test], split.y[test]), "held_out_rows": len(test),
            "train_accuracy": accuracy(model, x, y)}  # fmt: skip


def run_one(method: str, data: Path, out: Path, seed: int, flip: bool) -> dict:
    start = time.perf_counter()
    if method == "plain CNN":
        metrics = plain_cnn(data, seed, flip)
    elif method == PRETRAINED:
        metrics = train(data, out / "pretrained", (128, 128), seed=seed, flip=flip, base="efficientnet-lite0").metrics
    else:
        recipe, _, grey = method.partition(" --channels ")
        metrics = train(data, out / recipe, channels=int(grey) if grey else None, seed=seed, recipe=recipe,
                        flip=flip).metrics  # fmt: skip
    return {"method": method, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            **{k: metrics[k] for k in ("held_out_accuracy", "train_accuracy", "held_out_rows")}}  # fmt: skip


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for folder in dict.fromkeys(r["folder"] for r in runs):
        for method in METHODS:
            mine = [r for r in runs if r["folder"] == folder and r["method"] == method]
            if not mine:
                continue
            n = sum(r["held_out_rows"] for r in mine)
            right = round(sum(r["held_out_accuracy"] * r["held_out_rows"] for r in mine))
            rows.append({"folder": folder, "method": method, "held_out_accuracy": round(right / n, 4),
                         "ci95": [round(v, 4) for v in accuracy_interval(right, n)], "held_out_rows": n,
                         "train_accuracy": round(sum(r["train_accuracy"] for r in mine) / len(mine), 4),
                         "seconds": round(sum(r["seconds"] for r in mine) / len(mine), 1)})  # fmt: skip
    return rows


def markdown(rows: list[dict], command: str, load: list[float]) -> str:
    lines = ["# `maas train image` recipes vs a plain CNN", "", f"`{command}`; {os.cpu_count()} CPU cores, load "
             f"average before/after {load[0]:.2f}/{load[1]:.2f} (other work on the machine slows the timings).", "",
             "| folder | method | held-out accuracy | 95% interval | held-out rows | train accuracy | seconds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        low, high = r["ci95"]
        lines.append(f"| {r['folder']} | {r['method']} | {r['held_out_accuracy']:.3f} | {low:.3f}-{high:.3f} | "
                     f"{r['held_out_rows']} | {r['train_accuracy']:.3f} | {r['seconds']} |")  # fmt: skip
    lines += ["", "Seeds pooled: the interval counts every held-out answer; seconds and train accuracy are means."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", default=",".join(FOLDERS), help=f"comma-separated, of {', '.join(FOLDERS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated; each makes its own folder and split")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    args = parser.parse_args(argv)
    folders = [f for f in args.folders.split(",") if f]
    unknown = sorted(set(folders) - set(FOLDERS))
    if unknown:
        raise SystemExit(f"unknown folder(s) {', '.join(unknown)}; known: {', '.join(FOLDERS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    load, runs = [os.getloadavg()[0]], []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            write, flip, colour = FOLDERS[folder]
            for seed in seeds:
                data = write(Path(tmp) / f"{folder}-{seed}", seed)
                for method in METHODS if colour else [m for m in METHODS if "--channels" not in m]:
                    runs.append({"folder": folder, **run_one(method, data, Path(tmp) / "out", seed, flip)})
                    print(json.dumps(runs[-1]), flush=True)
    load.append(os.getloadavg()[0])
    rows = summarise(runs)
    command = "maas bench train-image --folders " + ",".join(folders) + " --seeds " + ",".join(map(str, seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_image.json").write_text(json.dumps({"command": command, "load_average": load,
                                                           "summary": rows, "runs": runs}, indent=2))  # fmt: skip
    (args.out / "train_image.md").write_text(markdown(rows, command, load))
    print(markdown(rows, command, load))


if __name__ == "__main__":
    main()
