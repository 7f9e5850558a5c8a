"""The image pipeline in-process: decoding any size and format, pixel arrays, and every bad-input path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.artifact import Manifest
from handlers.tasks import load_pipeline
from handlers.tasks.image import ImageClassifier
from scripts.serving.samples import digit_png


@pytest.fixture(scope="module")
def pipeline(digits_artifact):
    return load_pipeline(digits_artifact)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_held_out_pngs_are_classified(pipeline, held_out_digits):
    images, labels = held_out_digits
    answers = pipeline.handle_json([digit_png(x) for x in images[:100]])
    predicted = [int(body["label"]) for status, body in answers if status == 200]
    assert len(predicted) == 100
    assert np.mean(np.array(predicted) == labels[:100]) >= 0.95


def test_png_of_any_size_and_jpeg_and_pixels_agree(pipeline, held_out_digits):
    pixels = held_out_digits[0][3]
    png_small, png_large = digit_png(pixels, scale=1), digit_png(pixels, scale=25)
    jpeg = encode(Image.open(io.BytesIO(png_large)).convert("RGB"), "JPEG")
    answers = pipeline.handle_json([png_small, png_large, jpeg, {"pixels": pixels.tolist()}])
    assert {status for status, _ in answers} == {200}
    assert len({body["label"] for _, body in answers}) == 1
    assert answers[0][1]["probability"] == pytest.approx(answers[1][1]["probability"], abs=1e-6)


def test_answer_shape(pipeline, held_out_digits):
    (status, body) = pipeline.handle_json([{"pixels": held_out_digits[0][0].tolist()}])[0]
    assert status == 200 and set(body) == {"label", "probability", "top_k"}
    assert len(body["top_k"]) == 3 and body["top_k"][0]["label"] == body["label"]
    assert body["top_k"][0]["probability"] >= body["top_k"][1]["probability"] >= body["top_k"][2]["probability"]
    json.dumps(body)  # JSON-safe


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (b"\x89PNG\r\n\x1a\n garbage", 400, "could not decode the image"),
        (b"", 400, "the image is empty"),
        (b"{not json", 400, "not valid JSON"),
        ({"pixels": [[1, 2], [3]]}, 400, "numeric array of shape [8, 8]"),
        ({"pixels": [[0] * 8] * 7}, 400, "shape [7, 8]; expected [8, 8]"),
        ({"pixels": [[float("nan")] * 8] * 8}, 400, "NaN or infinite"),
        ({"pixels": [[17] * 8] * 8}, 400, "must lie in [0, 16]"),
        ({"image": "..."}, 400, '{"pixels"'),
    ],
)
def test_bad_inputs_name_the_problem(pipeline, held_out_digits, body, status, fragment):
    good = digit_png(held_out_digits[0][0])
    answers = pipeline.handle_json([good, body, good])
    assert answers[1][0] == status and fragment in answers[1][1]["error"]["message"]
    assert answers[0][0] == answers[2][0] == 200


def test_truncated_png_is_a_400(pipeline, held_out_digits):
    png = digit_png(held_out_digits[0][0], scale=40)
    (status, body) = pipeline.handle_json([png[: len(png) // 2]])[0]
    assert status == 400 and "could not decode the image" in body["error"]["message"]


def test_oversized_image_is_413_before_decoding(pipeline):
    huge = encode(Image.new("L", (5000, 5000), color=255), "PNG")  # 25 Mpx, compresses to a few KB
    (status, body) = pipeline.handle_json([huge])[0]
    assert status == 413 and "5000x5000" in body["error"]["message"]


def test_triton_inputs_image_or_pixels(pipeline, held_out_digits):
    images = held_out_digits[0][:2]
    pngs = np.array([[digit_png(x)] for x in images], dtype=np.object_)
    by_image, by_pixels, both = pipeline.handle_tensors(
        [{"IMAGE": pngs}, {"PIXELS": images.astype(np.float32)}, {"IMAGE": pngs, "PIXELS": images}]
    )
    assert by_image["PROBABILITIES"].shape == (2, 10) and by_image["LABEL"].shape == (2, 1)
    np.testing.assert_array_equal(by_image["LABEL"], by_pixels["LABEL"])
    assert both.http_status == 400 and "exactly one of" in both.message


def reference_pixels(data: bytes, channels: int, size: tuple[int, int], resize: str, invert: bool) -> np.ndarray:
    """Pillow's plain chain, every step taken: convert, resize (shorter side first, then centre crop), 0..1."""
    mode, (height, width) = ("L" if channels == 1 else "RGB"), size
    image = Image.open(io.BytesIO(data))
    target = (width, height)
    if resize == "shorter_side":
        shorter = max(height, width)
        w, h = image.size
        target = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    image.draft(mode, target)
    image = image.convert(mode).resize(target, Image.Resampling.BOX)
    if resize == "shorter_side":
        left, top = round((image.width - width) / 2), round((image.height - height) / 2)
        image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels if channels == 1 else pixels.transpose(2, 0, 1)).reshape(channels, height, width)
    return 1.0 - pixels if invert else pixels


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resize", ["plain", "shorter_side"])
def test_decoding_skips_no_step_that_changes_the_pixels(channels, resize):
    """The decoder leaves out a conversion or a resize only where it would change nothing: for images already in
    the model's mode or size and for every other mode and size, its pixels are exactly Pillow's plain chain's."""
    size = (6, 8)  # height, width
    preprocess = {"channels": channels, "height": size[0], "width": size[1], "resize": resize, "invert": True}
    decoder = ImageClassifier(Manifest("t", "image_classification", {}, ["a"], preprocess), Path("."))
    mean, std = np.full((channels, 1, 1), 0.5, np.float32), np.full((channels, 1, 1), 0.25, np.float32)
    normalising = ImageClassifier(Manifest("t", "image_classification", {}, ["a"], {
        **preprocess, "mean": [0.5] * channels, "std": [0.25] * channels}), Path("."))  # fmt: skip
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    images = [rgb.convert(mode) for mode in ("L", "RGB", "RGBA", "LA", "P", "1", "I;16")]
    images += [img.resize(s) for img in images[:2] for s in [(8, 6), (6, 8), (8, 10), (10, 6), (16, 12), (7, 5)]]
    encoded = [encode(img, "PNG") for img in images] + [encode(rgb, "JPEG"), encode(rgb.resize((256, 200)), "JPEG")]
    for data in encoded:
        expected = reference_pixels(data, channels, size, resize, invert=True)
        got = decoder.preprocess(data)  # mean 0, std 1: the decoded pixels themselves
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.array_equal(got, expected), Image.open(io.BytesIO(data)).mode
        assert np.array_equal(normalising.preprocess(data), (expected - mean) / std)
