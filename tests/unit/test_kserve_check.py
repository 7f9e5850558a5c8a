"""``maas deploy check`` against KServe's own rules, and what ``maas deploy kserve`` writes to pass them.

The manifests are written by the project's own ``write_manifests`` in a child process: the kserve SDK and
tritonclient.grpc cannot share one, and other unit tests import the latter. The checks (``kserve_check``,
``kserve_schema``, ``kserve_rules``) import neither and run here, on copies edited one field at a time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from scripts import REPO_ROOT
from scripts.deploy import update_kserve_schemas
from scripts.deploy.kserve_check import check_manifests
from scripts.deploy.kserve_schema import KEYWORDS, ManifestError, quantity, vendored

WRITE = """
import json, sys
from pathlib import Path
from scripts.deploy.kserve import write_manifests
from scripts.deploy.kserve_manifests import ManifestError, Scaling
from scripts.deploy.kserve_runtimes import Runtimes
out = Path(sys.argv[1])
write_manifests(out / "standard", ["digits", "sentiment"], "s3://my-bucket/maas", Scaling(), Runtimes())
write_manifests(out / "knative-cpu", ["digits"], "s3://my-bucket/maas/", Scaling(mode="Knative", metric="cpu"),
                Runtimes(run_as_user=2000, shm_size="512Mi"))
write_manifests(out / "knative-concurrency", ["digits"], "pvc://models/maas",
                Scaling(mode="Knative", metric="concurrency", min_replicas=0, target=10), Runtimes())
refusals = {
    "knative cpu to zero": lambda: Scaling(mode="Knative", metric="cpu", min_replicas=0),
    "cpu two": lambda: Scaling(cpu="two"),
    "target 150": lambda: Scaling(target=150),
    "shm not below memory": lambda: write_manifests(out / "x", [], "s3://b/m", Scaling(memory="1Gi"), Runtimes()),
    "root": lambda: Runtimes(run_as_user=0),
}
refused = {}
for name, make in refusals.items():
    try:
        make()
    except ManifestError as exc:
        refused[name] = str(exc)
print(json.dumps(refused))
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(folder of the written manifest folders, the refusals' messages)."""
    out = tmp_path_factory.mktemp("kserve-manifests")
    run = subprocess.run([sys.executable, "-c", WRITE, str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out, json.loads(run.stdout.splitlines()[-1])


def read(folder: Path, name: str) -> dict:
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def copied(written, tmp_path: Path, config: str = "standard") -> Path:
    return Path(shutil.copytree(written[0] / config, tmp_path / config))


def edited(folder: Path, name: str, change) -> Path:
    data = read(folder, name)
    change(data)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def refusal(folder: Path) -> str:
    with pytest.raises(ManifestError) as refused:
        check_manifests(folder)
    return str(refused.value)


# ---- what maas deploy kserve writes -----------------------------------------------------------------------
@pytest.mark.parametrize("config", ["standard", "knative-cpu", "knative-concurrency"])
def test_the_written_manifests_pass_kserves_rules(written, config):
    services = check_manifests(written[0] / config)
    assert len(services) == (4 if config == "standard" else 2)


def test_knative_scaling_on_cpu_uses_knatives_hpa_class_which_keeps_a_replica(written):
    """Issue 23, item 1: Knative's own autoscaler (KPA) takes concurrency or rps only; KServe's webhook refuses cpu
    or memory without the HPA class."""
    out, refused = written
    annotations = {config: read(out / config, "digits-triton")["metadata"]["annotations"]
                   for config in ("standard", "knative-cpu", "knative-concurrency")}  # fmt: skip
    assert annotations["knative-cpu"] == {"serving.kserve.io/deploymentMode": "Knative",
                                          "autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev"}  # fmt: skip
    assert annotations["knative-concurrency"] == {"serving.kserve.io/deploymentMode": "Knative"}
    assert annotations["standard"] == {"serving.kserve.io/deploymentMode": "Standard",
                                       "serving.kserve.io/autoscalerClass": "hpa"}  # fmt: skip
    assert "keeps one replica" in refused["knative cpu to zero"]
    assert "'two'" in refused["cpu two"] and "1..100" in refused["target 150"]


def test_the_runtimes_run_as_a_numeric_user(written):
    """Item 2: runAsNonRoot with an image whose user is a name (TorchServe's model-server) needs runAsUser."""
    out, refused = written
    for config, user in (("standard", 1000), ("knative-cpu", 2000)):
        for server in ("torchserve", "triton"):
            security = read(out / config, f"servingruntime-{server}")["spec"]["containers"][0]["securityContext"]
            assert (security["runAsNonRoot"], security["runAsUser"]) == (True, user)
    assert "--run-as-user 0" in refused["root"]


def test_the_triton_runtime_mounts_a_memory_dev_shm_below_the_memory_limit(written):
    """Item 3: the Python backend's stubs exchange every batch through /dev/shm."""
    out, refused = written
    for config, size in (("standard", "1Gi"), ("knative-cpu", "512Mi")):
        spec = read(out / config, "servingruntime-triton")["spec"]
        assert spec["volumes"] == [{"emptyDir": {"medium": "Memory", "sizeLimit": size}, "name": "dshm"}]
        assert spec["containers"][0]["volumeMounts"] == [{"mountPath": "/dev/shm", "name": "dshm"}]
    assert "volumes" not in read(out / "standard", "servingruntime-torchserve")["spec"]
    assert "--shm-size 1Gi must be below --memory 1Gi" in refused["shm not below memory"]


def test_storage_uris_end_in_a_slash(written):
    """Item 4: KServe's S3 download lists by prefix; .../digits would also fetch .../digits_v2/."""
    out, _ = written
    uris = {(config, server): read(out / config, f"digits-{server}")["spec"]["predictor"]["model"]["storageUri"]
            for config in ("standard", "knative-cpu", "knative-concurrency")
            for server in ("torchserve", "triton")}  # fmt: skip
    assert uris["standard", "triton"] == "s3://my-bucket/maas/triton/digits/"
    assert uris["knative-cpu", "torchserve"] == "s3://my-bucket/maas/torchserve/digits/"  # given with a '/'
    assert uris["knative-concurrency", "triton"] == "pvc://models/maas/triton/digits/"


def test_the_torchserve_runtime_sets_its_protocol_and_no_runtime_sets_pythonpath(written):
    """Item 5 (and PYTHONPATH, refused by KServe >= 0.18): no reliance on KServe's TorchServe defaulting. TorchServe's
    workers get the OpenMP spin of ``maas serve start``'s (scripts/serving/worker_env.py); Triton keeps its own."""
    out, _ = written
    torchserve, triton = (read(out / "standard", f"servingruntime-{s}") for s in ("torchserve", "triton"))
    env = [{"name": "PROTOCOL_VERSION", "value": "v2"}, {"name": "GOMP_SPINCOUNT", "value": "10000"}]
    assert torchserve["spec"]["containers"][0]["env"] == env
    assert "annotations" not in torchserve["metadata"]  # no serving.kserve.io/server-type
    assert [e["name"] for e in triton["spec"]["containers"][0]["env"]] == ["MAAS_TRITON_KEY"]
    assert triton["spec"]["containers"][0]["workingDir"] == "/opt/maas"  # python -m finds the supervisor there


# ---- one edit at a time: refused, naming the field -----------------------------------------------------------
def predictor(data: dict) -> dict:
    return data["spec"]["predictor"]


def model(data: dict) -> dict:
    return data["spec"]["predictor"]["model"]


def container(data: dict) -> dict:
    return data["spec"]["containers"][0]


def to_knative(data: dict) -> None:
    annotations = data["metadata"]["annotations"]
    annotations.pop("serving.kserve.io/autoscalerClass")
    annotations["serving.kserve.io/deploymentMode"] = "Knative"


def annotate(data: dict, key: str, value: str) -> None:
    data["metadata"]["annotations"][key] = value


def both(**amount):
    """Requests and limits alike."""
    return lambda d: [model(d)["resources"][kind].update(amount) for kind in ("requests", "limits")]


SLASHLESS = "spec.predictor.model.storageUri: s3://my-bucket/maas/torchserve/digits must end in '/'"
KNATIVE_CPU = "spec.predictor.scaleMetric: 'cpu' needs the annotation autoscaling.knative.dev/class: hpa."
REFUSED = [  # (name, file, the one edit, what the error must say)
    ("unknown scaleMetric", "digits-torchserve", lambda d: predictor(d).update(scaleMetric="gpu"),
     "spec.predictor.scaleMetric: 'gpu' is not one of ['cpu', 'memory', 'concurrency', 'rps']"),
    ("cpu: two", "digits-torchserve", lambda d: model(d)["resources"]["requests"].update(cpu="two"),
     "spec.predictor.model.resources.requests.cpu: 'two' is not a Kubernetes quantity"),
    ("memory: 4 Gi", "digits-triton", lambda d: model(d)["resources"]["limits"].update(memory="4 Gi"),
     "spec.predictor.model.resources.limits.memory: '4 Gi' is not a Kubernetes quantity"),
    ("cpu: 0.5 unquoted", "digits-triton", lambda d: model(d)["resources"]["limits"].update(cpu=0.5),
     "spec.predictor.model.resources.limits.cpu: expected an integer or a string"),
    ("name Digits_TS", "digits-torchserve", lambda d: d["metadata"].update(name="Digits_TS"),
     "metadata.name: 'Digits_TS' is not a DNS-1123 subdomain"),
    ("name with a dot", "digits-torchserve", lambda d: d["metadata"].update(name="digits.ts"),
     "metadata.name: 'digits.ts': KServe wants ^[a-z]([-a-z0-9]*[a-z0-9])?$"),
    ("duplicate env names", "digits-torchserve", lambda d: model(d).update(env=[{"name": "A"}, {"name": "A"}]),
     "spec.predictor.model.env[1]: duplicate name 'A'"),
    ("duplicate ports, protocol TCP by default", "digits-triton",
     lambda d: model(d).update(ports=[{"containerPort": 8080}, {"containerPort": 8080, "protocol": "TCP"}]),
     "spec.predictor.model.ports[1]: duplicate containerPort 8080 protocol 'TCP'"),
    ("int32 overflow", "digits-torchserve", lambda d: predictor(d).update(maxReplicas=3000000000),
     "spec.predictor.maxReplicas: 3000000000 is out of the int32 range"),
    ("wrong type", "digits-torchserve", lambda d: predictor(d).update(maxReplicas="4"),
     "spec.predictor.maxReplicas: expected integer, got string '4'"),
    ("unknown field", "digits-torchserve", lambda d: model(d).update(storageURI=model(d).pop("storageUri")),
     "spec.predictor.model.storageURI: unknown field (did you mean 'storageUri'?)"),
    ("misplaced field", "digits-torchserve", lambda d: predictor(d).update(storageUri=model(d).pop("storageUri")),
     "spec.predictor.storageUri: unknown field"),
    ("unknown metadata field", "digits-triton", lambda d: d["metadata"].update(lables={"a": "b"}),
     "metadata.lables: unknown field"),
    ("bad label key", "digits-triton", lambda d: d["metadata"].update(labels={"team name": "a"}),
     "metadata.labels[team name]: not a qualified key"),
    ("knative cpu without the HPA class", "digits-triton", to_knative, KNATIVE_CPU),
    ("unknown autoscaler class", "digits-triton", lambda d: annotate(d, "serving.kserve.io/autoscalerClass", "kpa"),
     "metadata.annotations[serving.kserve.io/autoscalerClass]: 'kpa' is not one of"),
    ("HPA target above 100", "digits-triton", lambda d: predictor(d).update(scaleTarget=150),
     "spec.predictor.scaleTarget: 150 is not a utilization percentage in 1..100"),
    ("runAsNonRoot without runAsUser", "servingruntime-torchserve",
     lambda d: container(d)["securityContext"].pop("runAsUser"),
     "spec.containers[0].securityContext: runAsNonRoot needs a numeric runAsUser"),
    ("PYTHONPATH in a runtime", "servingruntime-triton",
     lambda d: container(d)["env"].append({"name": "PYTHONPATH", "value": "/opt/maas"}),
     "spec.containers[0].env[1]: setting PYTHONPATH is not allowed"),
    ("PYTHONPATH in a predictor", "digits-triton", lambda d: model(d).update(env=[{"name": "PYTHONPATH"}]),
     "spec.predictor.model.env[0]: setting PYTHONPATH is not allowed"),
    ("storageUri without a trailing slash", "digits-torchserve",
     lambda d: model(d).update(storageUri=model(d)["storageUri"].rstrip("/")), SLASHLESS),
    ("storageUri of no scheme KServe knows", "digits-torchserve", lambda d: model(d).update(storageUri="ftp://x/y/"),
     "spec.predictor.model.storageUri: 'ftp://x/y/' has none of KServe's"),
    ("Triton runtime without /dev/shm", "servingruntime-triton",
     lambda d: (d["spec"].pop("volumes"), container(d).pop("volumeMounts")),
     "spec.volumes: a Triton runtime needs an emptyDir with medium Memory"),
    ("memory limit not above /dev/shm", "digits-triton", lambda d: model(d)["resources"]["limits"].update(memory="1Gi"),
     "spec.predictor.model.resources.limits.memory: 1Gi must be above the /dev/shm sizeLimit 1Gi"),
    ("TorchServe runtime without PROTOCOL_VERSION", "servingruntime-torchserve", lambda d: container(d).pop("env"),
     "spec.containers: a TorchServe runtime sets PROTOCOL_VERSION"),
    ("protocol the runtime does not speak", "digits-triton", lambda d: model(d).update(protocolVersion="v1"),
     "spec.predictor.model.protocolVersion: 'v1' is not among ServingRuntime 'maas-tritonserver'"),
    ("format the runtime does not serve", "digits-triton", lambda d: model(d)["modelFormat"].update(name="onnx"),
     "spec.predictor.model.modelFormat: onnx:2 is not among"),
    ("runtime not among the manifests", "digits-triton", lambda d: model(d).update(runtime="kserve-nothing"),
     "spec.predictor.model.runtime: 'kserve-nothing' has no ServingRuntime"),
]  # fmt: skip


@pytest.mark.parametrize("file,change,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_check_refuses_one_edit_naming_the_field(written, tmp_path, file, change, message):
    folder = edited(copied(written, tmp_path), file, change)
    error = refusal(folder)
    assert error.startswith(f"{folder / file}.yaml: ") and message in error, error


def test_check_refuses_knative_hpa_scaling_to_zero(written, tmp_path):
    folder = edited(
        copied(written, tmp_path, "knative-cpu"), "digits-triton", lambda d: predictor(d).update(minReplicas=0)
    )
    assert "spec.predictor.minReplicas: 0: Knative's HPA class cannot scale to zero" in refusal(folder)


def test_check_refuses_a_key_given_twice(written, tmp_path):
    folder = copied(written, tmp_path)
    path = folder / "digits-triton.yaml"
    path.write_text(path.read_text().replace("    maxReplicas: 4\n", "    maxReplicas: 4\n    maxReplicas: 8\n"))
    assert re.search(r"digits-triton\.yaml: line \d+: duplicate key 'maxReplicas'", refusal(folder))


def knative_with_hpa_class(data: dict) -> None:
    to_knative(data)
    annotate(data, "autoscaling.knative.dev/class", "hpa.autoscaling.knative.dev")


def standard_without_autoscaler_class(data: dict) -> None:
    data["metadata"]["annotations"].pop("serving.kserve.io/autoscalerClass")
    predictor(data)["scaleTarget"] = 150  # KServe's webhook checks the target only with the hpa class


ACCEPTED = [
    ("cpu: 2 as an integer", "digits-torchserve", both(cpu=2)),
    ("memory in Mi", "digits-triton", both(memory="4096Mi")),
    ("cpu in millicores", "digits-triton", both(cpu="500m")),
    ("knative cpu with the HPA class", "digits-triton", knative_with_hpa_class),
    ("a null field, dropped by the API server", "digits-triton", lambda d: model(d).update(env=None)),
    ("Standard without an autoscaler class", "digits-triton", standard_without_autoscaler_class),
]


@pytest.mark.parametrize("file,change", [r[1:] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_check_accepts_what_kubernetes_and_kserve_accept(written, tmp_path, file, change):
    check_manifests(edited(copied(written, tmp_path), file, change))


# ---- the vendored schema and its updater ----------------------------------------------------------------
def test_the_vendored_schemas_name_their_source_and_use_only_handled_keywords():
    schemas = vendored()
    source = schemas["source"]
    assert source["repository"] == "kserve/kserve" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["version"] and source["date"] and len(source["files"]) == 3
    assert set(schemas["schemas"]) == {"serving.kserve.io/v1beta1/InferenceService",
                                       "serving.kserve.io/v1alpha1/ServingRuntime",
                                       "serving.kserve.io/v1alpha1/ClusterServingRuntime"}  # fmt: skip
    text = json.dumps(schemas)
    assert set(re.findall(r'"#/\$defs/([^"]+)"', text)) == set(schemas["$defs"])  # every reference resolves
    for name, node in [*schemas["schemas"].items(), *schemas["$defs"].items()]:
        update_kserve_schemas.clean(node, name)  # ValueError on a keyword kserve_schema.py does not handle


def test_the_updater_shares_repeated_subtrees_losslessly_and_refuses_unknown_keywords():
    fields = {f"field{i}": {"type": "string", "maxLength": 63} for i in range(12)}
    shared = {"type": "object", "properties": fields}  # over 400 bytes, three times
    listed = {"type": "array", "items": shared}
    roots = {"a/v1/A": {"type": "object", "properties": {"one": shared, "two": listed}},
             "b/v1/B": {"type": "object", "properties": {"three": shared}}}  # fmt: skip
    schemas, defs = update_kserve_schemas.share(roots)
    assert len(defs) == 1 and schemas["b/v1/B"]["properties"]["three"] == {"$ref": f"#/$defs/{next(iter(defs))}"}
    assert {kind: update_kserve_schemas.expand(schema, defs) for kind, schema in schemas.items()} == roots
    cel = {"type": "object", "x-kubernetes-validations": [{"rule": "self.a > 0"}]}
    with pytest.raises(ValueError, match=r"x-kubernetes-validations"):
        update_kserve_schemas.clean({"type": "object", "properties": {"spec": cel}}, "Kind")
    assert {"description", "title"}.isdisjoint(KEYWORDS)


def test_quantities_read_as_kubernetes_reads_them():
    assert quantity("4Gi") == 4 * 2**30 and quantity("500m") == Decimal("0.5") and quantity(2) == 2
    assert quantity("1e3") == 1000 and quantity("1.5k") == 1500 and quantity("+.5") == Decimal("0.5")
    for bad in ("two", "4 Gi", "1.5.0", "4GB", ""):
        with pytest.raises(ValueError):
            quantity(bad)
