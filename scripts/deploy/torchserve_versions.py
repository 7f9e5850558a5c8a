"""TorchServe's side of ``maas serve deploy``: a version registered beside the others, probed, then the default
(``rollout.py`` has the whole procedure)."""

from __future__ import annotations

import json
import urllib.parse
import zipfile
from pathlib import Path

import httpx

from handlers.artifact import MANIFEST_NAME, read_manifest
from scripts.deploy.version_rules import RolloutRefused, check_contract
from scripts.packaging.build import for_server
from scripts.packaging.probe import make_probe
from scripts.packaging.torchserve_archive import build_mar
from scripts.serving.keys import bearer
from scripts.serving.pod_probe import torchserve_body
from scripts.serving.probe import VERSION_FILE


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

    def served_manifest(self, model: str) -> dict | None:
        """The default version's ``pipeline.json``, from its archive (None when the model is not served)."""
        _, default = self.versions(model)
        if default is None:
            return None
        with zipfile.ZipFile(self.archive(model, default)) as archive:
            return json.loads(archive.read(f"artifact/{MANIFEST_NAME}"))

    def deploy(self, artifact: Path, model: str, new_contract: bool = False, canary: bool = False) -> int:
        """Register the next version beside the others, probe it, make it the default and return it; with
        ``canary``, it stays a version that is not the default (its share is sent to ``/predictions/<model>/<N>.0``)."""
        manifest = for_server(read_manifest(artifact), "torchserve", None)
        check_contract(manifest, self.served_manifest(model), model, new_contract)
        versions, _ = self.versions(model)
        version = max(versions, default=0) + 1
        mar = build_mar(artifact, manifest, self.model_store, model, f"{version}.0", self.archive(model, version).stem)
        query = urllib.parse.urlencode({"url": mar.name, "model_name": model, "synchronous": "true",
                                        "initial_workers": manifest.serving.workers})  # fmt: skip
        registered = self.management.post(f"/models?{query}")
        if registered.status_code != 200:  # TorchServe keeps a version whose workers failed: unregister it
            self.withdraw(model, version)
            raise RolloutRefused(f"TorchServe did not load {model} version {version}: {registered.text[:300]}")
        probe = make_probe(artifact, manifest)
        if probe is not None:
            body, content_type = torchserve_body(probe)
            answer = self.inference.post(f"/predictions/{model}/{version}.0", content=body,
                                         headers={"Content-Type": content_type})  # fmt: skip
            if answer.status_code != 200:
                self.withdraw(model, version)
                why = f"HTTP {answer.status_code}: {answer.text[:200]}"
                raise RolloutRefused(f"{model} version {version} failed its probe on TorchServe ({why}); it took no "
                                     "traffic")  # fmt: skip
        if not canary:
            self.set_default(model, version)
        return version

    def promote_canary(self, model: str, version: int) -> None:
        self.set_default(model, version)

    def end_canary(self, model: str, version: int) -> None:
        self.withdraw(model, version, check=True)

    def drop_canary(self, model: str) -> None:
        """Nothing to drop: the promoted canary is the default version itself."""

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
            self.withdraw(model, version, check=True)
        return retired

    def archive(self, model: str, version: int) -> Path:
        """Version 1 is the archive ``maas build`` wrote; the others ``deploy``'s ``<model>__v<N>.mar``."""
        return self.model_store / (f"{model}{VERSION_FILE}{version}.mar" if version > 1 else f"{model}.mar")

    def withdraw(self, model: str, version: int, check: bool = False) -> None:
        """Unregister a version and delete its archive."""
        answer = self.management.delete(f"/models/{model}/{version}.0")
        if check:
            answer.raise_for_status()
        self.archive(model, version).unlink(missing_ok=True)
