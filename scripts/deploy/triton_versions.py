"""Triton's side of ``maas serve deploy``: a version directory loaded beside the others under a specific version
policy, probed by name; a canary loaded as the sibling model ``<model>-canary`` (``rollout.py`` has the whole
procedure)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import httpx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from handlers.artifact import MANIFEST_NAME, read_manifest
from scripts.deploy.version_rules import RolloutRefused, check_contract
from scripts.packaging.build import for_server
from scripts.packaging.probe import make_probe
from scripts.packaging.triton_repository import write_version
from scripts.serving.canary import canary_name
from scripts.serving.client import infer_inputs
from scripts.serving.keys import TritonAccess, read_triton_key
from scripts.serving.probe import GENERATE, PROBE_NAME, triton_inputs


class TritonVersions:
    def __init__(self, http: str, repository: Path, access: TritonAccess | None = None):
        access = access or read_triton_key()  # the key of the tritonserver `maas serve start` runs
        self.address = http
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

    def load(self, model: str, versions: list[int], config: mc.ModelConfig | None = None) -> httpx.Response:
        """Reload ``model`` with exactly ``versions`` (the config on disk says so, for a restart too)."""
        config = config or self.read_config(model)
        config.ClearField("version_policy")
        config.version_policy.specific.versions.extend(versions)
        self.config_path(model).write_text(text_format.MessageToString(config))
        return self.client.post(f"/v2/repository/models/{model}/load")

    def served_manifest(self, model: str) -> dict | None:
        loaded = self.loaded(model)
        if not loaded:
            return None
        return json.loads((self.repository / model / str(loaded[-1]) / "artifact" / MANIFEST_NAME).read_text())

    def deploy(self, artifact: Path, model: str, new_contract: bool = False, canary: bool = False,
               python_env: Path = Path(sys.prefix)) -> int:  # fmt: skip
        """Load the next version beside the others, probe it, and return it; with ``canary``, as the sibling model
        ``<model>-canary`` (requests without a version keep going to ``model``'s versions)."""
        manifest = for_server(read_manifest(artifact), "triton", None)
        check_contract(manifest, self.served_manifest(model), model, new_contract)
        before = self.loaded(model)
        version = max(self.on_disk(model), default=0) + 1
        if canary:
            return self.deploy_canary(artifact, manifest, model, version, python_env)
        write_version(artifact, manifest, self.repository / model, version, python_env)
        loaded = self.load(model, [*before, version])
        if loaded.status_code != 200:  # the loaded versions never changed: only the config on disk goes back
            self.withdraw(model, version, before)
            raise RolloutRefused(f"Triton did not load {model} version {version}: {loaded.text[:300]}")
        probe = make_probe(artifact, manifest)
        failure = self.probe(model, version, probe) if probe is not None else None
        if failure:
            self.withdraw(model, version, before)
            raise RolloutRefused(f"{model} version {version} failed its probe on Triton ({failure}); unloaded")
        return version

    def deploy_canary(self, artifact: Path, manifest, model: str, version: int, python_env: Path) -> int:
        sibling = canary_name(model)
        if (self.repository / sibling).exists():
            raise RolloutRefused(f"{sibling} is in {self.repository} already: promote or roll back its canary first")
        write_version(artifact, manifest, self.repository / sibling, version, python_env)
        config = self.read_config(model)  # the served model's settings, under the sibling's name
        config.name = sibling
        loaded = self.load(sibling, [version], config)
        probe = make_probe(artifact, manifest)
        failure = loaded.text[:300] if loaded.status_code != 200 else probe and self.probe(sibling, version, probe)
        if failure:
            self.drop_canary(model)
            raise RolloutRefused(f"{model} version {version} failed as a canary on Triton ({failure}); unloaded")
        return version

    def promote_canary(self, model: str, version: int) -> None:
        """Load the canary's version under ``model`` itself: the highest version, it takes the requests without one."""
        version_dir = self.repository / model / str(version)
        shutil.copytree(self.repository / canary_name(model) / str(version), version_dir)
        before = self.loaded(model)
        loaded = self.load(model, [*before, version])
        probe_file = version_dir / PROBE_NAME
        probe = json.loads(probe_file.read_text()) if probe_file.exists() else None
        failure = loaded.text[:300] if loaded.status_code != 200 else probe and self.probe(model, version, probe)
        if failure:
            self.withdraw(model, version, before)
            raise RolloutRefused(f"{model} version {version} did not load under {model} on Triton ({failure})")

    def end_canary(self, model: str, version: int) -> None:
        self.drop_canary(model)

    def drop_canary(self, model: str) -> None:
        """Unload ``<model>-canary`` (Triton lets its requests in flight finish) and delete it."""
        sibling = canary_name(model)
        self.client.post(f"/v2/repository/models/{sibling}/unload")
        shutil.rmtree(self.repository / sibling, ignore_errors=True)

    def probe(self, model: str, version: int, probe: dict) -> str | None:
        """None when version ``version`` answers its probe, else what went wrong."""
        if GENERATE in probe:
            answer = self.client.post(f"/v2/models/{model}/versions/{version}/generate", json=probe[GENERATE],
                                      headers=self.inference_headers)  # fmt: skip
            return None if answer.status_code == 200 else f"HTTP {answer.status_code}: {answer.text[:200]}"
        import tritonclient.http as triton_http  # here for its cost (numpy, gevent)

        client = triton_http.InferenceServerClient(self.address)
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
            shutil.rmtree(self.repository / model / str(version), ignore_errors=True)
        return retired

    def withdraw(self, model: str, version: int, before: list[int]) -> None:
        """Reload ``model`` with the versions it had before ``version``, and delete that version's directory."""
        self.load(model, before)
        shutil.rmtree(self.repository / model / str(version), ignore_errors=True)

    def versions(self, model: str) -> tuple[list[int], int | None]:
        loaded = self.loaded(model)
        return loaded, (loaded[-1] if loaded else None)
