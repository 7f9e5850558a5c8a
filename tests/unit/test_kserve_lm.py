"""``maas deploy kserve`` with a language model: TorchServe routed to its own inference API (the OpenAI routes under
``/predictions/<model>/1.0/v1``), Triton behind the OpenAI runtime ``maas-triton-openai``, every file passing
``maas deploy check``.

The deploy runs as the ``maas`` command in a process of its own (the kserve SDK and tritonclient.grpc cannot share
one, and other unit tests import the latter); the checks import neither and run here. No server starts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from scripts import REPO_ROOT
from scripts.deploy.kserve_check import check, check_manifests
from scripts.deploy.kserve_layout import LayoutError
from scripts.deploy.kserve_schema import ManifestError
from scripts.serving.pod_probe import read_properties

STORAGE = "s3://my-bucket/maas"
MODEL = "lm_gpt2"  # the lm_artifacts fixture's GPT-2 (tests/fixtures/lm.py)
FRONTEND_COMMAND = ["/opt/maas/.venv/bin/python", "-m", "scripts.serving.openai_frontend"]
FRONTEND_ARGS = ["--repository", "/mnt/models", "--triton-grpc", "127.0.0.1:8001", "--host", "0.0.0.0",
                 "--port", "9000", "--key-env", "MAAS_OPENAI_KEY", "--triton-key-env", "MAAS_TRITON_KEY"]  # fmt: skip
WRITE_KNATIVE = """
import sys
from pathlib import Path
from scripts.deploy.kserve import write_manifests
from scripts.deploy.kserve_manifests import Scaling
from scripts.deploy.kserve_runtimes import Runtimes
out, uri = Path(sys.argv[1]), "pvc://models/maas"
scaling = Scaling(mode="Knative", metric="concurrency", min_replicas=0, target=10)
write_manifests(out / "knative", ["digits", "lm_gpt2"], uri, scaling, Runtimes(), frozenset({"lm_gpt2"}))
write_manifests(out / "classifiers", ["digits"], uri, scaling, Runtimes())
"""


def maas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def deployed(lm_artifacts, tmp_path_factory) -> Path:
    """The deploy directory of the tiny GPT-2 artifact, Standard mode, as ``maas deploy kserve`` writes it."""
    out = tmp_path_factory.mktemp("kserve-lm")
    result = maas("deploy", "kserve", str(lm_artifacts["gpt2"]), "--storage-uri", STORAGE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def knative(tmp_path_factory) -> Path:
    """Manifests only, Knative mode: a classifier and the language model, and the classifier alone."""
    out = tmp_path_factory.mktemp("kserve-lm-knative")
    run = subprocess.run([sys.executable, "-c", WRITE_KNATIVE, str(out)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


def read(folder: Path, name: str) -> dict:
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def containers(runtime: dict) -> dict[str, dict]:
    return {c["name"]: c for c in runtime["spec"]["containers"]}


def copied(deployed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(deployed, tmp_path / "copy"))


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# ---- what is written ------------------------------------------------------------------------------------------
def test_the_deploy_passes_maas_deploy_check(deployed):
    check(deployed)  # raises on the first file KServe could not use
    names = sorted(p.name for p in (deployed / "manifests").glob("*.yaml"))
    assert names == [f"{MODEL}-torchserve.yaml", f"{MODEL}-triton.yaml", "servingruntime-torchserve.yaml",
                     "servingruntime-triton-openai.yaml", "servingruntime-triton.yaml"]  # fmt: skip


def test_the_triton_service_runs_on_the_openai_runtime_with_the_frontends_command_line(deployed):
    manifests = deployed / "manifests"
    model = read(manifests, f"{MODEL}-triton")["spec"]["predictor"]["model"]
    assert (model["runtime"], model["modelFormat"]) == ("maas-triton-openai", {"name": "maas-lm", "version": "1"})
    assert model["storageUri"] == f"{STORAGE}/triton/{MODEL}/" and "protocolVersion" not in model
    runtime = read(manifests, "servingruntime-triton-openai")
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["maas-lm"]
    pod = containers(runtime)
    assert list(pod) == ["kserve-container", "transformer-container"]  # KServe's collocation names
    frontend = pod["transformer-container"]
    assert (frontend["command"], frontend["args"]) == (FRONTEND_COMMAND, FRONTEND_ARGS)
    assert frontend["ports"] == [{"containerPort": 9000, "protocol": "TCP"}]  # the port KServe routes to
    assert frontend["workingDir"] == "/opt/maas" and frontend["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    # tritonserver exactly as in maas-tritonserver, but for its gRPC port: the frontend has 9000
    triton = containers(read(manifests, "servingruntime-triton"))["kserve-container"]
    ported = [a.replace("--grpc-port=9000", "--grpc-port=8001") for a in triton["args"]]
    assert pod["kserve-container"] == {**triton, "args": ported}


def test_the_frontend_is_probed_on_health_ready_and_tritonserver_keeps_its_probes(deployed):
    frontend = containers(read(deployed / "manifests", "servingruntime-triton-openai"))["transformer-container"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert frontend[probe]["httpGet"] == {"path": "/health/ready", "port": 9000}, probe
    model = read(deployed / "manifests", f"{MODEL}-triton")["spec"]["predictor"]["model"]
    assert model["readinessProbe"]["httpGet"] == {"path": f"/v2/models/{MODEL}/ready", "port": 8080}
    assert model["livenessProbe"]["exec"]["command"][-4:] == ["--triton-http", "127.0.0.1:8080", "--repository",
                                                              "/mnt/models"]  # fmt: skip


def test_the_keys_come_from_secrets(deployed):
    pod = containers(read(deployed / "manifests", "servingruntime-triton-openai"))
    secrets = {(name, env["name"]): env["valueFrom"]["secretKeyRef"]["name"] for name, c in pod.items()
               for env in c["env"]}  # fmt: skip
    assert secrets == {("kserve-container", "MAAS_TRITON_KEY"): "maas-triton-key",
                       ("transformer-container", "MAAS_OPENAI_KEY"): "maas-openai-key",
                       ("transformer-container", "MAAS_TRITON_KEY"): "maas-triton-key"}  # fmt: skip
    assert all("value" not in env for c in pod.values() for env in c["env"])


def test_the_torchserve_layout_is_complete_and_what_kserve_routes_to(deployed):
    layout = deployed / "torchserve" / MODEL
    for name in ("config/config.properties", "config/log4j2.xml", "config/maas_probe.py", f"model-store/{MODEL}.mar"):
        assert (layout / name).is_file(), name
    with zipfile.ZipFile(layout / "model-store" / f"{MODEL}.mar") as archive:
        assert yaml.safe_load(archive.read("model-config.yaml"))["continuousBatching"] is True
        assert json.loads(archive.read("probe.json"))["torchserve"]["json"]["max_tokens"] == 1
    properties = read_properties(layout / "config" / "config.properties")
    assert properties["inference_address"] == "http://0.0.0.0:8085"  # KServe's server on 8080 has no /predictions
    assert properties["management_address"] == "http://127.0.0.1:8086"
    assert list(json.loads(properties["model_snapshot"])["models"]) == [MODEL]
    model = read(deployed / "manifests", f"{MODEL}-torchserve")["spec"]["predictor"]["model"]
    assert (model["runtime"], model["protocolVersion"]) == ("maas-torchserve", "v2")
    assert model["ports"] == [{"containerPort": 8085, "protocol": "TCP"}]
    probe = ["python3", "/mnt/models/config/maas_probe.py"]  # one greedy token: the model answers
    assert [model[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")] == [probe] * 3


def test_knative_leaves_tritonserver_without_probes_and_classifiers_without_the_openai_runtime(knative):
    assert len(check_manifests(knative / "knative")) == 4
    model = read(knative / "knative", f"{MODEL}-triton")["spec"]["predictor"]["model"]
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(model)
    assert not (knative / "classifiers" / "servingruntime-triton-openai.yaml").exists()


# ---- refused, in one line naming the file ----------------------------------------------------------------------
def probe_on_tritonserver(data: dict) -> None:
    data["spec"]["predictor"]["model"]["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", "port": 8080}}


def port_on_tritonserver(data: dict) -> None:
    data["spec"]["predictor"]["model"]["ports"] = [{"containerPort": 8080}]


@pytest.mark.parametrize("change,message", [
    (probe_on_tritonserver, "readinessProbe on a container without a port: Knative refuses it"),
    (port_on_tritonserver, "2 container ports in ServingRuntime 'maas-triton-openai''s pod"),
], ids=["probe", "port"])  # fmt: skip
def test_knative_refuses_what_its_webhook_would(knative, tmp_path, change, message):
    folder = Path(shutil.copytree(knative / "knative", tmp_path / "knative"))
    edit(folder / f"{MODEL}-triton.yaml", change)
    with pytest.raises(ManifestError) as refused:
        check_manifests(folder)
    assert str(refused.value).startswith(f"{folder / MODEL}-triton.yaml: ") and message in str(refused.value)


def rename_frontend(data: dict) -> None:
    data["spec"]["containers"][1]["name"] = "openai"


def test_check_refuses_a_frontend_kserve_would_not_mount_the_model_into(deployed, tmp_path):
    copy = copied(deployed, tmp_path)
    edit(copy / "manifests" / "servingruntime-triton-openai.yaml", rename_frontend)
    with pytest.raises(ManifestError, match=r"containers\[1\]: reads /mnt/models, which KServe mounts into"):
        check(copy)


@pytest.mark.parametrize("missing", [f"{MODEL}/1/artifact/model/tokenizer.json", f"{MODEL}/1/artifact/pipeline.json"])
def test_check_refuses_a_triton_layout_the_frontend_cannot_serve(deployed, tmp_path, missing):
    copy = copied(deployed, tmp_path)
    (copy / "triton" / MODEL / missing).unlink()
    with pytest.raises(LayoutError) as refused:
        check(copy)
    expected = "is missing" if missing.endswith("tokenizer.json") else "holds no language model"
    assert expected in str(refused.value), refused.value


def test_check_refuses_a_torchserve_that_does_not_listen_where_kserve_routes(deployed, tmp_path):
    copy = copied(deployed, tmp_path)
    config = copy / "torchserve" / MODEL / "config" / "config.properties"
    config.write_text(config.read_text().replace("=http://0.0.0.0:8085", "=http://127.0.0.1:8085"))
    with pytest.raises(LayoutError, match=r"inference_address=http://127.0.0.1:8085, but .* routes to port 8085"):
        check(copy)


@pytest.mark.parametrize("option,message", [
    (["--format", "onnx"], "is a language model, served from its Hugging Face checkpoint: --format onnx does not"),
    (["--openai-memory", "1 GB"], "--openai-memory '1 GB': expected a positive Kubernetes quantity"),
], ids=["format", "frontend memory"])  # fmt: skip
def test_a_refusal_is_one_line_and_writes_nothing(lm_artifacts, tmp_path, option, message):
    out = tmp_path / "kserve"
    result = maas("deploy", "kserve", str(lm_artifacts["gpt2"]), "--storage-uri", STORAGE, "--out", str(out), *option)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("maas deploy: error: ") and message in result.stderr, result.stderr
    assert not out.exists()
