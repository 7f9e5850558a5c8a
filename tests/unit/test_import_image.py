"""``maas import torchscript|onnx``: a user's own image classifier answers as it does with its own preprocessing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from handlers.artifact import read_held_out, read_manifest
from handlers.tasks import load_pipeline
from scripts.cli import main as maas
from scripts.packaging.export import export
from scripts.training.import_hf import ImportRefused
from scripts.training.import_image import import_image
from tests.fixtures.image_import import LABELS, MEAN, SIZE, STD, photo, reference_probabilities

IMAGES = [photo(120, 90, 1), photo(50, 130, 2, "JPEG"), photo(64, 56, 3), photo(300, 300, 4)]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_imported_image_model_answers_as_with_its_own_preprocessing(image_imports, image_model, fmt):
    manifest = read_manifest(image_imports[fmt])
    assert manifest.model["format"] == fmt and manifest.labels == LABELS
    assert manifest.preprocess["mean"] == MEAN and manifest.preprocess["resize"] == "shorter_side"
    pipeline = load_pipeline(image_imports[fmt])  # with its self-check
    answers = pipeline.handle_json(IMAGES + [b"not an image"])
    assert [status for status, _ in answers] == [200] * len(IMAGES) + [400]
    got = np.array([[next(e["probability"] for e in a["top_k"] if e["label"] == lab) for lab in LABELS]
                    for _, a in answers[:-1]])  # fmt: skip
    np.testing.assert_allclose(got, reference_probabilities(image_model, IMAGES), atol=1e-5)
    pixels = np.random.default_rng(0).integers(0, 256, (3, *SIZE)).tolist()  # JSON pixels of the model's shape
    assert pipeline.handle_json([{"pixels": pixels}])[0][0] == 200


def test_synthetic_held_out_rows_are_kept_and_the_file_is_served_as_it_came(image_imports, tmp_path):
    rows, targets = read_held_out(image_imports["torchscript"])
    assert len(rows) == 16 and all(isinstance(row, bytes) for row in rows) and set(targets) <= set(LABELS)
    with pytest.raises(ValueError, match="export from the eager one"):
        export(image_imports["torchscript"], "onnx", out=tmp_path / "x")  # already a file format: served as it is


def test_held_out_folder_measures_accuracy(image_model, image_imports, tmp_path):
    held_out = tmp_path / "val"
    want = reference_probabilities(image_model, IMAGES).argmax(1)
    for i, (image, label) in enumerate(zip(IMAGES, want, strict=True)):
        (held_out / LABELS[label]).mkdir(parents=True, exist_ok=True)
        (held_out / LABELS[label] / f"{i}.png").write_bytes(image)
    source = image_imports["onnx"] / "model.onnx"
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    command = ["import", "onnx", str(source), "--out", str(tmp_path / "a"), "--labels", str(tmp_path / "labels.txt"),
               "--input-size", *map(str, SIZE), "--mean", *map(str, MEAN), "--std", *map(str, STD),
               "--resize-shorter", "72", "--held-out", str(held_out)]  # fmt: skip
    assert maas(command) == 0
    assert read_manifest(tmp_path / "a").metrics["held_out_accuracy"] == 1.0


def test_refusals_name_what_is_wrong(image_imports, tmp_path):
    source, labels = image_imports["torchscript"] / "model.pt", tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    with pytest.raises(ImportRefused, match=r"expected \[16, 3\]: one logit per label"):
        (tmp_path / "three.txt").write_text("a\nb\nc\n")
        import_image("torchscript", source, tmp_path / "a", tmp_path / "three.txt", SIZE, 3)
    with pytest.raises(ImportRefused, match="does not take float32 images of shape \\[16, 1, 56, 64\\]"):
        import_image("torchscript", source, tmp_path / "b", labels, SIZE, 1)
    with pytest.raises(ImportRefused, match="--mean gives 2 values; the model has 3 channels"):
        import_image("torchscript", source, tmp_path / "c", labels, SIZE, 3, mean=[0.5, 0.5])
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    with pytest.raises(ImportRefused, match=r"not labels: \['zebra'\]"):
        import_image("torchscript", source, tmp_path / "d", labels, SIZE, 3, held_out=tmp_path / "val")
    assert not any((tmp_path / d).exists() for d in "abd")
    assert json.loads((image_imports["torchscript"] / "pipeline.json").read_text())["task"] == "image_classification"


def test_by_default_an_image_of_the_input_size_reaches_the_model_unchanged(image_imports, tmp_path):
    """``--resize plain`` is the default: a PNG already H x W is not resized or cropped on its way in."""
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    source = image_imports["onnx"] / "model.onnx"
    command = ["import", "onnx", str(source), "--out", str(tmp_path / "a"), "--labels", str(tmp_path / "labels.txt"),
               "--input-size", *map(str, SIZE)]  # fmt: skip
    assert maas(command) == 0
    pipeline = load_pipeline(tmp_path / "a")
    assert pipeline.manifest.preprocess["resize"] == "plain"
    image = photo(SIZE[1], SIZE[0], 5)
    raw = np.asarray(Image.open(io.BytesIO(image)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    np.testing.assert_array_equal(pipeline.preprocess(image), raw)
    shorter = load_pipeline(image_imports["onnx"])  # imported with shorter_side: resized up, then cropped back
    assert not np.allclose(shorter.preprocess(image) * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None],
                           raw, atol=1e-3)  # fmt: skip
