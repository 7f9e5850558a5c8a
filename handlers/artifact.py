"""The artifact directory: trained weights plus ``pipeline.json``, the manifest that says how to serve them.

An artifact is what training writes and what both archive builders ship unchanged. The manifest records the
task, labels, preprocessing parameters, the weight format and a SHA-256 of every file, so a server refuses a
corrupted or tampered archive at load time instead of answering with wrong predictions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from handlers.settings import ServingSettings

MANIFEST_NAME = "pipeline.json"
# Held-out examples written by training, one JSON object per line: {"input": <a row as a request carries it>,
# "target": <label or value>}; a row of raw bytes (an encoded image) is stored as {"input_base64": ...}. Exports
# are checked against them (scripts/packaging/export.py), and the self-check carries a few (handlers/self_check.py).
HELD_OUT_NAME = "held_out.jsonl"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    name: str
    task: str
    model: dict  # {"architecture": ..., "config": {...}, "format": "eager" (handlers.formats), "file": ...}
    labels: list[str] | None = None
    preprocess: dict = field(default_factory=dict)
    serving: ServingSettings = field(default_factory=ServingSettings)  # a dict is read into one (handlers/settings.py)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    metrics: dict = field(default_factory=dict)  # held-out figures measured at training time
    # A pipeline class the artifact carries itself ({"file": "pipeline.py", "class": "MyPipeline"}), for models no
    # built-in task serves; None: the class registered for ``task`` (handlers/tasks/__init__.py).
    pipeline: dict | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.serving = ServingSettings.from_dict(self.serving)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact_manifest(directory: Path, manifest: Manifest) -> Path:
    """Record the checksum of every file in ``directory`` and write the manifest beside them."""
    directory = Path(directory)
    manifest.files = {
        str(p.relative_to(directory)): sha256_of(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return path


def write_held_out(directory: Path, inputs: list, targets: list) -> None:
    with open(Path(directory) / HELD_OUT_NAME, "w") as f:
        for row, target in zip(inputs, targets, strict=True):
            f.write(json.dumps({**encode_row(row), "target": target}) + "\n")


def encode_row(row) -> dict:
    """A request row as JSON: as it is, or base64 when it is raw bytes."""
    if isinstance(row, (bytes, bytearray)):
        return {"input_base64": base64.b64encode(bytes(row)).decode("ascii")}
    return {"input": row}


def decode_row(record: dict):
    return base64.b64decode(record["input_base64"]) if "input_base64" in record else record["input"]


def read_held_out(directory: Path) -> tuple[list, list]:
    path = Path(directory) / HELD_OUT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: retrain the model with this version's training scripts")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [decode_row(line) for line in lines], [line["target"] for line in lines]


def read_manifest(directory: Path, verify: bool = True, without_model: bool = False) -> Manifest:
    """Read ``pipeline.json``; with ``verify``, fail loudly on a missing or altered file.

    ``without_model``: the network's file may be absent (a Triton ensemble's pre/postprocessing copy); every
    file that is present is still checked.
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise FileNotFoundError(f"{directory} {what}: an artifact is a directory with {MANIFEST_NAME}")
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}: not a maas-handlers artifact")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:  # not JSON (or not UTF-8): name the file, not only the position
        raise ValueError(f"{path} is not a JSON manifest: {exc}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
    try:
        manifest = Manifest(**data)
    except (TypeError, ValueError) as exc:  # an unknown field, or a serving setting refused (it names itself)
        raise ValueError(f"{path}: {exc}") from None
    if verify:
        for name, expected in manifest.files.items():
            file = directory / name
            if without_model and name == manifest.model.get("file") and not file.exists():
                continue
            if not file.is_file():
                raise FileNotFoundError(f"artifact file {name} listed in {path} is missing")
            if sha256_of(file) != expected:
                raise ValueError(f"artifact file {name} does not match its checksum in {path}: it changed after the "
                                 "artifact was written; train or export it again")  # fmt: skip
    return manifest
