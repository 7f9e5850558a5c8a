"""KServe's rules beyond its CRD schemas, and this project's for a pod that starts and serves what it should.

Run on documents that passed ``kserve_schema.schema_errors``. KServe's, from kserve/kserve at the commit in
``kserve_crd_schemas.json``'s ``source`` (files under ``pkg/``):

* the InferenceService webhook (``apis/serving/v1beta1/inference_service_validation.go``): the name, the
  ``serving.kserve.io/autoscalerClass`` annotation, ``PYTHONPATH`` refused in any container (>= 0.18), one predictor
  implementation, the autoscaling rules of the deployment mode (``validateAutoScalingCompExtension``), replicas
  (``component.go``);
* the ServingRuntime webhook (``webhook/admission/servingruntime/servingruntime_webhook.go``): ``PYTHONPATH``;
* the controller when it picks the runtime (``controller/v1beta1/inferenceservice/components/predictor.go``,
  ``utils/utils.go``): the storageUri's scheme, the runtime exists, is enabled, speaks the protocol and the format,
  has a ``kserve-container``;
* Knative's revision webhook (knative/serving ``pkg/apis/serving/k8s_validation.go``), in Knative mode: one port
  at most across the pod's containers, exactly one when there are several, and no probes on a container without
  one then (``multi-container-probing`` is off by default).

This project's (``MAAS:`` in the messages' reasons), each a way a cluster fails where the API server says nothing:
a storageUri listed by prefix ends in '/'; ``runAsNonRoot`` comes with a numeric ``runAsUser``; a Triton runtime
mounts a memory ``/dev/shm`` smaller than the pod's memory limit; a TorchServe runtime sets ``PROTOCOL_VERSION``;
only the containers KServe mounts the model into read ``/mnt/models``; ``canaryTrafficPercent``, 0..100, in Knative
mode only (Standard ignores it, kserve/kserve#5335: the new version takes every request at once).
"""

from __future__ import annotations

import re

from scripts.deploy.kserve_layout import MOUNT
from scripts.deploy.kserve_schema import quantity

ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # IsvcNameFmt
MODE_KEY, AUTOSCALER_KEY = "serving.kserve.io/deploymentMode", "serving.kserve.io/autoscalerClass"
KNATIVE_CLASS_KEY, KNATIVE_HPA = "autoscaling.knative.dev/class", "hpa.autoscaling.knative.dev"
MODES = {"Standard": "Standard", "Knative": "Knative", "RawDeployment": "Standard", "Serverless": "Knative"}
AUTOSCALER_CLASSES = ("hpa", "external", "keda", "none")
HPA_METRICS, KPA_METRICS = ("cpu", "memory"), ("concurrency", "rps")
IMPLEMENTATIONS = ("model", "huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow",
                   "triton", "xgboost")  # fmt: skip
# controller utils.go ValidateStorageURI (Azure blob is https://; "/" a local path)
STORAGE_SCHEMES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "oci://",
                   "oci+native://", "oci+fetch://", "hf://", "/")  # fmt: skip
# Object stores KServe's storage initializer lists by prefix: without the '/', <uri>_v2/... is downloaded too.
LISTED_BY_PREFIX = re.compile(r"^(s3://|gs://|https://[^/]+\.blob\.core\.windows\.net/)")
BLOCKED_ENV = ("PYTHONPATH",)  # pkg/validation/env_policy.go, KServe >= 0.18
MODEL_CONTAINER = "kserve-container"  # constants.InferenceServiceContainerName
# webhook/admission/pod/storage_initializer_injector.go: the containers the model's volume is mounted into
MOUNTED = (MODEL_CONTAINER, "transformer-container")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def inference_service_errors(doc: dict, runtimes: dict[str, dict]) -> list[str]:
    """KServe's and this project's rules for an InferenceService; ``runtimes``: the ServingRuntimes beside it."""
    meta, spec = doc["metadata"], doc["spec"]
    annotations = meta.get("annotations") or {}
    errors = []
    if not ISVC_NAME.match(meta["name"]):
        errors.append(f"metadata.name: {meta['name']!r}: KServe wants {ISVC_NAME.pattern}")
    autoscaler = annotations.get(AUTOSCALER_KEY)
    if autoscaler is not None and autoscaler not in AUTOSCALER_CLASSES:
        errors.append(f"metadata.annotations[{AUTOSCALER_KEY}]: {autoscaler!r} is not one of "
                      f"{list(AUTOSCALER_CLASSES)}")  # fmt: skip
    mode = annotations.get(MODE_KEY)
    if mode is not None and mode not in MODES:
        errors.append(f"metadata.annotations[{MODE_KEY}]: {mode!r} is not one of {list(MODES)} (MAAS: the modes "
                      "these manifests are written for)")  # fmt: skip
    for name in ("predictor", "transformer", "explainer"):
        if isinstance(spec.get(name), dict):
            errors += component_errors(spec[name], f"spec.{name}", MODES.get(mode, mode), annotations)
    predictor = spec["predictor"]
    implementations = [key for key in IMPLEMENTATIONS if key in predictor]
    if len(implementations) > 1 or not (implementations or predictor.get("containers")):
        errors.append(f"spec.predictor: exactly one of {', '.join(IMPLEMENTATIONS)} (or containers), got "
                      f"{implementations or 'none'}")  # fmt: skip
    if (predictor.get("model") or {}).get("name"):
        errors.append("spec.predictor.model.name: not allowed in a predictor (leave it empty)")
    for key in implementations:
        errors += storage_errors(predictor[key], f"spec.predictor.{key}", predictor)
    if predictor.get("model"):
        errors += runtime_choice_errors(predictor["model"], runtimes, MODES.get(mode, mode))
    return errors


def component_errors(component: dict, path: str, mode: str | None, annotations: dict) -> list[str]:
    errors = container_errors(containers_in(component, path), component.get("securityContext"))
    low, high = given(component, "minReplicas", 1), given(component, "maxReplicas", 0)  # validateReplicas' defaults
    if low < 0 or high < 0:
        errors.append(f"{path}: minReplicas and maxReplicas cannot be less than 0")
    if high != 0 and low > high:
        errors.append(f"{path}.minReplicas: {low} is greater than maxReplicas {high}")
    if given(component, "containerConcurrency", 0) < 0:
        errors.append(f"{path}.containerConcurrency: cannot be less than 0")
    canary = component.get("canaryTrafficPercent")
    if canary is not None and mode == "Standard":
        errors.append(f"{path}.canaryTrafficPercent: KServe splits traffic between revisions in Knative mode only "
                      "(MAAS: Standard ignores it, and the new version takes every request at once)")  # fmt: skip
    elif canary is not None and not 0 <= canary <= 100:
        errors.append(f"{path}.canaryTrafficPercent: {canary} is not a percentage in 0..100 (MAAS: Knative's route, "
                      "which KServe gives it to, refuses it)")  # fmt: skip
    return errors + autoscaling_errors(component, path, mode, annotations)


def autoscaling_errors(component: dict, path: str, mode: str | None, annotations: dict) -> list[str]:
    """validateAutoScalingCompExtension: Standard mode checks only with an HPA or KEDA autoscalerClass; any other
    mode (Knative, or none given) with Knative's HPA class the HPA rules, else Knative's own autoscaler's (KPA)."""
    metric, target, errors = component.get("scaleMetric"), component.get("scaleTarget"), []
    autoscaler, knative_hpa = annotations.get(AUTOSCALER_KEY), annotations.get(KNATIVE_CLASS_KEY) == KNATIVE_HPA
    if (mode == "Standard" and autoscaler == "hpa") or (mode != "Standard" and knative_hpa):
        if (metric or "cpu") not in HPA_METRICS:
            errors.append(f"{path}.scaleMetric: {metric!r} is not one of {list(HPA_METRICS)} (the HPA autoscaler)")
        if target is not None and ((metric or "cpu") == "cpu" and target < 1 or target > 100):
            errors.append(f"{path}.scaleTarget: {target} is not a utilization percentage in 1..100")
        for i, spec in enumerate((component.get("autoScaling") or {}).get("metrics") or []):
            if spec.get("type") != "Resource":
                errors.append(f"{path}.autoScaling.metrics[{i}].type: the HPA autoscaler takes Resource metrics only")
        if mode != "Standard" and given(component, "minReplicas", 1) < 1:
            errors.append(f"{path}.minReplicas: 0: Knative's HPA class cannot scale to zero (MAAS: 1 or more)")
    elif mode == "Standard" and autoscaler == "keda" and metric is not None:
        errors.append(f"{path}.scaleMetric: not supported with the keda autoscaler class (use autoScaling)")
    elif mode != "Standard":  # Knative's own autoscaler (KPA)
        if (metric or "concurrency") not in KPA_METRICS:
            errors.append(f"{path}.scaleMetric: {metric!r} needs the annotation {KNATIVE_CLASS_KEY}: {KNATIVE_HPA} in "
                          f"Knative mode (Knative's own autoscaler scales on {' or '.join(KPA_METRICS)})")  # fmt: skip
        if component.get("deploymentStrategy") is not None:
            errors.append(f"{path}.deploymentStrategy: only for the Standard deployment mode")
        if metric == "rps" and target is not None and target < 1:
            errors.append(f"{path}.scaleTarget: {target}: the rps target must be 1 or more")
    return errors


def given(mapping: dict, key: str, default):
    """The value at ``key``, or ``default`` when absent or null (the API server drops a null)."""
    value = mapping.get(key)
    return default if value is None else value


def containers_in(spec: dict, path: str) -> list[tuple[str, dict]]:
    """(path, container) of every container of a component or runtime spec, a predictor's implementation too."""
    found = [(f"{path}.{key}", spec[key]) for key in IMPLEMENTATIONS if isinstance(spec.get(key), dict)]
    for key in ("containers", "initContainers"):
        found += [(f"{path}.{key}[{i}]", c) for i, c in enumerate(spec.get(key) or []) if isinstance(c, dict)]
    return found


def container_errors(containers: list[tuple[str, dict]], pod_security: dict | None = None) -> list[str]:
    """PYTHONPATH refused (KServe); MAAS: runAsNonRoot only with a numeric, non-zero runAsUser (an image whose USER is
    a name, as TorchServe's ``model-server``, is refused by the kubelet: it cannot verify the user is not root)."""
    errors = []
    for path, container in containers:
        for i, env in enumerate(container.get("env") or []):
            if env.get("name") in BLOCKED_ENV:
                errors.append(f"{path}.env[{i}]: setting {env['name']} is not allowed (KServe >= 0.18 refuses it)")
        own = {k: v for k, v in (container.get("securityContext") or {}).items() if v is not None}
        security = {**(pod_security or {}), **own}
        if security.get("runAsNonRoot") and not security.get("runAsUser"):
            errors.append(f"{path}.securityContext: runAsNonRoot needs a numeric runAsUser other than 0 (MAAS: the "
                          "kubelet refuses an image whose user is a name, as TorchServe's "
                          "model-server)")  # fmt: skip
    return errors


def storage_errors(implementation: dict, path: str, predictor: dict) -> list[str]:
    uri = implementation.get("storageUri")
    if uri is None:
        return []
    errors = []
    if predictor.get("storageUris"):
        errors.append(f"{path}.storageUri: not allowed together with spec.predictor.storageUris")
    if not uri.startswith(STORAGE_SCHEMES):
        errors.append(f"{path}.storageUri: {uri!r} has none of KServe's schemes {', '.join(STORAGE_SCHEMES[:-1])}")
    elif LISTED_BY_PREFIX.match(uri) and not uri.endswith("/"):
        errors.append(f"{path}.storageUri: {uri} must end in '/' (MAAS: the download lists by prefix, so it would "
                      f"also fetch a sibling such as {uri}_v2/ into /mnt/models)")  # fmt: skip
    return errors


def runtime_choice_errors(model: dict, runtimes: dict[str, dict], mode: str | None = None) -> list[str]:
    """The controller's checks once it has the runtime the model names (predictor.go: disabled, protocol, format),
    the pod's memory limit above the runtime's /dev/shm (MAAS: tmpfs pages count against it), and Knative's."""
    name, path = model.get("runtime"), "spec.predictor.model.runtime"
    if name is None:
        return []  # KServe picks one with autoSelect: none of this project's
    if name not in runtimes:
        return [f"{path}: {name!r} has no ServingRuntime among the manifests"]
    runtime, errors = runtimes[name]["spec"], []
    if runtime.get("disabled"):
        errors.append(f"{path}: ServingRuntime {name!r} is disabled")
    protocol = model.get("protocolVersion", "v1")
    if protocol not in runtime.get("protocolVersions", ["v1"]):
        errors.append(f"spec.predictor.model.protocolVersion: {protocol!r} is not among ServingRuntime {name!r}'s "
                      f"{runtime.get('protocolVersions', ['v1'])}")  # fmt: skip
    if not model.get("modelFormat"):
        return [*errors, "spec.predictor.model.modelFormat: required"]
    wanted = format_label(model["modelFormat"])
    offered = {label for f in runtime.get("supportedModelFormats") or [] for label in (f.get("name"), format_label(f))}
    if wanted not in offered:
        errors.append(f"spec.predictor.model.modelFormat: {wanted} is not among ServingRuntime {name!r}'s formats "
                      f"{sorted(offered)}")  # fmt: skip
    wrapper_protocol = env_value(runtime.get("containers") or [], "PROTOCOL_VERSION")
    if wrapper_protocol not in (None, protocol):
        errors.append(f"spec.predictor.model.protocolVersion: {protocol!r}, but ServingRuntime {name!r} sets "
                      f"PROTOCOL_VERSION={wrapper_protocol}")  # fmt: skip
    limits = (model.get("resources") or {}).get("limits") or {}
    shm, memory = shm_volume(runtime).get("sizeLimit"), limits.get("memory")
    if shm is not None and memory is not None and quantity(memory) <= quantity(shm):
        errors.append(f"spec.predictor.model.resources.limits.memory: {memory} must be above the /dev/shm sizeLimit "
                      f"{shm} of ServingRuntime {name!r} (MAAS: its pages count against the memory limit)")  # fmt: skip
    if mode == "Knative":
        errors += knative_pod_errors(model, runtime, name)
    return errors


def knative_pod_errors(model: dict, runtime: dict, name: str) -> list[str]:
    """Knative's checks of the pod KServe makes: the runtime's containers, the model merged into kserve-container
    (its ports join the runtime's, its probes replace them). One port at most (the one Knative routes to); with
    several containers exactly one, and probes only on the container that has it."""
    containers = runtime.get("containers") or []
    errors, routed = [], 0
    for i, container in enumerate(containers):
        merged = container.get("name") == MODEL_CONTAINER
        where = f"{'spec.predictor.model, merged into ' if merged else ''}ServingRuntime {name!r}'s containers[{i}]"
        ports = {p.get("containerPort") for p in [*(container.get("ports") or []),
                                                  *((model.get("ports") or []) if merged else [])]}  # fmt: skip
        probes = [key for key in PROBES if (merged and model.get(key)) or container.get(key)]
        routed += len(ports)
        if probes and not ports and len(containers) > 1:
            errors.append(f"{where}: {', '.join(probes)} on a container without a port: Knative refuses it unless "
                          "its multi-container-probing feature is enabled")  # fmt: skip
    if routed > 1 or (routed == 0 and len(containers) > 1):
        errors.append(f"spec.predictor.model: {routed} container ports in ServingRuntime {name!r}'s pod of "
                      f"{len(containers)} container(s): Knative routes to exactly one")  # fmt: skip
    return errors


def format_label(model_format: dict) -> str:
    name, version = model_format.get("name"), model_format.get("version")
    return f"{name}:{version}" if version is not None else name


def env_value(containers: list[dict], name: str) -> str | None:
    return next((e.get("value") for c in containers for e in c.get("env") or [] if e.get("name") == name), None)


def shm_volume(runtime_spec: dict) -> dict:
    """The emptyDir mounted at /dev/shm in the runtime's containers ({} if none)."""
    mounted = {m["name"] for c in runtime_spec.get("containers") or [] for m in c.get("volumeMounts") or []
               if m.get("mountPath") == "/dev/shm"}  # fmt: skip
    volumes = [v.get("emptyDir") or {} for v in runtime_spec.get("volumes") or [] if v["name"] in mounted]
    return volumes[0] if volumes else {}


def serving_runtime_errors(doc: dict) -> list[str]:
    """KServe's ServingRuntime webhook (PYTHONPATH), its controller (a kserve-container), and MAAS: a Triton runtime
    mounts a memory emptyDir at /dev/shm (the Python backend's stubs exchange every batch through it; the container
    default is often 64 MiB); a runtime running TorchServe sets the wrapper's PROTOCOL_VERSION (KServe's TorchServe
    defaulting is going: kserve #5638); a container reading /mnt/models is one KServe mounts the model into."""
    spec = doc["spec"]
    containers = spec.get("containers") or []
    worker = containers_in(spec.get("workerSpec") or {}, "spec.workerSpec")
    errors = container_errors(containers_in(spec, "spec") + worker)
    formats = {f["name"] for f in spec.get("supportedModelFormats") or []}
    commands = " ".join(str(a) for c in containers for a in [*(c.get("command") or []), *(c.get("args") or [])])
    triton = "triton" in formats or re.search(r"triton(server|_supervisor)", commands)
    if triton and shm_volume(spec).get("medium") != "Memory":
        errors.append("spec.volumes: a Triton runtime needs an emptyDir with medium Memory mounted at /dev/shm "
                      "(MAAS: the Python backend's stubs pass every batch through it)")  # fmt: skip
    names = [c.get("name") for c in containers]
    if MODEL_CONTAINER not in names:
        errors.append(f"spec.containers: none is named {MODEL_CONTAINER}, which KServe merges the InferenceService's"
                      " model into (its controller: 'failed to find kserve-container')")  # fmt: skip
    for i, container in enumerate(containers):
        words = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if container.get("name") not in MOUNTED and any(str(MOUNT) in word for word in words):
            errors.append(f"spec.containers[{i}]: reads {MOUNT}, which KServe mounts into {' and '.join(MOUNTED)} "
                          "only (MAAS: name it transformer-container to have the model there)")  # fmt: skip
    if "torchserve" in commands and env_value(containers, "PROTOCOL_VERSION") is None:
        errors.append("spec.containers: a TorchServe runtime sets PROTOCOL_VERSION (MAAS: KServe's wrapper defaults "
                      "to v1, and KServe's TorchServe defaulting is being removed, kserve #5638)")  # fmt: skip
    return errors
