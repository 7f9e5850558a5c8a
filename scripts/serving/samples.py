"""Send sample requests to the running servers and print the answers (the Quick start's last step).

    .venv/bin/python -m scripts.serving.samples [--torchserve http://127.0.0.1:8080] [--triton-http 127.0.0.1:8000]

TorchServe's inference key is read from ``key_file.json`` in the repository root, where the Quick start runs it;
Triton's access key (needed only with ``maas serve start --protect-inference``) from ``run/triton_key.json``.
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
from PIL import Image

from scripts import REPO_ROOT
from scripts.serving.client import TorchServeClient, TritonClient
from scripts.serving.keys import read_inference_key, read_triton_key
from scripts.serving.lm_samples import print_chats, print_streams
from scripts.serving.openai_process import read_openai_key
from scripts.training.train_digits import PIXEL_MAX, digits_split

SENTENCE = "A gorgeous, witty and deeply moving film; the best I have seen this year."
LANGUAGE_MODEL = "demo-lm"  # maas train lm --out artifacts/demo-lm: streamed when it is in the model store


def digit_png(pixels: np.ndarray, scale: int = 4) -> bytes:
    """Render an 8x8 digit (0..16, light ink) as a dark-on-light PNG, ``scale`` times larger, as a user would send."""
    grey = (255 - np.asarray(pixels) * 255 / PIXEL_MAX).round().astype(np.uint8)
    image = Image.fromarray(grey).resize((grey.shape[1] * scale, grey.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def triton_bytes_input(module, name: str, values: list):
    """A BYTES input of shape [n, 1] (str or bytes items) for tritonclient's http or grpc module."""
    tensor = module.InferInput(name, [len(values), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_).reshape(-1, 1))
    return tensor


def triton_image_input(module, images: list[bytes]):
    return triton_bytes_input(module, "IMAGE", images)


def triton_text_input(module, texts: list):
    return triton_bytes_input(module, "TEXT", texts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torchserve", default="http://127.0.0.1:8080")
    parser.add_argument("--triton-http", default="127.0.0.1:8000")
    parser.add_argument("--triton-grpc", default="127.0.0.1:8001")
    parser.add_argument("--openai", default="http://127.0.0.1:9000/v1", help="the OpenAI frontend over Triton")
    args = parser.parse_args(argv)
    if not (REPO_ROOT / "key_file.json").is_file():  # TorchServe writes it at start
        raise SystemExit(f"no {REPO_ROOT / 'key_file.json'}: TorchServe is not running from this checkout; start "
                         "the servers first: maas serve start")  # fmt: skip

    _, x_test, _, y_test = digits_split()
    png = digit_png(x_test[0])
    (REPO_ROOT / "artifacts").mkdir(exist_ok=True)
    (REPO_ROOT / "artifacts" / "sample_digit.png").write_bytes(png)  # for the curl example the Quick start prints
    print(f"sample: a held-out handwritten digit (true label {y_test[0]}), sent as a {len(png)}-byte 32x32 PNG\n")

    # The retrying clients (scripts/serving/client.py): a worker restart or a stub reload costs a retry, not an error.
    torchserve = TorchServeClient(args.torchserve, read_inference_key(REPO_ROOT))
    access = read_triton_key()
    triton = {
        "HTTP": TritonClient(args.triton_http, "http", access),
        "gRPC": TritonClient(args.triton_grpc, "grpc", access),
    }
    image = {"IMAGE": np.array([[png]], dtype=np.object_)}
    response = torchserve.predict("digits", content=png)
    print(f"TorchServe REST  -> HTTP {response.status_code} {json.dumps(response.json())}")
    for name, client in triton.items():
        print(f"Triton {name:<9} -> {describe(client.infer('digits', image))}")

    print(f'\nsample: the sentence "{SENTENCE}"\n')
    response = torchserve.predict("sentiment", json={"text": SENTENCE})
    print(f"TorchServe REST  -> HTTP {response.status_code} {json.dumps(response.json())}")
    text = {"TEXT": np.array([[SENTENCE.encode()]], dtype=np.object_)}
    for name, client in triton.items():
        print(f"Triton {name:<9} -> {describe(client.infer('sentiment', text))}")

    if (REPO_ROOT / "model_store" / f"{LANGUAGE_MODEL}.mar").is_file():
        print_streams(LANGUAGE_MODEL, args.torchserve, read_inference_key(REPO_ROOT), args.triton_http,
                      args.triton_grpc, access)  # fmt: skip
        print_chats(LANGUAGE_MODEL, f"{args.torchserve}/predictions/{LANGUAGE_MODEL}/1.0/v1",
                    read_inference_key(REPO_ROOT), args.openai, read_openai_key())  # fmt: skip


def describe(result) -> str:
    label = result.as_numpy("LABEL")[0, 0].decode()
    return f"label {label}, probability {result.as_numpy('PROBABILITY')[0, 0]:.6f}"


if __name__ == "__main__":
    main()
