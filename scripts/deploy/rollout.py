"""Model versions rolled out and back on the running servers, without a restart and without losing a request.

    maas serve deploy ARTIFACT [--name NAME] [--only torchserve|triton] [--new-contract]   a new version beside the
                                               running one (refused with other labels or task, unless --new-contract)
    maas serve rollback MODEL [--only ...]     the version before takes the traffic again
    maas serve retire MODEL [--only ...]       keep the default version only (files of the others removed)
    maas serve versions [MODEL]                versions loaded and the default, on each server

A version is an integer per model name (the next after those on the server; the first build is 1), shown with the
weights' checksum. Requests that name no version go to the default; requests that name one are always answered by it
(TorchServe ``/predictions/<model>/<N>.0``, Triton ``model_version``). Every answer says which version produced it:
TorchServe's ``X-Model-Version`` header, Triton's ``model_version``.

* **TorchServe**: ``deploy`` archives the version as ``<model>__v<N>.mar`` (TorchServe version ``N.0``), registers it
  beside the others with its workers, sends its deep probe to that version explicitly, and only then makes it the
  default. A version whose load-time self-check or probe fails is unregistered before it took any traffic.
  ``rollback`` makes the highest version below the default the default; the newer one stays loaded until ``retire``.
* **Triton** sends requests without a version to the highest loaded version, and has no default to move. ``deploy``
  writes version N and reloads the model with ``version_policy { specific { versions: [..., N] } }``: a reload keeps
  the loaded versions serving until the new set is ready, and fails as a whole, leaving them as they were, when the
  new version's self-check refuses it at load (the golden outputs, in the served copy). Then its probe goes to
  version N; if it fails, the model is reloaded without N. ``rollback`` reloads without the highest version (its
  files stay until ``retire``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from handlers.artifact import read_manifest
from scripts import MODEL_STORE, REPO_ROOT, TRITON_REPOSITORY
from scripts.deploy.torchserve_versions import TorchServeVersions
from scripts.deploy.triton_versions import TritonVersions
from scripts.deploy.version_rules import RolloutRefused, weights_checksum
from scripts.packaging.build import served_artifact
from scripts.serving.probe import VERSION_FILE

__all__ = ["RolloutRefused", "TorchServeVersions", "TritonVersions"]


def deploy(argv: list[str]) -> int:
    return main(["deploy", *argv])


def rollback(argv: list[str]) -> int:
    return main(["rollback", *argv])


def retire(argv: list[str]) -> int:
    return main(["retire", *argv])


def versions(argv: list[str]) -> int:
    return main(["versions", *argv])


def servers(args) -> dict:
    chosen = {}
    if args.only in (None, "torchserve"):
        chosen["torchserve"] = TorchServeVersions(args.torchserve, args.torchserve_management, args.workdir,
                                                  args.model_store)  # fmt: skip
    if args.only in (None, "triton"):
        chosen["triton"] = TritonVersions(args.triton_http, args.repository)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maas serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("action", choices=["deploy", "rollback", "retire", "versions"])
    parser.add_argument("target", nargs="?", help="deploy: an artifact directory; the others: a model name")
    parser.add_argument("--name", help="deploy: the served model name (default: the artifact's)")
    parser.add_argument("--only", choices=["torchserve", "triton"])
    parser.add_argument("--new-contract", action="store_true",
                        help="deploy: allow another task or other labels than the served version's")  # fmt: skip
    parser.add_argument("--torchserve", default="http://127.0.0.1:8080")
    parser.add_argument("--torchserve-management", default="http://127.0.0.1:8081")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT, help="where TorchServe wrote key_file.json")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--triton-http", default="127.0.0.1:8000")
    parser.add_argument("--repository", type=Path, default=TRITON_REPOSITORY)
    args = parser.parse_args(argv)
    if args.action != "versions" and not args.target:
        parser.error(f"{args.action} needs {'an artifact' if args.action == 'deploy' else 'a model name'}")
    for server, versions in servers(args).items():
        start = time.perf_counter()
        if args.action == "deploy":
            artifact = served_artifact(Path(args.target))
            model = args.name or read_manifest(artifact).name
            version = versions.deploy(artifact, model, args.new_contract)
            print(f"{server}: {model} version {version} (weights {weights_checksum(artifact)}) loaded, probed and "
                  f"serving as the default in {time.perf_counter() - start:.1f}s")  # fmt: skip
        elif args.action == "rollback":
            print(f"{server}: {args.target} rolled back to version {versions.rollback(args.target)}")
        elif args.action == "retire":
            print(f"{server}: {args.target} retired versions {versions.retire(args.target) or 'none'}")
        else:
            models = [args.target] if args.target else _models(server, args)
            for model in models:
                loaded, default = versions.versions(model)
                print(f"{server:<10} {model:<16} versions {loaded} default {default}")
    return 0


def _models(server: str, args) -> list[str]:
    if server == "torchserve":
        return sorted({p.stem.split(VERSION_FILE)[0] for p in Path(args.model_store).glob("*.mar")})
    return sorted(p.parent.name for p in Path(args.repository).glob("*/config.pbtxt"))
