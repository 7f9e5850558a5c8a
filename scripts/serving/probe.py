"""Deep health probes: one real request per model, in each server's wire form, made at build time; read here.

The build (``scripts/packaging/probe.py``) writes ``probe.json`` beside each model's entry point (in the ``.mar``
and in the Triton model's version directory) from the first of the artifact's self-check rows: a held-out row the
model was verified on. A health check (``scripts/serving/health.py``) sends it and counts the model healthy only
when it is answered, so a model whose worker or stub is dead reads as down even while the server's own readiness
says 200. A probe's TorchServe request is ``pod_probe.torchserve_body`` (the KServe pod's probe, standard library).

    {"model": "digits", "torchserve": {"json": {...}} | {"base64": "..."},
     "triton": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1], "base64": ["..."]} | {..., "data": [...]}]}

A language model's probe asks for one greedy token of a recorded prompt; on Triton through ``generate`` (``/infer``
refuses a decoupled model): ``{"model", "torchserve": {"json": {...}}, "triton_generate": {...}}``.
"""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import numpy as np
from tritonclient.utils import triton_to_np_dtype

PROBE_NAME = "probe.json"
GENERATE = "triton_generate"
VERSION_HEADER = "X-Model-Version"  # the version that answered, in TorchServe's answers (its handler sets it)
VERSION_FILE = "__v"  # a version beside the first in the model store: <model>__v<N>.mar (maas serve deploy)


def decode_tensor(record: dict) -> np.ndarray:
    if "base64" in record:
        values = [base64.b64decode(v) for v in record["base64"]]
        return np.array(values, dtype=np.object_).reshape(record["shape"])
    return np.array(record["data"], dtype=triton_to_np_dtype(record["datatype"])).reshape(record["shape"])


def triton_inputs(probe: dict) -> dict[str, np.ndarray]:
    return {record["name"]: decode_tensor(record) for record in probe["triton"]}


def torchserve_probes(model_store: Path) -> dict[str, dict | None]:
    """Each archive's probe, by model name (None for an archive built without one); of a model's versions, the
    newest's (``<model>__v<N>.mar``)."""
    probes = {}
    archives = sorted(Path(model_store).glob("*.mar"), key=lambda mar: _version(mar.stem))
    for mar in archives:
        with zipfile.ZipFile(mar) as archive:
            names = set(archive.namelist())
            model = mar.stem.split(VERSION_FILE)[0]
            probes[model] = json.loads(archive.read(PROBE_NAME)) if PROBE_NAME in names else None
    return probes


def _version(stem: str) -> tuple[str, int]:
    model, _, version = stem.partition(VERSION_FILE)
    return model, int(version) if version.isdigit() else 1


def triton_probes(repository: Path) -> dict[str, dict | None]:
    """Each Triton model's probe, by model name (None for an ensemble or a model built without one)."""
    probes = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        found = sorted(config.parent.glob(f"*/{PROBE_NAME}"))
        probes[config.parent.name] = json.loads(found[-1].read_text()) if found else None
    return probes
