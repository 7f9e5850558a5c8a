"""Build-time tools: training, packaging and server control. Never shipped inside an archive.

Run them from the repository root as modules, e.g. ``.venv/bin/python -m scripts.build --help``.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
ARTIFACTS_DIR = REPO_ROOT / "artifacts"
MODEL_STORE = REPO_ROOT / "model_store"
TRITON_REPOSITORY = REPO_ROOT / "model_repository"
