"""Write each model's deep health probe at build time: one real request per model, in each server's wire form.

The build writes ``probe.json`` beside each model's entry point (in the ``.mar`` and in the Triton model's version
directory) from the first of the artifact's self-check rows: a held-out row the model was verified on. The format,
and the reading side that sends it, are in ``scripts/serving/probe.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from handlers.artifact import HELD_OUT_NAME, Manifest, decode_row
from handlers.self_check import SELF_CHECK_NAME
from handlers.tasks import load_pipeline
from scripts.packaging.generation_build import is_language_model
from scripts.serving.probe import GENERATE, PROBE_NAME


def make_probe(artifact_dir: Path, manifest: Manifest) -> dict | None:
    """The probe for an artifact; None when it has no self-check rows or its pipeline has no client forms."""
    if is_language_model(manifest):
        return language_model_probe(artifact_dir, manifest)
    self_check = Path(artifact_dir) / SELF_CHECK_NAME
    if not self_check.exists():
        return None
    row = decode_row(json.loads(self_check.read_text())["rows"][0])
    pipeline = load_pipeline(artifact_dir, manifest=manifest, with_model=False)
    try:
        body, tensors = pipeline.client_body(row), pipeline.client_tensors([row])
    except NotImplementedError:
        return None
    wire = {"base64": base64.b64encode(body).decode()} if isinstance(body, bytes) else {"json": body}
    return {"model": manifest.name, "torchserve": wire, "triton": [encode_tensor(n, a) for n, a in tensors.items()]}


def language_model_probe(artifact_dir: Path, manifest: Manifest) -> dict:
    """One greedy token of the first recorded prompt."""
    record = json.loads((Path(artifact_dir) / HELD_OUT_NAME).read_text(encoding="utf-8").splitlines()[0])
    prompt, one_token = record["input"]["prompt"], {"max_tokens": 1, "temperature": 0}
    return {"model": manifest.name, "torchserve": {"json": {"text_input": prompt, **one_token}},
            GENERATE: {"text_input": prompt, "parameters": one_token}}  # fmt: skip


def write_probe(artifact_dir: Path, manifest: Manifest, destination: Path) -> None:
    probe = make_probe(artifact_dir, manifest)
    if probe is not None:
        (destination / PROBE_NAME).write_text(json.dumps(probe) + "\n")


def encode_tensor(name: str, array: np.ndarray) -> dict:
    """A tensor as the probe holds it; ``scripts.serving.probe.decode_tensor`` reads it back."""
    record = {"name": name, "datatype": np_to_triton_dtype(array.dtype), "shape": list(array.shape)}
    if array.dtype == np.object_:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return {**record, "base64": [base64.b64encode(v).decode() for v in items]}
    return {**record, "data": array.reshape(-1).tolist()}
