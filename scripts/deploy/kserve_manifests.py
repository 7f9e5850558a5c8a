"""KServe InferenceServices built with the kserve SDK's models, written as YAML (the runtimes: ``kserve_runtimes.py``).

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

from scripts.deploy.kserve_layout import MOUNT, POD_PROBE_NAME, TORCHSERVE_INFERENCE_PORT
from scripts.deploy.kserve_rules import AUTOSCALER_KEY, HPA_METRICS, KNATIVE_CLASS_KEY, KNATIVE_HPA, MODE_KEY
from scripts.deploy.kserve_runtimes import HTTP_PORT, LM_FORMAT, OPENAI_RUNTIME, TORCHSERVE_RUNTIME, TRITON_RUNTIME
from scripts.deploy.kserve_schema import QUANTITY, ManifestError, quantity

MODES = {"Standard": HPA_METRICS, "Knative": ("concurrency", "rps", *HPA_METRICS)}


@dataclass(frozen=True)
class Scaling:
    """Replicas and the autoscaling rule: ``Standard`` mode (a Deployment with a HorizontalPodAutoscaler) scales on
    cpu or memory utilization in percent; ``Knative`` also on concurrency (in-flight requests per pod) or rps with
    its own autoscaler, which can scale to zero; cpu or memory there go through Knative's HPA class, which cannot.
    ``canary``: the percentage of requests for the revision these manifests make, the rest staying on the last one
    rolled out (``canaryTrafficPercent``; KServe splits traffic between revisions in Knative mode only)."""

    min_replicas: int = 1
    max_replicas: int = 4
    metric: str = "cpu"
    target: int = 70
    mode: str = "Standard"
    cpu: str = "2"
    memory: str = "4Gi"
    canary: int | None = None

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
        if self.canary is not None and not 1 <= self.canary <= 99:
            raise ManifestError(f"--canary {self.canary}: a percentage of the requests, 1..99")
        if self.canary is not None and self.mode != "Knative":
            raise ManifestError("--canary needs --mode Knative: KServe's canary rollout (canaryTrafficPercent) splits "
                                f"traffic between revisions in Knative mode only, not {self.mode}")  # fmt: skip

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


def model_uri(storage_uri: str, server: str, model: str) -> str:
    """``<storage-uri>/<server>/<model>/``: the trailing '/' keeps a prefix listing (S3, Azure) from also
    downloading a sibling such as ``<model>_v2/`` into /mnt/models."""
    return f"{storage_uri.rstrip('/')}/{server}/{model}/"


def service_name(model: str, server: str) -> str:
    """``<model>-<server>``, as KServe takes an InferenceService's name: lower case letters, digits and '-'."""
    return f"{model}-{server}".replace("_", "-").lower()


def inference_service(model: str, server: str, storage_uri: str, scaling: Scaling, image_root: Path,
                      language_model: bool = False):  # fmt: skip
    """One model on one server (``torchserve`` or ``triton``) through our ServingRuntime, from
    ``model_uri(storage_uri, server, model)``. A language model is routed to where its API is (``lm_routing``)."""
    ready = k8s.V1HTTPGetAction(path=f"/v2/models/{model}/ready", port=HTTP_PORT)
    if server == "torchserve":
        runtime, model_format = TORCHSERVE_RUNTIME, kserve.V1beta1ModelFormat(name="pytorch")
        deep = ["python3", str(MOUNT / "config" / POD_PROBE_NAME)]
    else:
        runtime, model_format = TRITON_RUNTIME, kserve.V1beta1ModelFormat(name="triton", version="2")
        deep = [str(image_root / ".venv/bin/python"), "-m", "scripts.serving.health", "triton",
                "--triton-http", f"127.0.0.1:{HTTP_PORT}", "--repository", str(MOUNT)]  # fmt: skip
    fields = {
        "runtime": runtime,
        "model_format": model_format,
        "protocol_version": "v2",
        # Loading a model may take minutes; until then neither of the others runs.
        "startup_probe": k8s.V1Probe(http_get=ready, period_seconds=5, failure_threshold=60),
        "readiness_probe": k8s.V1Probe(http_get=ready, period_seconds=5),
        # The deep check: a real inference per model (a dead worker or stub fails it while readiness says 200).
        "liveness_probe": k8s.V1Probe(_exec=k8s.V1ExecAction(command=deep), period_seconds=15, timeout_seconds=10,
                                      failure_threshold=3),
    }  # fmt: skip
    if language_model:
        fields.update(lm_routing(server, deep, scaling.mode))
    spec = kserve.V1beta1ModelSpec(storage_uri=model_uri(storage_uri, server, model), resources=scaling.resources(),
                                   **fields)  # fmt: skip
    predictor = kserve.V1beta1PredictorSpec(
        model=spec,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        scale_metric=scaling.metric,
        scale_target=scaling.target,
        canary_traffic_percent=scaling.canary,
    )
    return kserve.V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=k8s.V1ObjectMeta(name=service_name(model, server), annotations=scaling.annotations()),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor),
    )


def lm_routing(server: str, deep: list[str], mode: str) -> dict:
    """A language model's ModelSpec fields that differ from a classifier's.

    TorchServe: KServe's wrapper (port 8080) has routes for v1 and v2 only, and the generation handler answers at
    ``/predictions/<model>`` and ``/predictions/<model>/1.0/v1/...``: the model declares TorchServe's inference port,
    which KServe then routes to (the layout binds it to 0.0.0.0). Knative sends an HTTP readiness probe to the routed
    port whatever its own port, where TorchServe has no per-model readiness path, so startup and readiness are the
    deep probe too (one greedy token). Triton: the OpenAI runtime, speaking neither v1 nor v2. There tritonserver is
    a container without a port, on which Knative refuses probes (its multi-container-probing is off by default): in
    Knative mode it carries none, and the frontend's ``/health/ready`` (Triton and its models ready) stands for it.
    """
    if server == "torchserve":
        deep_exec = k8s.V1ExecAction(command=deep)
        return {
            "ports": [k8s.V1ContainerPort(container_port=TORCHSERVE_INFERENCE_PORT, protocol="TCP")],
            "startup_probe": k8s.V1Probe(_exec=deep_exec, period_seconds=5, timeout_seconds=10, failure_threshold=60),
            "readiness_probe": k8s.V1Probe(_exec=deep_exec, period_seconds=10, timeout_seconds=10),
        }
    fields = {"runtime": OPENAI_RUNTIME, "protocol_version": None,
              "model_format": kserve.V1beta1ModelFormat(name=LM_FORMAT.name, version=LM_FORMAT.version)}  # fmt: skip
    if mode == "Knative":
        fields.update(startup_probe=None, readiness_probe=None, liveness_probe=None)
    return fields


# ---- YAML out ----------------------------------------------------------------------------------------------
def to_dict(obj) -> dict:
    return kserve.ApiClient().sanitize_for_serialization(obj)


def write_manifest(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by maas deploy kserve (kserve SDK models); check edits with: maas deploy check DIR\n"
    path.write_text(header + yaml.safe_dump(to_dict(obj), sort_keys=False))
    return path
