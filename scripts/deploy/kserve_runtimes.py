"""The ServingRuntimes of ``maas deploy kserve``, built with the kserve SDK's models.

* ``maas-torchserve``: KServe's TorchServe runtime command in an image with this project's requirements;
* ``maas-tritonserver``: tritonserver under this project's supervisor (self-healing stubs);
* ``maas-triton-openai`` (language models): the same tritonserver as ``kserve-container`` and the OpenAI frontend
  (``scripts/serving/openai_frontend.py``) as ``transformer-container``, the container KServe routes to. That name is
  KServe's collocation contract: KServe mounts the model (``/mnt/models``) into ``kserve-container`` and
  ``transformer-container`` only (``storage_initializer_injector.go``), and its Service targets the
  ``transformer-container``'s first port (``service_reconciler.go``); the frontend reads the tokenizers there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import kserve
import kubernetes.client as k8s
from kserve import constants

from scripts.deploy.kserve_layout import MOUNT, OPENAI_FRONTEND, TORCHSERVE_METRICS_PORT
from scripts.deploy.kserve_schema import QUANTITY, ManifestError, quantity
from scripts.serving.worker_env import TORCHSERVE_WORKER_ENV

TORCHSERVE_RUNTIME, TRITON_RUNTIME, OPENAI_RUNTIME = "maas-torchserve", "maas-tritonserver", "maas-triton-openai"
LM_FORMAT = kserve.V1alpha1SupportedModelFormat(name="maas-lm", version="1", auto_select=False)  # LMs' format only
TRITON_KEY_SECRET = "maas-triton-key"  # kubectl create secret generic maas-triton-key --from-literal=key=...
OPENAI_KEY_SECRET = "maas-openai-key"  # the OpenAI API's bearer key, the same way
HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8080, 9000, 8002  # KServe's runtime defaults
# In the OpenAI pod the frontend takes 9000, the port KServe routes to: tritonserver's gRPC moves to its own default.
OPENAI_PORT, LM_TRITON_GRPC_PORT = 9000, 8001
READY_PATH = "/health/ready"  # the frontend's: 200 once Triton answers and its language models are ready


@dataclass(frozen=True)
class Runtimes:
    """The ServingRuntimes' images and pod settings. ``run_as_user``: the numeric user the containers run as
    (``runAsNonRoot`` alone is refused by the kubelet for an image whose user is a name, as TorchServe's
    ``model-server``; KServe's own runtimes use 1000). ``shm_size``: the memory-backed ``/dev/shm`` of the Triton
    pod, through which the Python backend's stubs exchange every batch; it counts against the memory limit.
    ``openai_cpu``, ``openai_memory``: the OpenAI frontend's container, beside the model's (an HPA needs requests
    on every container of the pod)."""

    torchserve_image: str = "maas-handlers/torchserve:latest"
    triton_image: str = "maas-handlers/tritonserver:latest"
    image_root: Path = Path("/opt/maas")
    run_as_user: int = 1000
    shm_size: str = "1Gi"
    openai_cpu: str = "1"
    openai_memory: str = "1Gi"

    def __post_init__(self):
        if not 1 <= self.run_as_user <= 2**31 - 1:
            raise ManifestError(f"--run-as-user {self.run_as_user}: a non-root user id, 1..2147483647")
        for option, value in (("--shm-size", self.shm_size), ("--openai-cpu", self.openai_cpu),
                              ("--openai-memory", self.openai_memory)):  # fmt: skip
            if not QUANTITY.match(str(value)) or quantity(value) <= 0:
                raise ManifestError(f"{option} {value!r}: expected a positive Kubernetes quantity (1, 500m, 1Gi)")

    def check_fits(self, memory: str) -> None:
        if quantity(self.shm_size) >= quantity(memory):
            raise ManifestError(f"--shm-size {self.shm_size} must be below --memory {memory}: /dev/shm's "
                                "pages count against the pod's memory limit")  # fmt: skip

    @property
    def python(self) -> str:
        return str(self.image_root / ".venv/bin/python")


def serving_runtime(name: str, model_format: kserve.V1alpha1SupportedModelFormat, containers: list[k8s.V1Container],
                    protocols: list[str] | None, metrics_port: int, run_as_user: int, **spec):  # fmt: skip
    """``spec``: more ServingRuntimeSpec fields (volumes)."""
    for container in containers:
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
            containers=containers,
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
    env = [protocol, *(k8s.V1EnvVar(name=name, value=value) for name, value in TORCHSERVE_WORKER_ENV.items())]
    return serving_runtime(
        TORCHSERVE_RUNTIME,
        kserve.V1alpha1SupportedModelFormat(name="pytorch", version="1", auto_select=False),
        [k8s.V1Container(name="kserve-container", image=runtimes.torchserve_image, args=args, env=env)],
        ["v2"],
        TORCHSERVE_METRICS_PORT,
        runtimes.run_as_user,
    )


def secret_env(name: str, secret: str) -> k8s.V1EnvVar:
    key = k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key="key"))
    return k8s.V1EnvVar(name=name, value_from=key)


def triton_container(runtimes: Runtimes, grpc_port: int) -> k8s.V1Container:
    """tritonserver under the supervisor, serving KServe's mount: ``python -m`` from ``workingDir: image_root``
    finds the supervisor's code (no PYTHONPATH: KServe >= 0.18 refuses it); the admin APIs' key from a Secret."""
    args = [f"--repository={MOUNT}", f"--http-port={HTTP_PORT}", f"--grpc-port={grpc_port}",
            f"--metrics-port={TRITON_METRICS_PORT}", "--address=0.0.0.0", "--key-env=MAAS_TRITON_KEY"]  # fmt: skip
    return k8s.V1Container(
        name="kserve-container",
        image=runtimes.triton_image,
        command=[runtimes.python, "-m", "scripts.serving.triton_supervisor"],
        args=args,
        working_dir=str(runtimes.image_root),
        env=[secret_env("MAAS_TRITON_KEY", TRITON_KEY_SECRET)],
        # The Python backend's stubs exchange every batch with tritonserver through /dev/shm: a container's
        # default is often 64 MiB, so the pod gets a memory-backed one of --shm-size.
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
    )


def triton_pod(name: str, model_format, containers: list[k8s.V1Container], protocols, runtimes: Runtimes):
    shm = k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=runtimes.shm_size)
    return serving_runtime(name, model_format, containers, protocols, TRITON_METRICS_PORT, runtimes.run_as_user,
                           volumes=[k8s.V1Volume(name="dshm", empty_dir=shm)])  # fmt: skip


def triton_runtime(runtimes: Runtimes):
    """tritonserver under this project's supervisor, from an image holding this project at ``image_root`` set up by
    scripts/setup.sh; KServe routes to its HTTP port (8080)."""
    model_format = kserve.V1alpha1SupportedModelFormat(name="triton", version="2", auto_select=False)
    return triton_pod(TRITON_RUNTIME, model_format, [triton_container(runtimes, TRITON_GRPC_PORT)], ["v2", "grpc-v2"],
                      runtimes)  # fmt: skip


def openai_runtime(runtimes: Runtimes):
    """Language models on Triton behind the OpenAI API: tritonserver as in ``triton_runtime`` (gRPC on 8001) and the
    frontend beside it, on the port KServe routes to. Its probes are its own ``/health/ready``, which answers 200
    once Triton does and every language model is ready: the startup probe gives Triton minutes to load before
    liveness counts. No protocolVersions: the routed port speaks neither of KServe's (v1, v2), but the OpenAI API."""
    ready = k8s.V1HTTPGetAction(path=READY_PATH, port=OPENAI_PORT)
    amount = {"cpu": runtimes.openai_cpu, "memory": runtimes.openai_memory}
    frontend = k8s.V1Container(
        name="transformer-container",  # KServe's name for the routed container that also gets /mnt/models
        image=runtimes.triton_image,
        command=[runtimes.python, "-m", OPENAI_FRONTEND],
        args=["--repository", str(MOUNT), "--triton-grpc", f"127.0.0.1:{LM_TRITON_GRPC_PORT}", "--host", "0.0.0.0",
              "--port", str(OPENAI_PORT), "--key-env", "MAAS_OPENAI_KEY", "--triton-key-env", "MAAS_TRITON_KEY"],
        working_dir=str(runtimes.image_root),
        env=[secret_env("MAAS_OPENAI_KEY", OPENAI_KEY_SECRET), secret_env("MAAS_TRITON_KEY", TRITON_KEY_SECRET)],
        ports=[k8s.V1ContainerPort(container_port=OPENAI_PORT, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(requests=amount, limits=dict(amount)),
        startup_probe=k8s.V1Probe(http_get=ready, period_seconds=5, failure_threshold=60),
        readiness_probe=k8s.V1Probe(http_get=ready, period_seconds=5),
        liveness_probe=k8s.V1Probe(http_get=ready, period_seconds=15, timeout_seconds=10, failure_threshold=3),
    )  # fmt: skip
    containers = [triton_container(runtimes, LM_TRITON_GRPC_PORT), frontend]
    return triton_pod(OPENAI_RUNTIME, LM_FORMAT, containers, None, runtimes)
