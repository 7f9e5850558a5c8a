"""Model versions rolled out and back on the running servers, without a restart and without losing a request.

    maas serve deploy ARTIFACT [--name NAME] [--only torchserve|triton] [--new-contract]   a new version beside the
                                               running one (refused with other labels or task, unless --new-contract)
    maas serve deploy ARTIFACT --canary 10     the new version takes ~10% of the requests without a version
    maas serve promote MODEL                   the canary becomes the default
    maas serve rollback MODEL [--only ...]     a canary ends; without one, the version before takes the traffic again
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

**Canary** (``--canary P``): the new version is loaded and probed as above but the default does not move; the split
lives in this package's clients and the OpenAI frontend (``scripts/serving/canary.py``: ``run/canary.json``). On
TorchServe the canary is a registered version that is not the default; on Triton, whose default is always the
highest version, it is the sibling model ``<model>-canary``. ``promote`` makes it the default (Triton: loads it as
``model``'s next version, then unloads the sibling); ``rollback`` unloads it.
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
from scripts.serving.canary import CANARY_FILE, CANARY_SUFFIX, read_canaries, set_canary
from scripts.serving.probe import VERSION_FILE

__all__ = ["RolloutRefused", "TorchServeVersions", "TritonVersions"]
CANARY_GRACE_S = 1.0


def deploy(argv: list[str]) -> int:
    return main(["deploy", *argv])


def promote(argv: list[str]) -> int:
    return main(["promote", *argv])


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


def running_canary(server: str, model: str, canary_file: Path) -> dict | None:
    return read_canaries(canary_file).get(server, {}).get(model)


def deploy_version(server: str, versions, artifact: Path, model: str, new_contract: bool = False,
                   canary: float | None = None, canary_file: Path = CANARY_FILE) -> int:  # fmt: skip
    """Deploy on one server; with ``canary`` (a percentage), the new version takes that share of the requests
    without a version (through the split in this package's clients) instead of all of them."""
    if running := running_canary(server, model, canary_file):
        raise RolloutRefused(f"a canary of {model} (version {running['version']}) is running on {server}: "
                             f"maas serve promote {model}, or rollback {model}, first")  # fmt: skip
    version = versions.deploy(artifact, model, new_contract, canary=canary is not None)
    if canary is not None:
        set_canary(server, model, version, canary, canary_file)
    return version


def promote_canary(server: str, versions, model: str, canary_file: Path = CANARY_FILE) -> int:
    """The canary becomes the version every request without one goes to."""
    if not (running := running_canary(server, model, canary_file)):
        raise RolloutRefused(f"no canary of {model} is running on {server}")
    versions.promote_canary(model, running["version"])
    end_share(server, model, canary_file)
    versions.drop_canary(model)
    return running["version"]


def end_canary_or_roll_back(server: str, versions, model: str, canary_file: Path = CANARY_FILE) -> str:
    """End a running canary (its version is unloaded), or else move the default back to the version before."""
    if running := running_canary(server, model, canary_file):
        end_share(server, model, canary_file)
        versions.end_canary(model, running["version"])
        return f"its canary, version {running['version']}, ended and unloaded"
    return f"rolled back to version {versions.rollback(model)}"


def end_share(server: str, model: str, canary_file: Path) -> None:
    """Clients re-read the share at each request: after a pause no new request goes to the canary, and those
    routed to it before are answered by it before it goes."""
    set_canary(server, model, None, path=canary_file)
    time.sleep(CANARY_GRACE_S)


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["deploy", "promote", "rollback", "retire", "versions"])
    parser.add_argument("target", nargs="?", help="deploy: an artifact directory; the others: a model name")
    parser.add_argument("--name", help="deploy: the served model name (default: the artifact's)")
    parser.add_argument("--only", choices=["torchserve", "triton"])
    parser.add_argument("--new-contract", action="store_true",
                        help="deploy: allow another task or other labels than the served version's")  # fmt: skip
    parser.add_argument("--canary", type=percentage, metavar="PERCENT",
                        help="deploy: send this share of the requests without a version to the new one")  # fmt: skip
    parser.add_argument("--canary-file", type=Path, default=CANARY_FILE, help=argparse.SUPPRESS)
    parser.add_argument("--torchserve", default="http://127.0.0.1:8080")
    parser.add_argument("--torchserve-management", default="http://127.0.0.1:8081")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT, help="where TorchServe wrote key_file.json")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--triton-http", default="127.0.0.1:8000")
    parser.add_argument("--repository", type=Path, default=TRITON_REPOSITORY)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.action != "versions" and not args.target:
        parser.error(f"{args.action} needs {'an artifact' if args.action == 'deploy' else 'a model name'}")
    if args.canary is not None and args.action != "deploy":
        parser.error("--canary goes with deploy")
    for server, versions in servers(args).items():
        start = time.perf_counter()
        if args.action == "deploy":
            artifact = served_artifact(Path(args.target))
            model = args.name or read_manifest(artifact).name
            version = deploy_version(server, versions, artifact, model, args.new_contract, args.canary,
                                     args.canary_file)  # fmt: skip
            role = "the default" if args.canary is None else f"a canary of {args.canary:g}% of the requests"
            print(f"{server}: {model} version {version} (weights {weights_checksum(artifact)}) loaded, probed and "
                  f"serving as {role} in {time.perf_counter() - start:.1f}s")  # fmt: skip
        elif args.action == "promote":
            version = promote_canary(server, versions, args.target, args.canary_file)
            print(f"{server}: {args.target} version {version} promoted: the default now")
        elif args.action == "rollback":
            print(f"{server}: {args.target} {end_canary_or_roll_back(server, versions, args.target, args.canary_file)}")
        elif args.action == "retire":
            print(f"{server}: {args.target} retired versions {versions.retire(args.target) or 'none'}")
        else:
            models = [args.target] if args.target else _models(server, args)
            for model in models:
                loaded, default = versions.versions(model)
                canary = running_canary(server, model, args.canary_file)
                share = f" canary {canary['version']} at {canary['percent']:g}%" if canary else ""
                print(f"{server:<10} {model:<16} versions {loaded} default {default}{share}")
    return 0


def percentage(text: str) -> float:
    value = float(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"a share between 0 and 100 (exclusive), not {text}")
    return value


def _models(server: str, args) -> list[str]:
    if server == "torchserve":
        return sorted({p.stem.split(VERSION_FILE)[0] for p in Path(args.model_store).glob("*.mar")})
    configs = Path(args.repository).glob("*/config.pbtxt")
    return sorted(p.parent.name for p in configs if not p.parent.name.endswith(CANARY_SUFFIX))
