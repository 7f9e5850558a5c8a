"""Send sample requests to the running servers and print the answers (the Quick start's last step).

    .venv/bin/python -m scripts.samples [--torchserve http://127.0.0.1:8080] [--triton-http 127.0.0.1:8000]

TorchServe's inference key is read from ``key_file.json`` in the repository root, where the Quick start runs it.
"""

from __future__ import annotations

import argparse
import io
import json

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image

from scripts import REPO_ROOT
from scripts.servers import bearer, read_inference_key
from scripts.train_digits import PIXEL_MAX, digits_split


def digit_png(pixels: np.ndarray, scale: int = 4) -> bytes:
    """Render an 8x8 digit (0..16, light ink) as a dark-on-light PNG, ``scale`` times larger, as a user would send."""
    grey = (255 - np.asarray(pixels) * 255 / PIXEL_MAX).round().astype(np.uint8)
    image = Image.fromarray(grey).resize((grey.shape[1] * scale, grey.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def triton_image_input(module, images: list[bytes]):
    """An ``IMAGE`` BYTES input of shape [n, 1] for tritonclient's http or grpc module."""
    tensor = module.InferInput("IMAGE", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torchserve", default="http://127.0.0.1:8080")
    parser.add_argument("--triton-http", default="127.0.0.1:8000")
    parser.add_argument("--triton-grpc", default="127.0.0.1:8001")
    args = parser.parse_args()

    _, x_test, _, y_test = digits_split()
    png = digit_png(x_test[0])
    (REPO_ROOT / "artifacts").mkdir(exist_ok=True)
    (REPO_ROOT / "artifacts" / "sample_digit.png").write_bytes(png)  # for the curl example the Quick start prints
    print(f"sample: a held-out handwritten digit (true label {y_test[0]}), sent as a {len(png)}-byte 32x32 PNG\n")

    response = httpx.post(
        f"{args.torchserve}/predictions/digits", content=png, headers=bearer(read_inference_key(REPO_ROOT))
    )
    print(f"TorchServe REST  -> HTTP {response.status_code} {json.dumps(response.json())}")

    for name, module, url in (("HTTP", triton_http, args.triton_http), ("gRPC", triton_grpc, args.triton_grpc)):
        result = module.InferenceServerClient(url).infer("digits", [triton_image_input(module, [png])])
        label = result.as_numpy("LABEL")[0, 0].decode()
        print(f"Triton {name:<9} -> label {label}, probability {result.as_numpy('PROBABILITY')[0, 0]:.6f}")


if __name__ == "__main__":
    main()
