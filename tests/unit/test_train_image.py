"""``maas train image --data DIR``: a folder of the user's images becomes an artifact served like any other."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.artifact import read_held_out, read_manifest
from handlers.tasks import load_pipeline
from scripts.cli import main as maas
from scripts.packaging.acceptance import lower_bound_rate
from scripts.training.image_recipe import Recipe, augment
from scripts.training.sample_images import write_shapes
from scripts.training.text_data import DataError
from scripts.training.train_image import train

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def write_folder(root, per_label: int = 20, mode: str = "RGB"):
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            size = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            fmt = "JPEG" if i % 3 == 0 else "PNG"
            buffer = io.BytesIO()
            Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
            (root / label / f"{i}.{fmt.lower()}").write_bytes(buffer.getvalue())
    return root


def test_a_folder_of_images_trains_and_serves(tmp_path):
    data = write_folder(tmp_path / "photos")
    assert maas(["train", "image", "--data", str(data), "--out", str(tmp_path / "colours"), "--epochs", "4"]) == 0
    manifest = read_manifest(tmp_path / "colours")
    assert manifest.labels == sorted(COLOURS) and manifest.preprocess["channels"] == 3
    assert len(manifest.preprocess["mean"]) == 3 and manifest.metrics["held_out_rows"] == 12
    rows, targets = read_held_out(tmp_path / "colours")
    answers = load_pipeline(tmp_path / "colours").handle_json(rows)  # the served path, held-out rows as sent
    served = np.mean([a["label"] == t for (_, a), t in zip(answers, targets, strict=True)])
    assert served == pytest.approx(manifest.metrics["held_out_accuracy"])  # training scored what serving does


def test_the_default_recipe_learns_shapes_and_serves_what_it_measured(tmp_path, capsys):
    """Shapes (grey levels: in random colours a colour network needs far more images, see the bench; 40-95 px, PNG and
    JPEG): the held-out accuracy's 99% lower bound is above chance (1/3), and the served pipeline answers the
    held-out files as training scored them."""
    data = write_shapes(tmp_path / "shapes", per_label=40, colour=False)
    manifest = train(data, tmp_path / "shapes-model", epochs=30)
    metrics = manifest.metrics
    assert manifest.model["architecture"] == "resnet_stages" and manifest.model["config"]["widths"] == [16, 32, 64, 128]
    right, n = round(metrics["held_out_accuracy"] * metrics["held_out_rows"]), metrics["held_out_rows"]
    assert n == 24 and lower_bound_rate(right, n) > 1 / 3, metrics
    assert metrics["train_rows"] + metrics["val_rows"] == 96 and 0 <= metrics["train_accuracy"] <= 1
    rows, targets = read_held_out(tmp_path / "shapes-model")
    answers = load_pipeline(tmp_path / "shapes-model").handle_json(rows)
    served = np.mean([a["label"] == t for (_, a), t in zip(answers, targets, strict=True)])
    assert served == pytest.approx(metrics["held_out_accuracy"], abs=1e-3)
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == metrics["epochs_run"] and all("train acc" in e and "val acc" in e for e in epochs)
    assert "train accuracy" in out and "held-out accuracy" in out


def test_augmentation_keeps_the_shape_and_flips_only_when_allowed():
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert augment(x, Recipe(), generator).shape == x.shape
    # a full-size crop, no jitter: the image itself, mirrored or not
    keep = Recipe(min_scale=1.0, max_ratio=1.0, jitter=0.0, flip=False)
    torch.testing.assert_close(augment(x, keep, generator), x, atol=1e-3, rtol=0)
    flipped = augment(x.repeat(16, 1, 1, 1), Recipe(min_scale=1.0, max_ratio=1.0, jitter=0.0), generator)
    mirrored = [bool(torch.allclose(f, x[i % 2].flip(2), atol=1e-3)) for i, f in enumerate(flipped)]
    assert 0 < sum(mirrored) < len(mirrored)


def test_a_trained_network_is_the_base_of_another(tmp_path):
    """``--base ARTIFACT``: the base's network minus its head starts the training; its input (size, channels, mean,
    std) is kept, so the new model is served with the preprocessing its backbone learnt on."""
    base = train(write_folder(tmp_path / "photos", per_label=8), tmp_path / "base", size=(16, 16), epochs=1)
    data = write_shapes(tmp_path / "shapes", per_label=6, colour=False)
    assert maas(["train", "image", "--data", str(data), "--out", str(tmp_path / "tuned"), "--epochs", "1",
                 "--base", str(tmp_path / "base")]) == 0  # fmt: skip
    tuned = read_manifest(tmp_path / "tuned")
    assert tuned.preprocess == base.preprocess and tuned.labels == ["circle", "square", "triangle"]
    assert tuned.model["config"]["widths"] == base.model["config"]["widths"] == [16, 32, 64]
    assert tuned.metrics["base"] == str(tmp_path / "base")
    small = train(write_folder(tmp_path / "more", per_label=2), tmp_path / "small", epochs=1, recipe="small")
    with pytest.raises(DataError, match="resnet_stages"):
        train(data, tmp_path / "no", base=tmp_path / "small")
    assert small.model["architecture"] == "small_resnet"


def test_the_first_recipe_is_still_there(tmp_path):
    data = write_folder(tmp_path / "photos", per_label=5)
    manifest = train(data, tmp_path / "small", epochs=1, recipe="small")
    assert manifest.model["architecture"] == "small_resnet" and manifest.metrics["recipe"] == "small"


def test_grey_images_give_a_grey_model(tmp_path):
    data = write_folder(tmp_path / "grey", per_label=5, mode="L")
    manifest = train(data, tmp_path / "out", epochs=1)
    assert manifest.preprocess["channels"] == 1


def test_bad_folders_are_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="at least two; found 0"):
        train(tmp_path, tmp_path / "out")
    data = write_folder(tmp_path / "photos", per_label=2)
    (data / "red" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: could not decode the image"):
        train(data, tmp_path / "out")
    (data / "red" / "broken.png").unlink()
    (data / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        train(data, tmp_path / "out")


def test_the_bench_pools_seeds_into_one_interval():
    from scripts.benchmarking.train_image_bench import markdown, summarise

    runs = [{"folder": "shapes", "method": "stages", "seed": seed, "seconds": 10.0, "held_out_accuracy": 0.5,
             "train_accuracy": 1.0, "held_out_rows": 72} for seed in (0, 1)]  # fmt: skip
    [row] = summarise(runs)
    assert row["held_out_rows"] == 144 and row["held_out_accuracy"] == 0.5 and row["ci95"][0] < 0.5 < row["ci95"][1]
    assert "| shapes | stages | 0.500 |" in markdown([row], "maas bench train-image", [1.0, 1.0])


def test_a_pretrained_backbone_is_fine_tuned_and_served_with_its_own_preprocessing(tmp_path):
    """``--base efficientnet-lite0``: ImageNet weights from the installed package, fine-tuned on coloured shapes
    (random colours: hard for a network trained from scratch on so few images, see the bench), saved as TorchScript
    and served with the backbone's preprocessing (mean 127/255, std 128/255, shorter-side resize + centre crop)."""
    data = write_shapes(tmp_path / "shapes", per_label=40)
    manifest = train(data, tmp_path / "tuned", size=(64, 64), epochs=5, base="efficientnet-lite0")
    assert manifest.model["format"] == "torchscript" and (tmp_path / "tuned" / "model.pt").is_file()
    pre = manifest.preprocess
    assert pre["resize"] == "shorter_side" and pre["resize_shorter"] == 73 and pre["channels"] == 3
    assert pre["mean"] == [pytest.approx(127 / 255)] * 3 and pre["std"] == [pytest.approx(128 / 255)] * 3
    metrics = manifest.metrics
    right, n = round(metrics["held_out_accuracy"] * metrics["held_out_rows"]), metrics["held_out_rows"]
    assert n == 24 and lower_bound_rate(right, n) > 1 / 3, metrics
    rows, targets = read_held_out(tmp_path / "tuned")
    answers = load_pipeline(tmp_path / "tuned").handle_json(rows)
    served = np.mean([a["label"] == t for (_, a), t in zip(answers, targets, strict=True)])
    assert served == pytest.approx(metrics["held_out_accuracy"], abs=1e-3)
    with pytest.raises(DataError, match="takes RGB images"):
        train(data, tmp_path / "grey", channels=1, base="efficientnet-lite0")
