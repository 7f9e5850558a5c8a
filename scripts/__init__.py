"""Build-time tools, grouped by job: training/, packaging/, serving/, benchmarking/. Never shipped in an archive.

Run them through the ``maas`` command (``scripts/cli.py``; ``.venv/bin/maas --help``), or as modules from the
repository root, e.g. ``.venv/bin/python -m scripts.packaging.build --help``.
"""

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
ARTIFACTS_DIR = REPO_ROOT / "artifacts"
MODEL_STORE = REPO_ROOT / "model_store"
TRITON_REPOSITORY = REPO_ROOT / "model_repository"


def at_least(least: int):
    """An argparse ``type``: a whole number of at least ``least`` (argparse names the option when refusing one)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    parse.__name__ = "int"  # argparse's "invalid int value: 'x'"
    return parse


def positive(text: str) -> float:
    """An argparse ``type``: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


positive.__name__ = "float"
