"""Storage layouts for KServe's runtimes, one per model and server, ready to copy to a bucket or volume.

    <out>/torchserve/<model>/config/config.properties   TorchServe inside the pod (below)
    <out>/torchserve/<model>/config/log4j2.xml          this project's bounded logging, through ``vmargs``
    <out>/torchserve/<model>/config/maas_probe.py       the deep liveness probe (standard library only)
    <out>/torchserve/<model>/model-store/<model>.mar    the archive, as ``maas build`` makes it
    <out>/triton/<model>/<model>/config.pbtxt, 1/       a Triton model repository holding the one model

KServe downloads a model's ``storageUri`` to ``/mnt/models``; its TorchServe runtime runs
``torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`` and
KServe's own server (port 8080, the wrapper from pytorch/serve's ``kubernetes/kserve``) forwards v2 requests to
``http://<inference_address>/v2/models/<model>/infer``; its Triton runtime serves ``/mnt/models`` as the repository.
A language model's TorchServe listens on the pod's address instead: KServe routes to it (``kserve_manifests.py``).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import yaml

from handlers.artifact import read_manifest
from scripts import REPO_ROOT
from scripts.serving import pod_probe
from scripts.serving.pod_probe import read_properties
from scripts.serving.probe import PROBE_NAME

MOUNT = Path("/mnt/models")  # where KServe's storage initializer puts the storageUri's files
TORCHSERVE_INFERENCE_PORT = 8085  # KServe's own server takes 8080 and 8081 (its gRPC) in the same container
TORCHSERVE_MANAGEMENT_PORT = 8086
TORCHSERVE_METRICS_PORT = 8082  # the kserve-torchserve runtime's Prometheus scrape port
PROBE_SCRIPT = Path(pod_probe.__file__)  # the deep liveness probe (standard library only), copied as:
POD_PROBE_NAME = "maas_probe.py"  # its name in the layout's config/, which the manifests' liveness probe runs
# Named, not imported: the frontend loads FastAPI and tritonclient.grpc, and generation_build tritonclient.grpc,
# which cannot share a process with the kserve SDK (scripts/deploy/kserve.py).
OPENAI_FRONTEND = "scripts.serving.openai_frontend"  # the OpenAI runtime's frontend module
LM_TASK = "text_generation"  # scripts.packaging.generation_build.TEXT_GENERATION
EXPLAINER_SUFFIX = "_explain"  # scripts.packaging.explain_build: an explainer has no probe (too dear for one)


class LayoutError(ValueError):
    """A layout that KServe's runtime could not serve: names the file that is missing or wrong."""


def torchserve_pod_properties(model: str, model_config: dict, mount: Path = MOUNT, routed: bool = False) -> str:
    """TorchServe's config.properties inside a KServe pod, serving the one archive ``<model>.mar``; ``routed``:
    KServe routes to TorchServe's inference API itself (a language model's), which then listens on 0.0.0.0."""
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {model: {"1.0": {"defaultVersion": True, "marName": f"{model}.mar", **model_config}}},
    }
    reach = (
        "# TorchServe in a KServe pod (maas deploy kserve). KServe routes clients to its inference API (a language\n"
        "# model's); management stays on loopback, metrics are open to the pod network for Prometheus."
        if routed else
        "# TorchServe in a KServe pod (maas deploy kserve). Clients reach KServe's server on port 8080, which\n"
        "# forwards to TorchServe on loopback: only the metrics port is open to the pod network, for Prometheus."
    )  # fmt: skip
    return "\n".join([
        reach,
        f"inference_address=http://{'0.0.0.0' if routed else '127.0.0.1'}:{TORCHSERVE_INFERENCE_PORT}",
        f"management_address=http://127.0.0.1:{TORCHSERVE_MANAGEMENT_PORT}",
        f"metrics_address=http://0.0.0.0:{TORCHSERVE_METRICS_PORT}",
        "grpc_inference_address=127.0.0.1",
        "grpc_inference_port=7070",
        "grpc_management_address=127.0.0.1",
        "grpc_management_port=7071",
        f"model_store={mount / 'model-store'}",
        "load_models=all",
        "# KServe's wrapper reads the model names from the snapshot (and waits for their workers).",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
        "# Token auth is off: the wrapper sends no token, and a pod's key would differ in every replica. Put",
        "# authentication where KServe puts it (the ingress or service mesh in front of the InferenceService).",
        "disable_token_authorization=true",
        "enable_model_api=false",
        f"allowed_urls=^file://{mount / 'model-store'}/.*\\\\.mar$",
        "install_py_dep_per_model=false",
        "# The runtime's TS_SERVICE_ENVELOPE (kservev2) is ignored: our handlers read the v2 body themselves,",
        "# every request of a batch (TorchServe 0.12's kservev2 envelope reads the first one only).",
        "enable_envvars_config=false",
        "max_request_size=8388608",
        "max_response_size=8388608",
        "job_queue_size=100",
        "default_response_timeout=60",
        "default_workers_per_model=1",
        "metrics_mode=prometheus",
        "model_metrics_auto_detect=true",
        f"vmargs=-Dlog4j.configurationFile=file://{mount / 'config' / 'log4j2.xml'}",
        "",
    ])  # fmt: skip


def mar_model_config(mar: Path) -> dict:
    """The batch settings an archive was built with (its model-config.yaml)."""
    with zipfile.ZipFile(mar) as archive:
        config = yaml.safe_load(archive.read("model-config.yaml"))
    keys = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
    return {key: config[key] for key in keys if key in config}


def finish_torchserve_layout(layout: Path, model: str, routed: bool = False) -> None:
    """Write the config directory beside ``<layout>/model-store/<model>.mar``."""
    config_dir = layout / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    mar = layout / "model-store" / f"{model}.mar"
    properties = torchserve_pod_properties(model, mar_model_config(mar), routed=routed)
    (config_dir / "config.properties").write_text(properties)
    shutil.copy2(REPO_ROOT / "log4j2.xml", config_dir / "log4j2.xml")
    shutil.copy2(PROBE_SCRIPT, config_dir / POD_PROBE_NAME)


def check_torchserve_layout(layout: Path) -> str:
    """The model a TorchServe layout serves; LayoutError naming the first file that is missing or wrong."""
    config = layout / "config" / "config.properties"
    if not config.is_file():
        raise LayoutError(f"{config} is missing: KServe's TorchServe runtime starts with --ts-config={config}")
    properties = read_properties(config)
    if "model_snapshot" not in properties:
        raise LayoutError(f"{config} has no model_snapshot: KServe's wrapper reads the model names from it")
    models = json.loads(properties["model_snapshot"])["models"]
    for model, versions in models.items():
        for version in versions.values():
            mar = layout / "model-store" / version["marName"]
            if not mar.is_file():
                raise LayoutError(f"{mar} is missing: {config} serves model {model!r} from it")
            with zipfile.ZipFile(mar) as archive:
                if PROBE_NAME not in archive.namelist():
                    raise LayoutError(f"{mar} holds no {PROBE_NAME}: the probes ({POD_PROBE_NAME}) send it")
    for name in ("log4j2.xml", POD_PROBE_NAME):
        if not (layout / "config" / name).is_file():
            raise LayoutError(f"{layout / 'config' / name} is missing: config.properties and the probe use it")
    return next(iter(models))


def check_triton_layout(layout: Path) -> str:
    """The model a Triton layout (a one-model repository) serves; LayoutError naming what is missing."""
    configs = sorted(layout.glob("*/config.pbtxt"))
    if not configs:
        raise LayoutError(f"{layout} holds no <model>/config.pbtxt: it is not a Triton model repository")
    for config in configs:
        entry = config.parent / "1" / "model.py"
        ensemble = 'platform: "ensemble"' in config.read_text()
        if not ensemble and not entry.is_file():
            raise LayoutError(f"{entry} is missing: the Python backend loads the model from it")
        explainer = config.parent.name.endswith(EXPLAINER_SUFFIX)  # the health check asks it only if it is ready
        if not ensemble and not explainer and not (config.parent / "1" / PROBE_NAME).is_file():
            raise LayoutError(f"{config.parent / '1' / PROBE_NAME} is missing: the liveness probe sends it")
    return layout.name


def check_language_models(layout: Path) -> list[str]:
    """The language models of a Triton layout, each with the files the OpenAI frontend and the model load (its
    artifact under ``<model>/1/artifact/``); LayoutError if there is none, or one is incomplete."""
    found = []
    for manifest_path in sorted(layout.glob("*/1/artifact/pipeline.json")):
        artifact = manifest_path.parent
        try:
            manifest = read_manifest(artifact, verify=False)  # checksums: maas build checked them; a model is GBs
        except ValueError as exc:  # not JSON, or fields this version does not know
            raise LayoutError(str(exc)) from None
        if manifest.task != LM_TASK:
            continue
        missing = [name for name in manifest.files if not (artifact / name).is_file()]
        if missing:
            raise LayoutError(f"{artifact / missing[0]} is missing: the OpenAI frontend and Triton load the model "
                              "and its tokenizer from there")  # fmt: skip
        found.append(artifact.parent.parent.name)
    if not found:
        raise LayoutError(f"{layout} holds no language model (<model>/1/artifact/pipeline.json of task {LM_TASK}): "
                          "the OpenAI runtime would serve nothing")  # fmt: skip
    return found
