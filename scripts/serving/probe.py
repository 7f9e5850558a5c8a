"""Deep health probes: one real request per model, in each server's wire form, made at build time.

The build writes ``probe.json`` beside each model's entry point (in the ``.mar`` and in the Triton model's version
directory) from the first of the artifact's self-check rows: a held-out row the model was verified on. A health
check (``scripts/serving/health.py``) sends it and counts the model healthy only when it is answered, so a model
whose worker or stub is dead reads as down even while the server's own readiness says 200.

    {"model": "digits", "torchserve": {"json": {...}} | {"base64": "..."},
     "triton": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1], "base64": ["..."]} | {..., "data": [...]}]}
"""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from handlers.artifact import Manifest, decode_row
from handlers.self_check import SELF_CHECK_NAME
from scripts.deploy.maas_probe import torchserve_body  # noqa: F401 (standard library only: a pod runs it alone)

PROBE_NAME = "probe.json"


def make_probe(artifact_dir: Path, manifest: Manifest) -> dict | None:
    """The probe for an artifact; None when it has no self-check rows or its pipeline has no client forms."""
    from handlers.tasks import load_pipeline

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


def write_probe(artifact_dir: Path, manifest: Manifest, destination: Path) -> None:
    probe = make_probe(artifact_dir, manifest)
    if probe is not None:
        (destination / PROBE_NAME).write_text(json.dumps(probe) + "\n")


def encode_tensor(name: str, array: np.ndarray) -> dict:
    record = {"name": name, "datatype": np_to_triton_dtype(array.dtype), "shape": list(array.shape)}
    if array.dtype == np.object_:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return {**record, "base64": [base64.b64encode(v).decode() for v in items]}
    return {**record, "data": array.reshape(-1).tolist()}


def decode_tensor(record: dict) -> np.ndarray:
    if "base64" in record:
        values = [base64.b64decode(v) for v in record["base64"]]
        return np.array(values, dtype=np.object_).reshape(record["shape"])
    return np.array(record["data"], dtype=triton_to_np_dtype(record["datatype"])).reshape(record["shape"])


def triton_inputs(probe: dict) -> dict[str, np.ndarray]:
    return {record["name"]: decode_tensor(record) for record in probe["triton"]}


def torchserve_probes(model_store: Path) -> dict[str, dict | None]:
    """Each archive's probe, by model name (None for an archive built without one)."""
    probes = {}
    for mar in sorted(Path(model_store).glob("*.mar")):
        with zipfile.ZipFile(mar) as archive:
            names = set(archive.namelist())
            probes[mar.stem] = json.loads(archive.read(PROBE_NAME)) if PROBE_NAME in names else None
    return probes


def triton_probes(repository: Path) -> dict[str, dict | None]:
    """Each Triton model's probe, by model name (None for an ensemble or a model built without one)."""
    probes = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        found = sorted(config.parent.glob(f"*/{PROBE_NAME}"))
        probes[config.parent.name] = json.loads(found[-1].read_text()) if found else None
    return probes
