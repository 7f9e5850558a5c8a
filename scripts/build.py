"""Package trained artifacts for both servers.

    .venv/bin/python -m scripts.build artifacts/digits [artifacts/...] \
        [--model-store model_store] [--triton-repository model_repository] [--only torchserve|triton]

Each artifact becomes ``<model_store>/<name>.mar`` and ``<triton_repository>/<name>/``. The artifact's
checksums are verified first, so a corrupted artifact is never packaged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from handlers.artifact import read_manifest
from scripts import MODEL_STORE, TRITON_REPOSITORY
from scripts.torchserve_archive import build_mar
from scripts.triton_repository import build_triton_model


def build(
    artifact_dir: Path,
    model_store: Path | None = MODEL_STORE,
    triton_repository: Path | None = TRITON_REPOSITORY,
    python_env: Path = Path(sys.prefix),
    name: str | None = None,
) -> dict[str, float]:
    """Build what is asked for; return the seconds each build took."""
    manifest = read_manifest(artifact_dir)
    name = name or manifest.name
    seconds = {}
    if model_store is not None:
        start = time.perf_counter()
        path = build_mar(artifact_dir, manifest, model_store, name)
        seconds["torchserve"] = time.perf_counter() - start
        print(f"built {path} in {seconds['torchserve']:.1f}s")
    if triton_repository is not None:
        start = time.perf_counter()
        path = build_triton_model(artifact_dir, manifest, triton_repository, name, python_env)
        seconds["triton"] = time.perf_counter() - start
        print(f"built {path} in {seconds['triton']:.1f}s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path, help="artifact directories (with pipeline.json)")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--triton-repository", type=Path, default=TRITON_REPOSITORY)
    parser.add_argument("--only", choices=["torchserve", "triton"], help="build for one server only")
    parser.add_argument(
        "--python-env",
        type=Path,
        default=Path(sys.prefix),
        help="Python environment Triton's stub runs the model in (default: this one)",
    )
    args = parser.parse_args()
    for artifact in args.artifacts:
        build(
            artifact,
            model_store=None if args.only == "triton" else args.model_store,
            triton_repository=None if args.only == "torchserve" else args.triton_repository,
            python_env=args.python_env.resolve(),
        )


if __name__ == "__main__":
    main()
