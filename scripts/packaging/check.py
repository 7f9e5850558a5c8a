"""Try a model's handlers before any server starts: your requests through both adapters, in process.

    maas check ARTIFACT --input FILE [--input FILE ...]
    e.g.  maas check artifacts/digits --input artifacts/sample_digit.png --input broken.json

Each FILE is one request body as a client would POST it to TorchServe: JSON (``.json``, decoded as TorchServe
decodes an ``application/json`` body), text or image bytes. All of them go, as ONE batch, through

* the TorchServe handler (``handlers.torchserve_handler``) with a stand-in for TorchServe's context, and
* the Triton model (``handlers.triton_model``) with a stand-in for ``triton_python_backend_utils``, each body as the
  V2 tensors a client would send for the same rows (``Pipeline.client_tensors``),

and each request's answer or error is printed for both side by side: mix bad requests in to see that each gets its
own error while the others are answered. The artifact is served as it is: check an export by passing its
directory (``artifacts/sentiment.onnx_int8``). The servers themselves are not involved (``maas serve`` runs them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from handlers.artifact import read_manifest
from scripts.packaging.triton_repository import model_config
from scripts.serving.standins import FakeContext, install_fake_pb_utils


def torchserve_side(artifact: Path, bodies: list[Any]) -> list[tuple[int, Any]]:
    from handlers.torchserve_handler import MaasHandler

    with tempfile.TemporaryDirectory() as model_dir:  # TorchServe's unpacked archive: the artifact under artifact/
        (Path(model_dir) / "artifact").symlink_to(artifact.resolve())
        handler, context = MaasHandler(), FakeContext(model_dir)
        handler.initialize(context)
        answers = handler.handle([{"body": body} for body in bodies], context)
    return [(context.statuses.get(i, (200, ""))[0], json.loads(answer)) for i, answer in enumerate(answers)]


def triton_side(artifact: Path, bodies: list[Any]) -> list[Any]:
    """The Triton model's outcome per body: output tensors, an error, or why the body has no tensor form."""
    pb = install_fake_pb_utils()
    from handlers.triton_model import TritonPythonModel

    manifest = read_manifest(artifact)
    # The config the build writes, as the server hands it to the model (JSON with the proto's field names).
    config = MessageToDict(model_config(manifest, artifact, manifest.name, Path(sys.prefix)),
                           preserving_proto_field_name=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as repository:  # a model directory: <repository>/1/artifact
        (Path(repository) / "1").mkdir()
        (Path(repository) / "1" / "artifact").symlink_to(artifact.resolve())
        model = TritonPythonModel()
        model.initialize({"model_config": json.dumps(config), "model_name": manifest.name,
                          "model_repository": repository, "model_version": "1"})  # fmt: skip
    outcomes, requests = [], []
    for body in bodies:
        try:
            tensors = model.pipeline.client_tensors(model.pipeline.parse_json(body).rows)
            outcomes.append(None)
            requests.append(pb.InferenceRequest([pb.Tensor(name, array) for name, array in tensors.items()]))
        except Exception as exc:  # a body that does not parse has no tensor a client could send
            outcomes.append(f"(no Triton request: the body does not parse: {exc})")
    responses = iter(model.execute(requests) if requests else [])
    return [outcome or next(responses) for outcome in outcomes]


def describe_triton(response: Any) -> str:
    if isinstance(response, str):
        return response
    if response.error is not None:
        return f"{response.error.code()}: {response.error.message()}"
    parts = []
    for tensor in response.output_tensors:
        array = tensor.as_numpy()
        values = [v.decode() if isinstance(v, bytes) else round(float(v), 4) for v in array.reshape(-1)[:6]]
        parts.append(f"{tensor.name()} {list(array.shape)} {values}{' ...' if array.size > 6 else ''}")
    return "; ".join(parts)


def read_body(path: Path) -> Any:
    """The body as TorchServe hands it to a handler: decoded for JSON, raw bytes otherwise."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            return json.loads(data)
        except ValueError:
            return data  # TorchServe passes an undecodable JSON body on as bytes
    return data


def check(artifact: Path, inputs: list[Path]) -> list[dict]:
    read_manifest(artifact)  # refused here, naming the user's path (the handlers see it under a temporary one)
    bodies = [read_body(path) for path in inputs]
    torchserve = torchserve_side(artifact, bodies)
    triton = triton_side(artifact, bodies)
    return [
        {"input": str(path), "torchserve": answer, "triton": describe_triton(response)}
        for path, answer, response in zip(inputs, torchserve, triton, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="an artifact directory (trained, imported or exported)")
    parser.add_argument("--input", type=Path, action="append", required=True, help="one request body (repeatable)")
    args = parser.parse_args(argv)
    for i, row in enumerate(check(args.artifact, args.input), 1):
        status, body = row["torchserve"]
        print(f"[{i}] {row['input']}")
        print(f"    TorchServe  {status}  {json.dumps(body)[:300]}")
        print(f"    Triton      {row['triton'][:300]}")


if __name__ == "__main__":
    main()
