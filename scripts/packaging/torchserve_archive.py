"""Package an artifact into ``<model_store>/<name>.mar`` with torch-model-archiver's own code.

The archive holds a small entry module (``torchserve_entry.py``), the ``handlers`` package and the artifact under
``artifact/``: everything it needs to load on a stock TorchServe. Batch settings go into the
archive's ``model-config.yaml``. torch-model-archiver copies the *contents* of a directory given in
``--extra-files``, so a staging directory keeps ``handlers/`` a real package.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive

from handlers.artifact import Manifest
from scripts.packaging.explain_build import copy_explain_source
from scripts.packaging.generation_build import TORCHSERVE_CONFIG, TORCHSERVE_ENTRY, is_language_model
from scripts.packaging.probe import write_probe
from scripts.packaging.runtime import copy_runtime, entry_point_source

ENTRY_MODULE = "torchserve_entry"
ENTRY_POINT = entry_point_source(
    "TorchServe entry point of a maas-handlers archive: the handler lives in this archive's handlers package.",
    "from handlers.torchserve_handler import MaasHandler  # noqa: E402\n\n\n"
    "class ArchiveHandler(MaasHandler):\n"
    '    """The one class the TorchServe loader looks for in the entry module."""',
)


def torchserve_model_config(manifest: Manifest) -> dict:
    serving = manifest.serving
    return {
        "minWorkers": serving.workers,
        "maxWorkers": serving.workers,
        "batchSize": serving.max_batch_size,
        # Measured (reports/benchmark.md): 1 ms keeps single requests fast and batches fill from the queue under
        # load; 0 is a trap, TorchServe then waits ~100 ms for every batch.
        "maxBatchDelay": max(1, round(serving.max_batch_delay_ms)),
        "responseTimeout": serving.response_timeout_s,
    }


def build_mar(artifact_dir: Path, manifest: Manifest, model_store: Path, name: str, version: str = "1.0",
              file_name: str | None = None, explain_from: Path | None = None) -> Path:  # fmt: skip
    """``<model_store>/<file_name or name>.mar``; ``version``: TorchServe's version of the model (a string);
    ``explain_from``: the eager artifact an export was made from, shipped as ``explain/`` for ``/explanations``."""
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"mar-{name}-") as tmp:
        stage = Path(tmp) / "stage"
        copy_runtime(artifact_dir, stage, manifest.serving)
        if explain_from is not None:
            copy_explain_source(explain_from, stage, manifest)
        write_probe(artifact_dir, manifest, stage)
        config_file = Path(tmp) / "model-config.yaml"
        generative = is_language_model(manifest)
        model_config = torchserve_model_config(manifest) | (TORCHSERVE_CONFIG if generative else {})
        config_file.write_text(yaml.safe_dump(model_config))
        entry = Path(tmp) / f"{ENTRY_MODULE}.py"
        entry.write_text(TORCHSERVE_ENTRY if generative else ENTRY_POINT)
        stage_name = file_name or name
        config = ModelArchiverConfig(
            model_name=stage_name,
            handler=str(entry),
            version=version,
            extra_files=str(stage),
            config_file=str(config_file),
            export_path=str(model_store),
            force=True,
        )
        # The archiver stages its files in <tempfile.gettempdir()>/<model name> and deletes that folder before and
        # after: an artifact kept at /tmp/<model name> would be deleted. Give it a temp dir of its own.
        shared, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            generate_model_archive(config)
        finally:
            tempfile.tempdir = shared
        if stage_name != name:  # the archiver names the file after the model: name the model in its manifest
            rename_model(model_store / f"{stage_name}.mar", name)
    return model_store / f"{stage_name}.mar"


def rename_model(mar: Path, name: str) -> None:
    """Set the model name in an archive's ``MAR-INF/MANIFEST.json`` (the file keeps its own name)."""
    with zipfile.ZipFile(mar) as archive:
        entries = {info: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(mar, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in entries.items():
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = name
                data = json.dumps(manifest, indent=2).encode()
            archive.writestr(info, data)
