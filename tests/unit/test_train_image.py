"""``maas train image --data DIR``: a folder of the user's images becomes an artifact served like any other."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from handlers.artifact import read_held_out, read_manifest
from handlers.tasks import load_pipeline
from scripts.cli import main as maas
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
