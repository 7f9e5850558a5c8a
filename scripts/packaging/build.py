"""Package trained artifacts for both servers.

    maas build artifacts/digits [artifacts/...] [--format eager|torchscript|onnx|onnx_int8|onnx_int8_static] \
        [--model-store model_store] [--triton-repository model_repository] [--only torchserve|triton]

Each artifact becomes ``<model_store>/<name>.mar`` and ``<triton_repository>/<name>/``. The artifact's
checksums are verified first, so a corrupted artifact is never packaged. ``--format`` packages a verified export
(``scripts/packaging/export.py``, written once to ``<artifact>.<format>/`` and reused); without it each task gets
the format measured best for it (``DEFAULT_FORMATS``, from the README's format table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from handlers.artifact import Manifest, read_manifest
from handlers.formats import FORMATS
from handlers.settings import ServingSettings
from scripts import MODEL_STORE, TRITON_REPOSITORY
from scripts.packaging.explain_build import build_triton_explainer, explain_source
from scripts.packaging.export import ExportRejected, export
from scripts.packaging.quantize import CalibrationError
from scripts.packaging.torchserve_archive import build_mar
from scripts.packaging.triton_ensemble import BACKENDS, build_triton_ensemble
from scripts.packaging.triton_repository import build_triton_model

# Set by measurement (reports/formats.md, maas bench formats): per task, the format with the most served
# throughput whose held-out accuracy stays within one point of eager. Regressors: not measured, so eager.
DEFAULT_FORMATS = {
    "image_classification": "onnx",
    "text_classification": "onnx_int8",
    "tabular_classification": "eager",
    "tabular_regression": "eager",
}


def for_server(manifest: Manifest, server: str, overrides: dict | None) -> Manifest:
    """The manifest as one server's builder sees it: generic serving settings, then the artifact's section for
    that server (``serving.torchserve`` / ``serving.triton``), then the build's overrides."""
    return replace(manifest, serving=manifest.serving.for_server(server, overrides))


def parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` serving overrides from a command line (values as JSON: ``max_batch_size=1``)."""

    def parse(item: str) -> tuple[str, object]:
        key, equals, value = item.partition("=")
        if key and equals:
            try:
                return key, json.loads(value)
            except ValueError:
                pass
        raise ValueError(f"serving setting {item!r}: expected KEY=VALUE with a JSON value, e.g. max_batch_size=8")

    return dict(parse(item) for item in items)


def served_artifact(artifact_dir: Path, fmt: str | None = None) -> Path:
    """The artifact a build packages: an eager artifact's verified export to ``fmt`` (default: the task's entry in
    ``DEFAULT_FORMATS``), written once and reused; any other artifact as it is."""
    manifest = read_manifest(artifact_dir)
    if manifest.model.get("format") != "eager":
        return artifact_dir
    return export(artifact_dir, fmt or DEFAULT_FORMATS.get(manifest.task, "eager"), manifest=manifest)


def build(
    artifact_dir: Path,
    model_store: Path | None = MODEL_STORE,
    triton_repository: Path | None = TRITON_REPOSITORY,
    python_env: Path = Path(sys.prefix),
    name: str | None = None,
    serving: dict | None = None,
    fmt: str | None = None,
    triton_ensemble: str | None = None,
    explain: bool = True,
) -> dict[str, float]:
    """Build what is asked for; return the seconds each build took.

    ``serving`` overrides the manifest's serving settings for these builds only (batch size, batch delay): the
    benchmark's naive baseline is the same artifact built with ``{"max_batch_size": 1}``. ``fmt`` picks the model
    format (default: the task's entry in ``DEFAULT_FORMATS``); an artifact that already is an export is built as is.
    ``triton_ensemble`` (a backend of ``scripts.packaging.triton_ensemble.BACKENDS``) writes an ensemble with the
    network on that backend instead of one Python model. ``explain``: add the explainers (``explain_build.py``).
    """
    ServingSettings().for_server("triton", serving)  # a bad override is refused before any export, not after
    source, artifact_dir = artifact_dir, served_artifact(artifact_dir, fmt)
    manifest = read_manifest(artifact_dir)
    if fmt not in (None, manifest.model.get("format")):
        origin = ("was imported as such and is served in that format" if "imported_from" in manifest.model
                  else f"is an export; build --format {fmt} from the eager artifact it came from")  # fmt: skip
        raise ValueError(f"{artifact_dir} holds a {manifest.model.get('format')} model: it {origin}")
    name = name or manifest.name
    explain_from = explain_source(source, manifest) if explain else None
    seconds = {}
    if model_store is not None:
        start = time.perf_counter()
        path = build_mar(artifact_dir, for_server(manifest, "torchserve", serving), model_store, name,
                         explain_from=explain_from)  # fmt: skip
        seconds["torchserve"] = time.perf_counter() - start
        print(f"built {path} in {seconds['torchserve']:.1f}s")
    if triton_repository is not None:
        start = time.perf_counter()
        triton_manifest = for_server(manifest, "triton", serving)
        if triton_ensemble:
            path = build_triton_ensemble(
                artifact_dir, triton_manifest, triton_repository, name, python_env, triton_ensemble
            )
        else:
            path = build_triton_model(
                artifact_dir, triton_manifest, triton_repository, name, python_env, triton_manifest.serving.workers
            )
        seconds["triton"] = time.perf_counter() - start
        print(f"built {path} in {seconds['triton']:.1f}s")
        if explain and not triton_ensemble:
            path = build_triton_explainer(artifact_dir, explain_from, triton_manifest, triton_repository, name,
                                          python_env)  # fmt: skip
            print(f"built {path}" if path else f"{name}: no explainer (its task or format has none)")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path, help="artifact directories (with pipeline.json)")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--triton-repository", type=Path, default=TRITON_REPOSITORY)
    parser.add_argument("--only", choices=["torchserve", "triton"], help="build for one server only")
    parser.add_argument("--format", choices=FORMATS, help="model format (default: per task, DEFAULT_FORMATS)")
    parser.add_argument(
        "--triton-ensemble",
        choices=BACKENDS,
        help="write a Triton ensemble (Python pre/postprocessing) with the network on this backend; "
        "onnxruntime and libtorch need a tritonserver that has those backends",
    )
    parser.add_argument("--name", help="model name on the servers (one artifact only; default: the manifest's)")
    parser.add_argument(
        "--serving",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a serving setting, e.g. --serving max_batch_delay_ms=2 --serving max_batch_size=1",
    )
    parser.add_argument(
        "--python-env",
        type=Path,
        default=Path(sys.prefix),
        help="Python environment Triton's stub runs the model in (default: this one)",
    )
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="leave out the explainers (Triton's <model>_explain, the eager weights behind an export)",
    )
    args = parser.parse_args(argv)
    if args.name and len(args.artifacts) > 1:
        parser.error("--name needs exactly one artifact")
    serving = parse_settings(args.serving)
    for artifact in tqdm(
        args.artifacts, desc="building", unit="model", disable=None if len(args.artifacts) > 1 else True
    ):
        try:
            build(
                artifact,
                model_store=None if args.only == "triton" else args.model_store,
                triton_repository=None if args.only == "torchserve" else args.triton_repository,
                python_env=args.python_env.resolve(),
                name=args.name,
                serving=serving,
                fmt=args.format,
                triton_ensemble=args.triton_ensemble,
                explain=not args.no_explain,
            )
        except ExportRejected as exc:
            raise SystemExit(f"{artifact}: export rejected, nothing built: {exc}") from None
        except CalibrationError as exc:
            raise SystemExit(f"{artifact}: cannot calibrate, nothing built: {exc}") from None


if __name__ == "__main__":
    main()
