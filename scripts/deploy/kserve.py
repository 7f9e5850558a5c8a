"""Hand trained artifacts to KServe (>= 0.16): storage layouts, InferenceServices and ServingRuntimes.

    maas deploy kserve artifacts/digits artifacts/sentiment --storage-uri s3://my-bucket/maas [--out deploy/kserve]
        [--min-replicas 1 --max-replicas 4 --scale-metric cpu --scale-target 70 --mode Standard|Knative]
        [--cpu 2 --memory 4Gi --shm-size 1Gi --run-as-user 1000] [--torchserve-image IMAGE] [--triton-image IMAGE]
        [--image-root /opt/maas] [--openai-cpu 1 --openai-memory 1Gi] [--canary 10 (with --mode Knative)]
    maas deploy check deploy/kserve     # KServe's CRD schemas and rules, and the layouts (after an edit)

Writes ``<out>/torchserve/<model>/`` and ``<out>/triton/<model>/`` (``scripts/deploy/kserve_layout.py``) and
``<out>/manifests/``: one InferenceService per model and server (storageUri ``<storage-uri>/<server>/<model>/``)
and the ServingRuntimes they name (for a language model on Triton, ``maas-triton-openai``: the OpenAI API). Copy
``<out>/torchserve`` and ``<out>/triton`` to the storage URI, then ``kubectl apply -f <out>/manifests``. Every
file is checked before the command returns: each manifest against KServe's own CRD schema, strictly
(``kserve_schema.py``), and its admission rules (``kserve_rules.py``), then each layout against the manifest that
serves it.

``--canary PERCENT`` (Knative mode only, as KServe's canary rollout): each InferenceService gets
``canaryTrafficPercent``, so that applied over the running one, the new revision (a new ``--storage-uri`` holding the
new version's files) takes that share of the requests and the last one rolled out the rest. Deploying again without
``--canary`` and applying promotes it; ``canaryTrafficPercent: 0`` rolls back (docs/kserve.md, "Canary rollout").
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
from scripts.deploy.kserve_check import check, check_manifests
from scripts.deploy.kserve_layout import LM_TASK, LayoutError, finish_torchserve_layout
from scripts.deploy.kserve_manifests import MODES, ManifestError, Scaling, inference_service, write_manifest
from scripts.deploy.kserve_runtimes import Runtimes, openai_runtime, torchserve_runtime, triton_runtime


def write_manifests(folder: Path, models: list[str], storage_uri: str, scaling: Scaling, runtimes: Runtimes,
                    language_models: frozenset[str] = frozenset()) -> list[Path]:  # fmt: skip
    """``language_models``: those of ``models`` that generate text; the OpenAI runtime is written for them."""
    runtimes.check_fits(scaling.memory)
    written = [
        write_manifest(torchserve_runtime(runtimes), folder / "servingruntime-torchserve.yaml"),
        write_manifest(triton_runtime(runtimes), folder / "servingruntime-triton.yaml"),
    ]
    if language_models:
        written.append(write_manifest(openai_runtime(runtimes), folder / "servingruntime-triton-openai.yaml"))
    for model in models:
        for server in SERVERS:
            service = inference_service(model, server, storage_uri, scaling, runtimes.image_root,
                                        language_model=model in language_models)  # fmt: skip
            written.append(write_manifest(service, folder / f"{model}-{server}.yaml"))
    return written


def deploy(artifacts: list[Path], out: Path, storage_uri: str, scaling: Scaling, runtimes: Runtimes,
           fmt: str | None = None) -> list[Path]:  # fmt: skip
    """Write the layouts and manifests for ``artifacts``; return the manifest files."""
    manifests = [read_manifest(artifact) for artifact in artifacts]
    models = [manifest.name for manifest in manifests]
    language_models = frozenset(m.name for m in manifests if m.task == LM_TASK)
    if fmt and language_models:  # maas build would refuse it, after the manifests are written
        lm = next(a for a, m in zip(artifacts, manifests, strict=True) if m.name in language_models)
        raise ManifestError(f"{lm} is a language model, served from its Hugging Face checkpoint: --format {fmt} does "
                            "not apply to it (deploy it without --format, to the same --out if you like)")  # fmt: skip
    written = write_manifests(out / "manifests", models, storage_uri, scaling, runtimes, language_models)
    check_manifests(out / "manifests")  # KServe's rules first: building the layouts takes minutes
    for artifact, model in zip(artifacts, models, strict=True):
        torchserve_layout, triton_layout = out / "torchserve" / model, out / "triton" / model
        shutil.rmtree(torchserve_layout, ignore_errors=True)
        # maas build in a process of its own: tritonclient.grpc and kserve each register the v2 protocol's
        # protobuf messages ("inference.ServerLiveRequest" ...), and one process cannot hold both.
        command = [sys.executable, "-m", "scripts.cli", "build", str(artifact), "--python-env",
                   str(runtimes.image_root / ".venv"), "--model-store", str(torchserve_layout / "model-store"),
                   "--triton-repository", str(triton_layout), *(["--format", fmt] if fmt else [])]  # fmt: skip
        if subprocess.run(command, cwd=REPO_ROOT).returncode:  # maas build printed its one-line error
            raise LayoutError(f"{artifact}: maas build failed (the line above says why)")
        finish_torchserve_layout(torchserve_layout, model, routed=model in language_models)
    check(out)
    return written


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
    defaults, pods = Scaling(), Runtimes()
    writer.add_argument("--min-replicas", type=int, default=defaults.min_replicas)
    writer.add_argument("--max-replicas", type=int, default=defaults.max_replicas)
    writer.add_argument("--scale-metric", default=defaults.metric, choices=MODES["Knative"])
    writer.add_argument("--scale-target", type=int, default=defaults.target,
                        help="percent utilization (cpu, memory) or per pod (concurrency, rps)")  # fmt: skip
    writer.add_argument("--mode", default=defaults.mode, choices=MODES, help="KServe deployment mode")
    writer.add_argument("--canary", type=canary_percent, metavar="PERCENT",
                        help="Knative mode: this share of the requests goes to the new revision (a new --storage-uri "
                             "with the new version's files), the rest to the last one rolled out")  # fmt: skip
    writer.add_argument("--cpu", default=defaults.cpu, help="CPU request and limit per pod")
    writer.add_argument("--memory", default=defaults.memory, help="memory request and limit per pod")
    writer.add_argument("--shm-size", default=pods.shm_size,
                        help="memory-backed /dev/shm of the Triton pods, below --memory")  # fmt: skip
    writer.add_argument("--run-as-user", type=int, default=pods.run_as_user,
                        help="numeric user id the runtimes' containers run as (not root)")  # fmt: skip
    writer.add_argument("--torchserve-image", default=pods.torchserve_image)
    writer.add_argument("--triton-image", default=pods.triton_image)
    writer.add_argument("--image-root", type=Path, default=pods.image_root,
                        help="where the Triton image holds this project, set up by scripts/setup.sh")  # fmt: skip
    writer.add_argument("--openai-cpu", default=pods.openai_cpu,
                        help="CPU request and limit of the OpenAI frontend beside an LM on Triton")  # fmt: skip
    writer.add_argument("--openai-memory", default=pods.openai_memory,
                        help="memory request and limit of the OpenAI frontend")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            check(args.out)
            print(f"{args.out}: layouts and manifests valid")
            return 0
        scaling = Scaling(args.min_replicas, args.max_replicas, args.scale_metric, args.scale_target, args.mode,
                          args.cpu, args.memory, args.canary)  # fmt: skip
        runtimes = Runtimes(args.torchserve_image, args.triton_image, args.image_root, args.run_as_user, args.shm_size,
                            args.openai_cpu, args.openai_memory)  # fmt: skip
        written = deploy(args.artifacts, args.out, args.storage_uri, scaling, runtimes, args.format)
    except (LayoutError, ManifestError, FileNotFoundError, yaml.YAMLError, subprocess.CalledProcessError) as exc:
        print(f"maas deploy: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(["wrote", *(f"  {path}" for path in written),
                     f"next: copy {args.out}/torchserve and {args.out}/triton to {args.storage_uri}/, then",
                     f"      kubectl apply -f {args.out / 'manifests'}", *canary_steps(args.canary)]))  # fmt: skip
    return 0


def canary_percent(text: str) -> int:
    """``--canary``: a whole percentage of the requests, 1..99 (0 is a rollback, 100 a promotion: no canary)."""
    if not text.isdigit() or not 1 <= int(text) <= 99:
        raise argparse.ArgumentTypeError(f"a whole percentage of the requests, 1..99, not {text!r}")
    return int(text)


def canary_steps(percent: int | None) -> list[str]:
    if percent is None:
        return []
    return [f"canary: applied over the running InferenceServices, the new revision takes {percent}% of the requests "
            "and the last one rolled out the rest (--storage-uri: the new version's files, not the running one's)",
            "      promote: deploy again without --canary and apply; roll back: set "
            "spec.predictor.canaryTrafficPercent to 0 and apply"]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
