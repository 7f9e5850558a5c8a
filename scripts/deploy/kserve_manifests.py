"""KServe manifests built with the kserve SDK's models, written as YAML.

Objects are the SDK's classes (``kserve`` 0.21.0, generated from KServe's API spec) and the Kubernetes client's
for pod fields (probes, resources, env, volumes), serialised by the SDK's ``ApiClient``. What KServe makes of them is
checked by ``maas deploy check`` against KServe's own CRD schemas and admission rules (``kserve_schema.py``,
``kserve_rules.py``), which every written manifest must pass. Needs KServe >= 0.16 (the ``Standard``/``Knative``
deployment-mode names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import kserve
import kubernetes.client as k8s
import yaml
from kserve import constants

from scripts.deploy.kserve_layout import MOUNT, POD_PROBE_NAME, TORCHSERVE_METRICS_PORT
from scripts.deploy.kserve_rules import AUTOSCALER_KEY, HPA_METRICS, KNATIVE_CLASS_KEY, KNATIVE_HPA, MODE_KEY
from scripts.deploy.kserve_schema import QUANTITY, ManifestError, quantity

TORCHSERVE_RUNTIME, TRITON_RUNTIME = "maas-torchserve", "maas-tritonserver"
TRITON_KEY_SECRET = "maas-triton-key"  # kubectl create secret generic maas-triton-key --from-literal=key=...
HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8080, 9000, 8002  # KServe's runtime defaults
MODES = {"Standard": HPA_METRICS, "Knative": ("concurrency", "rps", *HPA_METRICS)}


@dataclass(frozen=True)
class Scaling:
    """Replicas and the autoscaling rule: ``Standard`` mode (a Deployment with a HorizontalPodAutoscaler) scales on
    cpu or memory utilization in percent; ``Knative`` also on concurrency (in-flight requests per pod) or rps with
    its own autoscaler, which can scale to zero; cpu or memory there go through Knative's HPA class, which cannot."""

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
        if self.min_replicas == 0 and self.metric in HPA_METRICS:
            raise ManifestError(f"--min-replicas 0 scales to zero on concurrency or rps only: Knative scales on "
                                f"{self.metric} with its HPA class, which keeps one replica at least")  # fmt: skip
        percent = self.metric in HPA_METRICS  # utilization; concurrency and rps count per pod
        if not 1 <= self.target <= (100 if percent else 2**31 - 1):
            raise ManifestError(f"scale target {self.target}: {'a percentage, 1..100' if percent else '1 or more'}")
        for option, value in (("--cpu", self.cpu), ("--memory", self.memory)):
            if not QUANTITY.match(str(value)) or quantity(value) <= 0:
                raise ManifestError(f"{option} {value!r}: expected a positive Kubernetes quantity (2, 500m, 4Gi)")

    def resources(self) -> k8s.V1ResourceRequirements:
        amount = {"cpu": self.cpu, "memory": self.memory}
        return k8s.V1ResourceRequirements(requests=amount, limits=dict(amount))

    def annotations(self) -> dict[str, str]:
        """The mode, and the autoscaler KServe should set up: the HPA in Standard mode (KServe's webhook then checks
        the target), Knative's HPA class for cpu or memory in Knative mode (its own autoscaler refuses them)."""
        annotations = {MODE_KEY: self.mode}
        if self.mode == "Standard":
            annotations[AUTOSCALER_KEY] = "hpa"
        elif self.metric in HPA_METRICS:
            annotations[KNATIVE_CLASS_KEY] = KNATIVE_HPA
        return annotations


@dataclass(frozen=True)
class Runtimes:
    """The ServingRuntimes' images and pod settings. ``run_as_user``: the numeric user the containers run as
    (``runAsNonRoot`` alone is refused by the kubelet for an image whose user is a name, as TorchServe's
    ``model-server``; KServe's own runtimes use 1000). ``shm_size``: the memory-backed ``/dev/shm`` of the Triton
    pod, through which the Python backend's stubs exchange every batch; it counts against the memory limit."""

    torchserve_image: str = "maas-handlers/torchserve:latest"
    triton_image: str = "maas-handlers/tritonserver:latest"
    image_root: Path = Path("/opt/maas")
    run_as_user: int = 1000
    shm_size: str = "1Gi"

    def __post_init__(self):
        if not 1 <= self.run_as_user <= 2**31 - 1:
            raise ManifestError(f"--run-as-user {self.run_as_user}: a non-root user id, 1..2147483647")
        if not QUANTITY.match(str(self.shm_size)) or quantity(self.shm_size) <= 0:
            raise ManifestError(f"--shm-size {self.shm_size!r}: expected a positive Kubernetes quantity (1Gi, 512Mi)")

    def check_fits(self, scaling: Scaling) -> None:
        if quantity(self.shm_size) >= quantity(scaling.memory):
            raise ManifestError(f"--shm-size {self.shm_size} must be below --memory {scaling.memory}: /dev/shm's "
                                "pages count against the pod's memory limit")  # fmt: skip


def model_uri(storage_uri: str, server: str, model: str) -> str:
    """``<storage-uri>/<server>/<model>/``: the trailing '/' keeps a prefix listing (S3, Azure) from also
    downloading a sibling such as ``<model>_v2/`` into /mnt/models."""
    return f"{storage_uri.rstrip('/')}/{server}/{model}/"


def service_name(model: str, server: str) -> str:
    """``<model>-<server>``, as KServe takes an InferenceService's name: lower case letters, digits and '-'."""
    return f"{model}-{server}".replace("_", "-").lower()


def inference_service(model: str, server: str, storage_uri: str, scaling: Scaling, image_root: Path):
    """One model on one server (``torchserve`` or ``triton``) through our ServingRuntime, speaking v2, from
    ``model_uri(storage_uri, server, model)``."""
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
        storage_uri=model_uri(storage_uri, server, model),
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
        metadata=k8s.V1ObjectMeta(name=service_name(model, server), annotations=scaling.annotations()),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor),
    )


def serving_runtime(name: str, model_format: kserve.V1alpha1SupportedModelFormat, container: k8s.V1Container,
                    protocols: list[str], metrics_port: int, run_as_user: int, **spec):  # fmt: skip
    """``spec``: more ServingRuntimeSpec fields (volumes)."""
    container.security_context = k8s.V1SecurityContext(
        run_as_non_root=True, run_as_user=run_as_user, allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )  # fmt: skip
    return kserve.V1alpha1ServingRuntime(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1ALPHA1_VERSION}",
        kind="ServingRuntime",
        metadata=k8s.V1ObjectMeta(name=name),
        spec=kserve.V1alpha1ServingRuntimeSpec(
            annotations={"prometheus.kserve.io/port": str(metrics_port), "prometheus.kserve.io/path": "/metrics"},
            supported_model_formats=[model_format],
            protocol_versions=protocols,
            containers=[container],
            **spec,
        ),
    )


def torchserve_runtime(runtimes: Runtimes):
    """KServe's TorchServe runtime's command, in an image that has this project's requirements installed."""
    args = ["torchserve", "--start", f"--model-store={MOUNT / 'model-store'}",
            f"--ts-config={MOUNT / 'config' / 'config.properties'}"]  # fmt: skip
    # KServe's wrapper speaks v1 unless PROTOCOL_VERSION says otherwise. KServe sets it only for runtimes it knows
    # as TorchServe (by name before 0.17, by annotation since) and is removing that (kserve #5638): we set it.
    protocol = k8s.V1EnvVar(name="PROTOCOL_VERSION", value="v2")
    return serving_runtime(
        TORCHSERVE_RUNTIME,
        kserve.V1alpha1SupportedModelFormat(name="pytorch", version="1", auto_select=False),
        k8s.V1Container(name="kserve-container", image=runtimes.torchserve_image, args=args, env=[protocol]),
        ["v2"],
        TORCHSERVE_METRICS_PORT,
        runtimes.run_as_user,
    )


def triton_runtime(runtimes: Runtimes):
    """tritonserver under this project's supervisor (self-healing stubs), from an image holding this project at
    ``image_root`` set up by scripts/setup.sh; the admin APIs' key comes from a Secret. ``python -m`` with the
    working directory ``image_root`` finds the supervisor's code (no PYTHONPATH: KServe >= 0.18 refuses it)."""
    root = runtimes.image_root
    args = [f"--repository={MOUNT}", f"--http-port={HTTP_PORT}", f"--grpc-port={TRITON_GRPC_PORT}",
            f"--metrics-port={TRITON_METRICS_PORT}", "--address=0.0.0.0", "--key-env=MAAS_TRITON_KEY"]  # fmt: skip
    key = k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=TRITON_KEY_SECRET, key="key"))
    container = k8s.V1Container(
        name="kserve-container",
        image=runtimes.triton_image,
        command=[str(root / ".venv/bin/python"), "-m", "scripts.serving.triton_supervisor"],
        args=args,
        working_dir=str(root),
        env=[k8s.V1EnvVar(name="MAAS_TRITON_KEY", value_from=key)],
        # The Python backend's stubs exchange every batch with tritonserver through /dev/shm: a container's
        # default is often 64 MiB, so the pod gets a memory-backed one of --shm-size.
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
    )
    shm = k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=runtimes.shm_size)
    return serving_runtime(
        TRITON_RUNTIME,
        kserve.V1alpha1SupportedModelFormat(name="triton", version="2", auto_select=False),
        container,
        ["v2", "grpc-v2"],
        TRITON_METRICS_PORT,
        runtimes.run_as_user,
        volumes=[k8s.V1Volume(name="dshm", empty_dir=shm)],
    )


# ---- YAML out ----------------------------------------------------------------------------------------------
def to_dict(obj) -> dict:
    return kserve.ApiClient().sanitize_for_serialization(obj)


def write_manifest(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by maas deploy kserve (kserve SDK models); check edits with: maas deploy check DIR\n"
    path.write_text(header + yaml.safe_dump(to_dict(obj), sort_keys=False))
    return path
