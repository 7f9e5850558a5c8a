"""Model versions rolled out and back on the running servers, without a restart and without losing a request.

    maas serve deploy ARTIFACT [--name NAME] [--only torchserve|triton]   a new version beside the running one
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
import hashlib
import json
import shutil
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import read_manifest
from scripts import MODEL_STORE, REPO_ROOT, TRITON_REPOSITORY
from scripts.packaging.build import for_server, served_artifact
from scripts.packaging.probe import make_probe
from scripts.packaging.torchserve_archive import build_mar
from scripts.packaging.triton_repository import write_version
from scripts.serving.client import infer_inputs
from scripts.serving.keys import TritonAccess, bearer, read_triton_key
from scripts.serving.pod_probe import torchserve_body
from scripts.serving.probe import GENERATE, VERSION_FILE, triton_inputs


class RolloutRefused(ValueError):
    """The new version was not put in service (it failed to load or its probe); the message says why."""


def weights_checksum(artifact: Path) -> str:
    files = read_manifest(artifact, verify=False).files
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]


# ---- TorchServe ------------------------------------------------------------------------------------------------
class TorchServeVersions:
    def __init__(self, inference: str, management: str, workdir: Path, model_store: Path):
        try:
            keys = json.loads((workdir / "key_file.json").read_text())
        except FileNotFoundError:
            raise RolloutRefused(f"no TorchServe started here (no key_file.json in {workdir}): maas serve start, "
                                 "or --only triton") from None  # fmt: skip
        self.inference = httpx.Client(base_url=inference, headers=bearer(keys["inference"]["key"]), timeout=120)
        self.management = httpx.Client(base_url=management, headers=bearer(keys["management"]["key"]), timeout=600)
        self.model_store = model_store

    def versions(self, model: str) -> tuple[list[int], int | None]:
        """(versions registered, the default)."""
        described = self.management.get(f"/models/{model}/all")
        if described.status_code == 404:
            return [], None
        described.raise_for_status()
        default = self.management.get(f"/models/{model}").json()[0]["modelVersion"]
        return sorted(int(float(d["modelVersion"])) for d in described.json()), int(float(default))

    def deploy(self, artifact: Path, model: str) -> int:
        manifest = for_server(read_manifest(artifact), "torchserve", None)
        versions, _ = self.versions(model)
        version = max(versions, default=0) + 1
        file_name = f"{model}{VERSION_FILE}{version}"
        mar = build_mar(artifact, manifest, self.model_store, model, f"{version}.0", file_name)
        query = urllib.parse.urlencode({"url": mar.name, "model_name": model, "synchronous": "true",
                                        "initial_workers": manifest.serving.workers})  # fmt: skip
        registered = self.management.post(f"/models?{query}")
        if registered.status_code != 200:  # TorchServe keeps a version whose workers failed: unregister it
            self.management.delete(f"/models/{model}/{version}.0")
            mar.unlink(missing_ok=True)
            raise RolloutRefused(f"TorchServe did not load {model} version {version}: {registered.text[:300]}")
        probe = make_probe(artifact, manifest)
        if probe is not None:
            body, content_type = torchserve_body(probe)
            answer = self.inference.post(f"/predictions/{model}/{version}.0", content=body,
                                         headers={"Content-Type": content_type})  # fmt: skip
            if answer.status_code != 200:
                self.management.delete(f"/models/{model}/{version}.0")
                mar.unlink(missing_ok=True)
                why = f"HTTP {answer.status_code}: {answer.text[:200]}"
                raise RolloutRefused(f"{model} version {version} failed its probe on TorchServe ({why}); it took no "
                                     "traffic")  # fmt: skip
        self.set_default(model, version)
        return version

    def set_default(self, model: str, version: int) -> None:
        self.management.put(f"/models/{model}/{version}.0/set-default").raise_for_status()

    def rollback(self, model: str) -> int:
        versions, default = self.versions(model)
        older = [v for v in versions if default is not None and v < default]
        if not older:
            raise RolloutRefused(f"{model} has no version before {default} loaded on TorchServe")
        self.set_default(model, older[-1])
        return older[-1]

    def retire(self, model: str) -> list[int]:
        versions, default = self.versions(model)
        retired = [v for v in versions if v != default]
        for version in retired:
            self.management.delete(f"/models/{model}/{version}.0").raise_for_status()
            mar = self.model_store / (f"{model}{VERSION_FILE}{version}.mar" if version > 1 else f"{model}.mar")
            mar.unlink(missing_ok=True)
        return retired


# ---- Triton ----------------------------------------------------------------------------------------------------
class TritonVersions:
    def __init__(self, http: str, repository: Path, access: TritonAccess | None = None):
        access = access or read_triton_key()  # the key of the tritonserver `maas serve start` runs
        self.client = httpx.Client(base_url=f"http://{http}", timeout=600, headers=access.admin_headers())
        self.inference_headers = access.inference_headers()
        self.repository = repository

    def config_path(self, model: str) -> Path:
        return self.repository / model / "config.pbtxt"

    def read_config(self, model: str) -> mc.ModelConfig:
        return text_format.Parse(self.config_path(model).read_text(), mc.ModelConfig())

    def on_disk(self, model: str) -> list[int]:
        return sorted(int(p.name) for p in (self.repository / model).iterdir() if p.name.isdigit())

    def loaded(self, model: str) -> list[int]:
        index = self.client.post("/v2/repository/index", json={"ready": True})
        index.raise_for_status()
        return sorted(int(m["version"]) for m in index.json() if m["name"] == model and m.get("state") == "READY")

    def load(self, model: str, versions: list[int]) -> httpx.Response:
        """Reload ``model`` with exactly ``versions`` (the config on disk says so, for a restart too)."""
        config = self.read_config(model)
        config.ClearField("version_policy")
        config.version_policy.specific.versions.extend(versions)
        self.config_path(model).write_text(text_format.MessageToString(config))
        return self.client.post(f"/v2/repository/models/{model}/load")

    def deploy(self, artifact: Path, model: str, python_env: Path = Path(sys.prefix)) -> int:
        manifest = for_server(read_manifest(artifact), "triton", None)
        before = self.loaded(model)
        version = max(self.on_disk(model), default=0) + 1
        write_version(artifact, manifest, self.repository / model, version, python_env)
        loaded = self.load(model, [*before, version])
        if loaded.status_code != 200:
            self.load(model, before)  # the config on disk back as it was; the loaded versions never changed
            _remove(self.repository / model / str(version))
            raise RolloutRefused(f"Triton did not load {model} version {version}: {loaded.text[:300]}")
        probe = make_probe(artifact, manifest)
        failure = self.probe(model, version, probe) if probe is not None else None
        if failure:
            self.load(model, before)
            _remove(self.repository / model / str(version))
            raise RolloutRefused(f"{model} version {version} failed its probe on Triton ({failure}); unloaded")
        return version

    def probe(self, model: str, version: int, probe: dict) -> str | None:
        """None when version ``version`` answers its probe, else what went wrong."""
        if GENERATE in probe:
            answer = self.client.post(f"/v2/models/{model}/versions/{version}/generate", json=probe[GENERATE],
                                      headers=self.inference_headers)  # fmt: skip
            return None if answer.status_code == 200 else f"HTTP {answer.status_code}: {answer.text[:200]}"
        import tritonclient.http as triton_http  # here for its cost (numpy, gevent)

        client = triton_http.InferenceServerClient(str(self.client.base_url.netloc.decode()))
        try:
            client.infer(model, infer_inputs(triton_http, triton_inputs(probe)), model_version=str(version),
                         headers=dict(self.inference_headers))  # fmt: skip
        except Exception as exc:  # the server's refusal, whatever its type
            return str(exc)[:200]
        finally:
            client.close()
        return None

    def rollback(self, model: str) -> int:
        loaded = self.loaded(model)
        if len(loaded) < 2:
            raise RolloutRefused(f"{model} has no version before {loaded[-1] if loaded else '?'} loaded on Triton")
        answer = self.load(model, loaded[:-1])
        answer.raise_for_status()
        return loaded[-2]

    def retire(self, model: str) -> list[int]:
        loaded = self.loaded(model)
        keep = loaded[-1:]
        self.load(model, keep).raise_for_status()
        retired = [v for v in self.on_disk(model) if v not in keep]
        for version in retired:
            _remove(self.repository / model / str(version))
        return retired

    def versions(self, model: str) -> tuple[list[int], int | None]:
        loaded = self.loaded(model)
        return loaded, (loaded[-1] if loaded else None)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- command line ----------------------------------------------------------------------------------------------
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
            version = versions.deploy(artifact, model)
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
