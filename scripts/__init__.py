"""Build-time tools, grouped by job: training/, packaging/, serving/, benchmarking/. Never shipped in an archive.

Run them through the ``maas`` command (``scripts/cli.py``; ``.venv/bin/maas --help``), or as modules from the
repository root, e.g. ``.venv/bin/python -m scripts.packaging.build --help``.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
ARTIFACTS_DIR = REPO_ROOT / "artifacts"
MODEL_STORE = REPO_ROOT / "model_store"
TRITON_REPOSITORY = REPO_ROOT / "model_repository"
