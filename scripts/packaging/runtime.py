"""What both packagers lay out beside a server's entry point: the runtime package, the artifact, the entry module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from handlers.artifact import MANIFEST_NAME
from handlers.settings import ServingSettings
from scripts import HANDLERS_DIR


def copy_runtime(artifact_dir: Path, destination: Path, serving: ServingSettings, without: str | None = None) -> None:
    """Copy the ``handlers`` package and the artifact (as ``artifact/``, less the file ``without``) into
    ``destination``, its manifest's ``serving`` replaced by the build's (per-server sections and ``--serving``
    overrides applied), so the handlers run with the settings the server configs were built from."""
    shutil.copytree(HANDLERS_DIR, destination / "handlers", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    copy_artifact(artifact_dir, destination / "artifact", serving, without)


def copy_artifact(artifact_dir: Path, destination: Path, serving: ServingSettings, without: str | None = None) -> None:
    """The artifact as ``destination`` (less the file ``without``), its manifest's ``serving`` the build's."""
    shutil.copytree(artifact_dir, destination, ignore=lambda _, names: [n for n in names if n == without])
    manifest_path = destination / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"] = serving.to_dict()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def entry_point_source(docstring: str, body: str) -> str:
    """Source of an entry module that puts its own directory first on sys.path before importing ``handlers``.

    Servers import entry modules with their working directory or other paths ahead of the model's directory;
    without this, a checkout of this project there would shadow the packaged copy of ``handlers``.
    """
    return (
        f'"""{docstring}"""\n\n'
        "import sys\n"
        "from pathlib import Path\n\n"
        "sys.path.insert(0, str(Path(__file__).resolve().parent))\n\n"
        f"{body}\n"
    )
