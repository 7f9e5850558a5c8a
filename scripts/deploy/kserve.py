"""Hand trained artifacts to KServe: storage layouts, InferenceServices and ServingRuntimes.

    maas deploy kserve artifacts/digits artifacts/sentiment --storage-uri s3://my-bucket/maas [--out deploy/kserve]
        [--min-replicas 1 --max-replicas 4 --scale-metric cpu --scale-target 70 --mode Standard|Knative]
        [--cpu 2 --memory 4Gi] [--torchserve-image IMAGE] [--triton-image IMAGE] [--image-root /opt/maas]
    maas deploy check deploy/kserve     # re-validate the layouts and manifests (after an edit)

Writes ``<out>/torchserve/<model>/`` and ``<out>/triton/<model>/`` (``scripts/deploy/kserve_layout.py``) and
``<out>/manifests/``: one InferenceService per model and server (storageUri ``<storage-uri>/<server>/<model>``)
and the two ServingRuntimes they name. Copy ``<out>/torchserve`` and ``<out>/triton`` to the storage URI, then
``kubectl apply -f <out>/manifests``. Every file is checked before the command returns.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from handlers.artifact import read_manifest
from handlers.formats import FORMATS
from handlers.settings import SERVERS
from scripts import REPO_ROOT
from scripts.deploy.kserve_layout import (
    LayoutError,
    check_torchserve_layout,
    check_triton_layout,
    finish_torchserve_layout,
)
from scripts.deploy.kserve_manifests import (
    MODES,
    ManifestError,
    Scaling,
    inference_service,
    load_manifest,
    torchserve_runtime,
    triton_runtime,
    write_manifest,
)


def deploy(artifacts: list[Path], out: Path, storage_uri: str, scaling: Scaling, images: dict[str, str],
           image_root: Path, fmt: str | None = None) -> list[Path]:  # fmt: skip
    """Write the layouts and manifests for ``artifacts``; return the manifest files."""
    manifests = out / "manifests"
    written = [
        write_manifest(torchserve_runtime(images["torchserve"]), manifests / "servingruntime-torchserve.yaml"),
        write_manifest(triton_runtime(images["triton"], image_root), manifests / "servingruntime-triton.yaml"),
    ]
    for artifact in artifacts:
        model = read_manifest(artifact).name
        torchserve_layout, triton_layout = out / "torchserve" / model, out / "triton" / model
        shutil.rmtree(torchserve_layout, ignore_errors=True)
        # maas build in a process of its own: tritonclient.grpc and kserve each register the v2 protocol's
        # protobuf messages ("inference.ServerLiveRequest" ...), and one process cannot hold both.
        command = [sys.executable, "-m", "scripts.cli", "build", str(artifact), "--python-env",
                   str(image_root / ".venv"), "--model-store", str(torchserve_layout / "model-store"),
                   "--triton-repository", str(triton_layout), *(["--format", fmt] if fmt else [])]  # fmt: skip
        if subprocess.run(command, cwd=REPO_ROOT).returncode:  # maas build printed its one-line error
            raise LayoutError(f"{artifact}: maas build failed (the line above says why)")
        finish_torchserve_layout(torchserve_layout, model)
        for server in SERVERS:
            service = inference_service(model, server, f"{storage_uri.rstrip('/')}/{server}/{model}", scaling,
                                        image_root)  # fmt: skip
            written.append(write_manifest(service, manifests / f"{model}-{server}.yaml"))
    check(out)
    return written


def check(out: Path) -> None:
    """LayoutError or ManifestError naming the first file that KServe could not use as written."""
    runtimes, services = set(), []
    if not (out / "manifests").is_dir():
        what = "does not exist" if not out.exists() else "has no manifests/ folder"
        raise LayoutError(f"{out} {what}: expected a directory written by maas deploy kserve")
    for path in sorted((out / "manifests").glob("*.yaml")):
        obj = load_manifest(path)
        if obj.kind == "ServingRuntime":
            runtimes.add(obj.metadata.name)
        else:
            services.append((path, obj.spec.predictor.model))
    if not services:
        raise ManifestError(f"{out / 'manifests'} holds no InferenceService")
    for path, model in services:
        if model.runtime not in runtimes:
            raise ManifestError(f"{path}: runtime {model.runtime!r} has no ServingRuntime in {out / 'manifests'}")
        server, name = model.storage_uri.rstrip("/").split("/")[-2:]
        layout = out / server / name
        if server not in SERVERS or not layout.is_dir():
            raise LayoutError(f"{path}: storageUri {model.storage_uri} should end /<server>/<model> of {layout}")
        served = check_torchserve_layout(layout) if server == "torchserve" else check_triton_layout(layout)
        if served != name:
            raise LayoutError(f"{layout} serves {served!r}, but {path} expects {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    checker = commands.add_parser("check", help="validate a directory written by maas deploy kserve")
    checker.add_argument("out", type=Path)
    writer = commands.add_parser("kserve", help="write layouts and manifests for KServe")
    writer.add_argument("artifacts", nargs="+", type=Path, help="artifact directories (with pipeline.json)")
    writer.add_argument("--storage-uri", required=True, help="where the layouts will be copied (s3://, gs://, pvc://)")
    writer.add_argument("--out", type=Path, default=REPO_ROOT / "deploy" / "kserve")
    writer.add_argument("--format", choices=FORMATS, help="model format (default: per task, as maas build)")
    defaults = Scaling()
    writer.add_argument("--min-replicas", type=int, default=defaults.min_replicas)
    writer.add_argument("--max-replicas", type=int, default=defaults.max_replicas)
    writer.add_argument("--scale-metric", default=defaults.metric, choices=MODES["Knative"])
    writer.add_argument("--scale-target", type=int, default=defaults.target,
                        help="percent utilization (cpu, memory) or per pod (concurrency, rps)")  # fmt: skip
    writer.add_argument("--mode", default=defaults.mode, choices=MODES, help="KServe deployment mode")
    writer.add_argument("--cpu", default=defaults.cpu, help="CPU request and limit per pod")
    writer.add_argument("--memory", default=defaults.memory, help="memory request and limit per pod")
    writer.add_argument("--torchserve-image", default="maas-handlers/torchserve:latest")
    writer.add_argument("--triton-image", default="maas-handlers/tritonserver:latest")
    writer.add_argument("--image-root", type=Path, default=Path("/opt/maas"),
                        help="where the Triton image holds this project, set up by scripts/setup.sh")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            check(args.out)
            print(f"{args.out}: layouts and manifests valid")
            return 0
        scaling = Scaling(args.min_replicas, args.max_replicas, args.scale_metric, args.scale_target, args.mode,
                          args.cpu, args.memory)  # fmt: skip
        images = {"torchserve": args.torchserve_image, "triton": args.triton_image}
        written = deploy(args.artifacts, args.out, args.storage_uri, scaling, images, args.image_root, args.format)
    except (LayoutError, ManifestError, FileNotFoundError, yaml.YAMLError, subprocess.CalledProcessError) as exc:
        print(f"maas deploy: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(["wrote", *(f"  {path}" for path in written),
                     f"next: copy {args.out}/torchserve and {args.out}/triton to {args.storage_uri}/, then",
                     f"      kubectl apply -f {args.out / 'manifests'}"]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
