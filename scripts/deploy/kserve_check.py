"""``maas deploy check``: a deploy directory as KServe would take it, file by file.

Every manifest against KServe's CRD schema, strictly (``kserve_schema.py``), then KServe's and this project's rules
(``kserve_rules.py``); then each InferenceService's layout against what it names: the files its runtime reads, the
port KServe routes to (a language model's TorchServe), the language models an OpenAI runtime serves. Imports neither
the kserve SDK nor tritonclient.grpc (which cannot share a process), so any process, a test's too, can run it.
"""

from __future__ import annotations

from pathlib import Path

from handlers.settings import SERVERS
from scripts.deploy.kserve_layout import (
    OPENAI_FRONTEND,
    LayoutError,
    check_language_models,
    check_torchserve_layout,
    check_triton_layout,
)
from scripts.deploy.kserve_rules import inference_service_errors, serving_runtime_errors
from scripts.deploy.kserve_schema import ManifestError, load_documents, schema_errors
from scripts.serving.pod_probe import read_properties

SHOWN_ERRORS = 5  # per file, on the one error line


def refuse(path: Path, errors: list[str]) -> None:
    if errors:
        more = f" (and {len(errors) - SHOWN_ERRORS} more)" if len(errors) > SHOWN_ERRORS else ""
        raise ManifestError(f"{path}: {'; '.join(errors[:SHOWN_ERRORS])}{more}")


def check_manifests(folder: Path) -> list[tuple[Path, dict]]:
    """The InferenceServices of ``folder`` as (file, document), once every manifest there passed KServe's CRD
    schema, strictly, and KServe's and this project's rules; ManifestError naming the file and the fields."""
    return checked_manifests(folder)[0]


def checked_manifests(folder: Path) -> tuple[list[tuple[Path, dict]], dict[str, dict]]:
    """``check_manifests``' InferenceServices, and the ServingRuntimes by name."""
    documents = [(path, doc) for path in sorted(folder.glob("*.yaml")) for doc in load_documents(path)]
    for path, doc in documents:
        refuse(path, schema_errors(doc))
    runtimes = {doc["metadata"]["name"]: doc for _, doc in documents if doc["kind"] != "InferenceService"}
    services = [(path, doc) for path, doc in documents if doc["kind"] == "InferenceService"]
    for path, doc in documents:
        is_service = doc["kind"] == "InferenceService"
        refuse(path, inference_service_errors(doc, runtimes) if is_service else serving_runtime_errors(doc))
    if not services:
        raise ManifestError(f"{folder} holds no InferenceService")
    return services, runtimes


def check(out: Path) -> None:
    """LayoutError or ManifestError naming the first file that KServe could not use as written."""
    if not (out / "manifests").is_dir():
        what = "does not exist" if not out.exists() else "has no manifests/ folder"
        raise LayoutError(f"{out} {what}: expected a directory written by maas deploy kserve")
    services, runtimes = checked_manifests(out / "manifests")
    for path, service in services:
        model = service["spec"]["predictor"].get("model") or {}
        uri = model.get("storageUri") or ""
        server, name = ([""] + uri.rstrip("/").split("/"))[-2:]
        layout = out / server / name
        if server not in SERVERS or not layout.is_dir():
            raise LayoutError(f"{path}: storageUri {uri or None} should end /<server>/<model>/ of {layout}")
        served = check_torchserve_layout(layout) if server == "torchserve" else check_triton_layout(layout)
        if served != name:
            raise LayoutError(f"{layout} serves {served!r}, but {path} expects {name!r}")
        if server == "torchserve":
            check_routed_port(path, model, layout)
        elif runs_frontend(runtimes.get(model.get("runtime")) or {}):
            check_language_models(layout)


def runs_frontend(runtime: dict) -> bool:
    containers = (runtime.get("spec") or {}).get("containers") or []
    return any(OPENAI_FRONTEND in map(str, [*(c.get("command") or []), *(c.get("args") or [])]) for c in containers)


def check_routed_port(path: Path, model: dict, layout: Path) -> None:
    """A port the model declares is the one KServe routes to: TorchServe's inference API must listen there, on the
    pod's address (a language model's; the others are reached through KServe's server on 8080)."""
    ports = [port.get("containerPort") for port in model.get("ports") or []]
    config = layout / "config" / "config.properties"
    address = read_properties(config).get("inference_address")
    if ports and address != f"http://0.0.0.0:{ports[0]}":
        raise LayoutError(f"{config}: inference_address={address}, but {path} routes to port {ports[0]}: expected "
                          f"http://0.0.0.0:{ports[0]}")  # fmt: skip
