"""Image classification: encoded images (PNG/JPEG/... of any size) or pixel arrays in, class probabilities out.

Contracts
* TorchServe: the raw image bytes as the body, or JSON ``{"pixels": [[...], ...]}`` (H x W, or C x H x W) in
  the model's own pixel scale (0..``pixel_max``). Answer: ``{"label", "probability", "top_k"}``.
* Triton: ``IMAGE`` (BYTES, one encoded image per row) or ``PIXELS`` (FP32 ``[n, H, W]`` or ``[n, C, H, W]``);
  outputs ``LABEL``, ``PROBABILITY``, ``PROBABILITIES``.

Encoded images are converted to what the model was trained on, as recorded in the manifest's ``preprocess``:
grey or RGB (``channels``); resized (``resize``) to H x W (``plain``), or with the shorter side to
``resize_shorter`` then centre-cropped to H x W (``shorter_side``, torchvision's classic Resize + CenterCrop);
with an area (``box``, default) or ``bilinear`` filter (``interpolation``); inverted when the training data had
light ink on dark (``invert``); and, when the manifest gives ``mean`` and ``std`` (per channel, on the 0..1 scale),
normalised as ``(x - mean) / std``. JSON ``pixels`` skip the resizing (they must have the model's shape) but not
the rest.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from handlers.artifact import Manifest
from handlers.classification import Classifier, load_torch_model
from handlers.errors import InvalidInput, PayloadTooLarge
from handlers.open_inference import decode_json_body
from handlers.pipeline import Request, TensorSpec

# Decoding is refused above this many pixels (a decompression bomb guard), unless the manifest says otherwise.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
RESIZE_POLICIES = ("plain", "shorter_side")
FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}


class ImageClassifier(Classifier):
    MODEL_INPUTS = {"pixels": ("batch",)}

    def __init__(self, manifest: Manifest, artifact_dir: Path, device: str = "cpu"):
        super().__init__(manifest, artifact_dir, device)
        pre = manifest.preprocess
        self.channels = int(pre.get("channels", 1))
        self.height, self.width = int(pre["height"]), int(pre["width"])
        self.pixel_max = float(pre.get("pixel_max", 255.0))
        self.invert = bool(pre.get("invert", False))
        self.max_image_pixels = int(pre.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        self.resize = pre.get("resize", "plain")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"preprocess.resize must be one of {RESIZE_POLICIES}, not {self.resize!r}")
        self.resize_shorter = int(pre.get("resize_shorter", max(self.height, self.width)))
        self.filter = FILTERS[pre.get("interpolation", "box")]
        shape = (self.channels, 1, 1)
        self.mean = np.asarray(pre.get("mean", [0.0] * self.channels), dtype=np.float32).reshape(shape)
        self.std = np.asarray(pre.get("std", [1.0] * self.channels), dtype=np.float32).reshape(shape)
        self.normalised = bool((self.mean != 0).any() or (self.std != 1).any())  # else (x - 0) / 1: x, bit for bit

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        hw = (self.height, self.width)
        return hw if self.channels == 1 else (self.channels, *hw)

    # ---- wire formats -------------------------------------------------------------------------------
    def parse_json(self, body: Any) -> Request:
        if isinstance(body, (bytes, bytearray)) and body.lstrip()[:1] not in (b"{", b"["):
            return Request([bytes(body)], single=True)
        body = decode_json_body(body)
        if not isinstance(body, dict) or "pixels" not in body:
            raise InvalidInput('send the image bytes as the body, or JSON {"pixels": [[...]]}')
        return Request([body["pixels"]], single=True)

    def parse_tensors(self, tensors: dict[str, np.ndarray]) -> Request:
        given = [name for name in ("IMAGE", "PIXELS") if name in tensors]
        if len(given) != 1:
            raise InvalidInput("send exactly one of the inputs IMAGE (encoded bytes) or PIXELS (FP32)")
        if given[0] == "IMAGE":
            return Request([_as_bytes(v) for v in tensors["IMAGE"].reshape(-1)])
        return Request(list(tensors["PIXELS"]))

    def client_body(self, row: Any) -> Any:
        return bytes(row) if isinstance(row, (bytes, bytearray)) else {"pixels": np.asarray(row).tolist()}

    def client_tensors(self, rows: list[Any]) -> dict[str, np.ndarray]:
        if all(isinstance(row, (bytes, bytearray)) for row in rows):
            return {"IMAGE": np.array([bytes(row) for row in rows], dtype=np.object_).reshape(-1, 1)}
        return {"PIXELS": np.array(rows, dtype=np.float32)}

    @classmethod
    def input_specs(cls, manifest: Manifest) -> list[TensorSpec]:
        pre = manifest.preprocess
        channels, hw = int(pre.get("channels", 1)), (int(pre["height"]), int(pre["width"]))
        return [
            TensorSpec("IMAGE", "TYPE_STRING", (1,), optional=True),
            TensorSpec("PIXELS", "TYPE_FP32", hw if channels == 1 else (channels, *hw), optional=True),
        ]

    # ---- the model ----------------------------------------------------------------------------------
    def preprocess(self, row: Any) -> np.ndarray:
        pixels = self._decode(row) if isinstance(row, bytes) else self._validate_pixels(row)
        pixels = pixels.reshape(self.channels, self.height, self.width)
        return (pixels - self.mean) / self.std if self.normalised else pixels

    def collate(self, features: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.from_numpy(np.stack(features)).to(self.device)}

    @classmethod
    def eager_module(cls, manifest: Manifest, artifact_dir: Path) -> torch.nn.Module:
        return load_torch_model(manifest, artifact_dir)

    def _decode(self, data: bytes) -> np.ndarray:
        """Encoded image -> float32 in [0, 1], the model's size, channels and polarity."""
        if not data:
            raise InvalidInput("the image is empty")
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > self.max_image_pixels:
                raise PayloadTooLarge(
                    f"the image is {image.width}x{image.height}; at most {self.max_image_pixels} pixels are accepted"
                )
            mode = "L" if self.channels == 1 else "RGB"
            image.draft(mode, self._resized(image.size))  # cheap JPEG downscale
            # Each step only where it changes the image: a copy of a tiny image costs as much as its model's row
            if image.mode != mode:
                image = image.convert(mode)
            if image.size != (size := self._resized(image.size)):
                image = image.resize(size, self.filter)
            if self.resize == "shorter_side":
                left, top = round((image.width - self.width) / 2), round((image.height - self.height) / 2)
                image = image.crop((left, top, left + self.width, top + self.height))
            raw = image.tobytes()  # decodes what is still undecoded: its errors are the client's
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"the image is too large to decode: {exc}") from None
        except UnidentifiedImageError:
            raise InvalidInput("could not decode the image: not a PNG, JPEG or other format Pillow reads") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidInput(f"could not decode the image: {exc}") from None
        pixels = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) / 255.0  # asarray(image) is slower
        if self.channels != 1:
            pixels = pixels.reshape(self.height, self.width, self.channels).transpose(2, 0, 1)
        return 1.0 - pixels if self.invert else pixels

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after resizing, before any crop."""
        if self.resize == "plain":
            return self.width, self.height
        width, height = size
        if width <= height:
            return self.resize_shorter, int(self.resize_shorter * height / width)
        return int(self.resize_shorter * width / height), self.resize_shorter

    def _validate_pixels(self, row: Any) -> np.ndarray:
        """Pixel values in the model's own scale (0..pixel_max) -> float32 in [0, 1]."""
        try:  # float64 first: a value beyond float32 stays finite, and is refused by the range check
            pixels = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInput(f"pixels must be a numeric array of shape {list(self.pixel_shape)}") from None
        if pixels.shape != self.pixel_shape:
            raise InvalidInput(f"pixels have shape {list(pixels.shape)}; expected {list(self.pixel_shape)}")
        if not (pixels.min() >= 0 and pixels.max() <= self.pixel_max):  # NaN fails both comparisons
            if not np.isfinite(pixels).all():
                raise InvalidInput("pixels contain NaN or infinite values")
            raise InvalidInput(f"pixel values must lie in [0, {self.pixel_max:g}]")
        return (pixels / self.pixel_max).astype(np.float32)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value)
    raise InvalidInput(f"IMAGE items must be encoded image bytes, got {type(value).__name__}")
