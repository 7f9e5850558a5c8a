"""KServe manifests built with the kserve SDK's models, and read back strictly.

Objects are the SDK's classes (``kserve`` 0.21.0, generated from KServe's API spec) and the Kubernetes client's
for pod fields (probes, resources, env), serialised by the SDK's ``ApiClient``. ``load_manifest`` reads a file
back into those classes: every key must be a field of the class the spec puts there, and the object must serialise
to exactly what was read, so a misspelt or misplaced field cannot pass. (The SDK's own deserialiser drops unknown
keys silently and knows no Kubernetes classes, hence this walk over the same generated type maps.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import kserve
import kubernetes.client as k8s
import yaml
from kserve import constants

from scripts.deploy.kserve_layout import MOUNT, POD_PROBE_NAME, TORCHSERVE_METRICS_PORT

TORCHSERVE_RUNTIME, TRITON_RUNTIME = "maas-torchserve", "maas-tritonserver"
TRITON_KEY_SECRET = "maas-triton-key"  # kubectl create secret generic maas-triton-key --from-literal=key=...
HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8080, 9000, 8002  # KServe's runtime defaults
MODES = {"Standard": ("cpu", "memory"), "Knative": ("concurrency", "rps", "cpu", "memory")}


class ManifestError(ValueError):
    """A manifest that does not match KServe's API: names the field."""


@dataclass(frozen=True)
class Scaling:
    """Replicas and the autoscaling rule: ``Standard`` mode (a Deployment with a HorizontalPodAutoscaler) scales on
    cpu or memory utilization in percent; ``Knative`` also on concurrency (in-flight requests per pod) or rps."""

    min_replicas: int = 1
    max_replicas: int = 4
    metric: str = "cpu"
    target: int = 70
    mode: str = "Standard"
    cpu: str = "2"
    memory: str = "4Gi"

    def __post_init__(self):
        if self.mode not in MODES or self.metric not in MODES[self.mode]:
            raise ManifestError(f"scale metric {self.metric!r} needs deployment mode Knative; Standard scales on "
                                f"{' or '.join(MODES['Standard'])}")  # fmt: skip
        if not 0 <= self.min_replicas <= self.max_replicas or (self.min_replicas == 0 and self.mode != "Knative"):
            raise ManifestError(f"replicas {self.min_replicas}..{self.max_replicas}: need 1 <= min <= max "
                                "(0 only in Knative mode, which scales to zero)")  # fmt: skip

    def resources(self) -> k8s.V1ResourceRequirements:
        amount = {"cpu": self.cpu, "memory": self.memory}
        return k8s.V1ResourceRequirements(requests=amount, limits=dict(amount))


def inference_service(model: str, server: str, storage_uri: str, scaling: Scaling, image_root: Path):
    """One model on one server (``torchserve`` or ``triton``) through our ServingRuntime, speaking v2."""
    ready = k8s.V1HTTPGetAction(path=f"/v2/models/{model}/ready", port=HTTP_PORT)
    if server == "torchserve":
        runtime, model_format = TORCHSERVE_RUNTIME, kserve.V1beta1ModelFormat(name="pytorch")
        deep = ["python3", str(MOUNT / "config" / POD_PROBE_NAME)]
    else:
        runtime, model_format = TRITON_RUNTIME, kserve.V1beta1ModelFormat(name="triton", version="2")
        deep = [str(image_root / ".venv/bin/python"), "-m", "scripts.serving.health", "triton",
                "--triton-http", f"127.0.0.1:{HTTP_PORT}", "--repository", str(MOUNT)]  # fmt: skip
    spec = kserve.V1beta1ModelSpec(
        model_format=model_format,
        runtime=runtime,
        protocol_version="v2",
        storage_uri=storage_uri,
        resources=scaling.resources(),
        # Loading a model may take minutes; until then neither of the others runs.
        startup_probe=k8s.V1Probe(http_get=ready, period_seconds=5, failure_threshold=60),
        readiness_probe=k8s.V1Probe(http_get=ready, period_seconds=5),
        # The deep check: a real inference per model (a dead worker or stub fails it while readiness says 200).
        liveness_probe=k8s.V1Probe(
            _exec=k8s.V1ExecAction(command=deep), period_seconds=15, timeout_seconds=10, failure_threshold=3
        ),  # fmt: skip
    )
    predictor = kserve.V1beta1PredictorSpec(
        model=spec,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        scale_metric=scaling.metric,
        scale_target=scaling.target,
    )
    return kserve.V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=k8s.V1ObjectMeta(
            name=f"{model}-{server}".replace("_", "-").lower(),
            annotations={"serving.kserve.io/deploymentMode": scaling.mode},
        ),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor),
    )


def serving_runtime(name: str, model_format: kserve.V1alpha1SupportedModelFormat, container: k8s.V1Container,
                    protocols: list[str], metrics_port: int, server_type: str):  # fmt: skip
    container.security_context = k8s.V1SecurityContext(
        run_as_non_root=True, allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
    )
    return kserve.V1alpha1ServingRuntime(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1ALPHA1_VERSION}",
        kind="ServingRuntime",
        # server-type makes KServe set the protocol's environment for TorchServe's wrapper (PROTOCOL_VERSION).
        metadata=k8s.V1ObjectMeta(name=name, annotations={"serving.kserve.io/server-type": server_type}),
        spec=kserve.V1alpha1ServingRuntimeSpec(
            annotations={"prometheus.kserve.io/port": str(metrics_port), "prometheus.kserve.io/path": "/metrics"},
            supported_model_formats=[model_format],
            protocol_versions=protocols,
            containers=[container],
        ),
    )


def torchserve_runtime(image: str):
    """KServe's TorchServe runtime's command, in an image that has this project's requirements installed."""
    args = ["torchserve", "--start", f"--model-store={MOUNT / 'model-store'}",
            f"--ts-config={MOUNT / 'config' / 'config.properties'}"]  # fmt: skip
    return serving_runtime(
        TORCHSERVE_RUNTIME,
        kserve.V1alpha1SupportedModelFormat(name="pytorch", version="1", auto_select=False),
        k8s.V1Container(name="kserve-container", image=image, args=args),
        ["v2"],
        TORCHSERVE_METRICS_PORT,
        "torchserve",
    )


def triton_runtime(image: str, image_root: Path):
    """tritonserver under this project's supervisor (self-healing stubs), from an image holding this project at
    ``image_root`` set up by scripts/setup.sh; the admin APIs' key comes from a Secret."""
    args = [f"--repository={MOUNT}", f"--http-port={HTTP_PORT}", f"--grpc-port={TRITON_GRPC_PORT}",
            f"--metrics-port={TRITON_METRICS_PORT}", "--address=0.0.0.0", "--key-env=MAAS_TRITON_KEY"]  # fmt: skip
    key = k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=TRITON_KEY_SECRET, key="key"))
    container = k8s.V1Container(
        name="kserve-container",
        image=image,
        command=[str(image_root / ".venv/bin/python"), "-m", "scripts.serving.triton_supervisor"],
        args=args,
        working_dir=str(image_root),
        env=[
            k8s.V1EnvVar(name="PYTHONPATH", value=str(image_root)),
            k8s.V1EnvVar(name="MAAS_TRITON_KEY", value_from=key),
        ],  # fmt: skip
    )
    return serving_runtime(
        TRITON_RUNTIME,
        kserve.V1alpha1SupportedModelFormat(name="triton", version="2", auto_select=False),
        container,
        ["v2", "grpc-v2"],
        TRITON_METRICS_PORT,
        "tritonserver",
    )


# ---- YAML out, strictly back in --------------------------------------------------------------------------
KINDS = {
    "InferenceService": (f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}", "V1beta1InferenceService"),
    "ServingRuntime": (f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1ALPHA1_VERSION}", "V1alpha1ServingRuntime"),
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def to_dict(obj) -> dict:
    return kserve.ApiClient().sanitize_for_serialization(obj)


def write_manifest(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by maas deploy kserve (kserve SDK models); check edits with: maas deploy check DIR\n"
    path.write_text(header + yaml.safe_dump(to_dict(obj), sort_keys=False))
    return path


def load_manifest(path: Path):
    """The file as the SDK's object; ManifestError naming the first field KServe's API does not have there."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise ManifestError(f"{path}: kind must be one of {', '.join(KINDS)}")
    api_version, class_name = KINDS[data["kind"]]
    if data.get("apiVersion") != api_version:
        raise ManifestError(f"{path}: apiVersion {data.get('apiVersion')!r}, expected {api_version!r}")
    obj = from_dict(data, class_name, data["kind"])
    if to_dict(obj) != data:
        raise ManifestError(f"{path}: does not serialise back to what was written (a value of the wrong type?)")
    return obj


def from_dict(data, type_name: str, where: str):
    """``type_name`` as the generated classes spell it: kserve's ``list[X]`` / ``dict(str, X)``, the Kubernetes
    client's ``List[X]`` / ``Dict[str, X]``."""
    if type_name.lower().startswith("list["):
        if not isinstance(data, list):
            raise ManifestError(f"{where}: expected a list")
        return [from_dict(item, type_name[5:-1], f"{where}[{i}]") for i, item in enumerate(data)]
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a mapping")
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {key: from_dict(value, value_type, f"{where}.{key}") for key, value in data.items()}
    if type_name in PRIMITIVES:
        if not isinstance(data, PRIMITIVES[type_name]) or (type_name == "int" and isinstance(data, bool)):
            raise ManifestError(f"{where}: expected {type_name}, got {type(data).__name__} {data!r}")
        return data
    cls = getattr(kserve.models, type_name, None) or getattr(k8s, type_name)
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a {type_name} mapping")
    fields = {key: attr for attr, key in cls.attribute_map.items()}
    for key in data:
        if key not in fields:
            raise ManifestError(f"{where}: {type_name} has no field {key!r}; it has {', '.join(sorted(fields))}")
    kwargs = {fields[k]: from_dict(v, cls.openapi_types[fields[k]], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the generated classes check required fields and enumerations
        raise ManifestError(f"{where}: {exc}") from None
