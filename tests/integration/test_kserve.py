"""``maas deploy kserve``: the layouts served the way KServe's runtimes serve them, and the manifests validated.

No cluster here: each layout is copied to a local stand-in for ``/mnt/models`` and started with the command line
of the ServingRuntime the manifests name (paths mapped to this machine, ports to free loopback ones). The kserve SDK
and tritonclient.grpc cannot share a process (both register the v2 protocol's protobuf messages), so the
manifests are written and checked by the ``maas`` command in a process of its own, as a user runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from handlers.open_inference import encode_output
from scripts import REPO_ROOT
from scripts.serving.processes import free_port, free_ports, stop_process, wait_ready

TOLERANCE = 1e-5
STORAGE = "pvc://models/maas"
TRITON_KEY = "a-test-key-that-is-long-enough"


def maas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def deployed(digits_artifact, text_artifact, tmp_path_factory) -> Path:
    """The deploy directory for digits and sentiment, as eager models (the same format on both servers)."""
    out = tmp_path_factory.mktemp("kserve")
    result = maas("deploy", "kserve", str(digits_artifact), str(text_artifact), "--storage-uri", STORAGE,
                  "--out", str(out), "--format", "eager", "--image-root", str(REPO_ROOT))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def manifest(deployed: Path, name: str) -> dict:
    return yaml.safe_load((deployed / "manifests" / f"{name}.yaml").read_text())


def mount(deployed: Path, server: str, model: str, tmp_path: Path) -> Path:
    """The layout as KServe's storage initializer leaves it: the storageUri's files under one directory."""
    target = tmp_path / server / "mnt" / "models"
    shutil.copytree(deployed / server / model, target)
    return target


def in_pod(argument: str, mnt: Path, ports: dict[str, int]) -> str:
    """A pod's argument on this machine: /mnt/models mapped, ports and the bind address on loopback."""
    argument = argument.replace("/mnt/models", str(mnt)).replace("0.0.0.0", "127.0.0.1")
    for pod_port, port in ports.items():
        argument = argument.replace(pod_port, str(port))
    return argument


# ---- the manifests ---------------------------------------------------------------------------------------
def test_each_model_gets_an_inference_service_per_server_through_the_runtimes(deployed):
    for model in ("digits", "sentiment"):
        for server, runtime, model_format in (("torchserve", "maas-torchserve", "pytorch"),
                                              ("triton", "maas-tritonserver", "triton")):  # fmt: skip
            service = manifest(deployed, f"{model}-{server}")
            predictor = service["spec"]["predictor"]
            spec = predictor["model"]
            assert (service["kind"], service["metadata"]["name"]) == ("InferenceService", f"{model}-{server}")
            assert spec["storageUri"] == f"{STORAGE}/{server}/{model}/"
            assert (spec["runtime"], spec["modelFormat"]["name"], spec["protocolVersion"]) == (
                runtime, model_format, "v2")  # fmt: skip
            assert spec["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{model}/ready"
            assert "exec" in spec["livenessProbe"]
            assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"]) == (1, 4, "cpu")
    runtimes = {manifest(deployed, f"servingruntime-{s}")["metadata"]["name"] for s in ("torchserve", "triton")}
    assert runtimes == {"maas-torchserve", "maas-tritonserver"}


def copy_deployment(deployed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(deployed, copy)
    return copy


def edit_manifest(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


MODEL = lambda data: data["spec"]["predictor"]["model"]  # noqa: E731
EDITS = {
    "misspelt": (lambda d: MODEL(d).update(storageURI=MODEL(d).pop("storageUri")),
                 "spec.predictor.model.storageURI: unknown field"),
    "misplaced": (lambda d: d["spec"].update(minReplicas=1), "spec.minReplicas: unknown field"),
    "wrong type": (lambda d: d["spec"]["predictor"].update(maxReplicas="4"),
                   "spec.predictor.maxReplicas: expected integer"),
    "unknown runtime": (lambda d: MODEL(d).update(runtime="kserve-nothing"), "'kserve-nothing' has no ServingRuntime"),
}  # fmt: skip


@pytest.mark.parametrize("edit", EDITS)
def test_check_refuses_a_manifest_kserve_would_not_read_as_written(deployed, tmp_path, edit):
    copy = copy_deployment(deployed, tmp_path)
    assert maas("deploy", "check", str(copy)).returncode == 0
    change, message = EDITS[edit]
    edit_manifest(copy / "manifests" / "digits-torchserve.yaml", change)
    result = maas("deploy", "check", str(copy))
    assert result.returncode == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("missing", ["torchserve/digits/config/config.properties",
                                     "torchserve/sentiment/model-store/sentiment.mar",
                                     "triton/digits/digits/1/model.py"])  # fmt: skip
def test_check_refuses_a_layout_with_a_file_missing_naming_it(deployed, tmp_path, missing):
    copy = copy_deployment(deployed, tmp_path)
    (copy / missing).unlink()
    result = maas("deploy", "check", str(copy))
    assert result.returncode == 1 and f"{copy / missing} is missing" in result.stderr, result.stderr


def test_a_scale_metric_the_mode_cannot_use_is_refused(digits_artifact, tmp_path):
    result = maas("deploy", "kserve", str(digits_artifact), "--storage-uri", STORAGE, "--out", str(tmp_path),
                  "--scale-metric", "concurrency")  # fmt: skip
    assert result.returncode == 1 and "needs deployment mode Knative" in result.stderr, result.stderr


# ---- the layouts, served ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["digits", "sentiment"])
def pods(request, deployed, tmp_path_factory):
    """One model's TorchServe and Triton 'pods': each layout under its own /mnt/models, started with the
    runtime's own command line."""
    model, tmp = request.param, tmp_path_factory.mktemp(f"pods-{request.param}")
    torchserve = start_torchserve_pod(deployed, model, tmp)
    try:
        triton = start_triton_pod(deployed, model, tmp)
    except Exception:
        stop_process(torchserve["process"])
        raise
    yield model, torchserve, triton
    stop_process(torchserve["process"])
    stop_process(triton["process"], group=False)


def start_torchserve_pod(deployed: Path, model: str, tmp: Path) -> dict:
    mnt = mount(deployed, "torchserve", model, tmp)
    ports = dict(zip(("8085", "8086", "8082", "7070", "7071"), free_ports(5), strict=True))
    config = mnt / "config" / "config.properties"
    config.write_text(in_pod(config.read_text(), mnt, ports))
    container = manifest(deployed, "servingruntime-torchserve")["spec"]["containers"][0]
    command = [in_pod(a, mnt, ports) for a in container["args"]]
    assert command[0] == "torchserve"
    command[0] = str(Path(sys.executable).parent / "torchserve")
    workdir = tmp / "torchserve-workdir"
    (workdir / "tmp").mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    with open(workdir / "torchserve.log", "ab") as log:  # --foreground: the test owns the process
        process = subprocess.Popen([*command, "--foreground"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{ports['8085']}"
    probe = [sys.executable, str(mnt / "config" / "maas_probe.py"), str(config)]
    try:
        wait_ready(f"{url}/ping", process, 120, workdir / "torchserve.log")
        for _ in range(120):  # /ping says 200 before the worker has loaded: the deep probe says when it has
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                break
            if process.poll() is not None:
                raise AssertionError(f"torchserve exited with {process.returncode}")
            time.sleep(1)
        else:
            raise AssertionError("the liveness probe never passed")
    except Exception:
        stop_process(process)
        raise
    return {"process": process, "url": url, "workdir": workdir, "probe": probe, "config": config}


def start_triton_pod(deployed: Path, model: str, tmp: Path) -> dict:
    mnt = mount(deployed, "triton", model, tmp)
    ports = dict(zip(("8080", "9000", "8002"), free_ports(3), strict=True))
    container = manifest(deployed, "servingruntime-triton")["spec"]["containers"][0]
    command = [in_pod(a, mnt, ports) for a in [*container["command"], *container["args"]]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # python -m from workingDir finds our code
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env["MAAS_TRITON_KEY"] = TRITON_KEY  # the Secret's value in a pod
    log = tmp / "triton.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=container["workingDir"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{ports['8080']}"
    try:
        wait_ready(f"{url}/v2/models/{model}/ready", process, 180, log)
    except Exception:
        stop_process(process, group=False)
        raise
    liveness = manifest(deployed, f"{model}-triton")["spec"]["predictor"]["model"]["livenessProbe"]["exec"]
    return {"process": process, "url": url, "liveness": [in_pod(a, mnt, ports) for a in liveness["command"]]}


def v2_body(model: str, held_out_digits, held_out_sentences) -> dict:
    if model == "digits":
        return {"id": "kserve", "inputs": [encode_output("PIXELS", np.asarray(held_out_digits[0][:5], np.float32))]}
    texts = np.array([[t] for t in held_out_sentences[0][:6]], dtype=np.object_)
    return {"id": "kserve", "inputs": [encode_output("TEXT", texts)]}


def test_one_v2_body_gets_the_same_answer_from_both_layouts(pods, held_out_digits, held_out_sentences):
    model, torchserve, triton = pods
    body = v2_body(model, held_out_digits, held_out_sentences)
    path = f"/v2/models/{model}/infer"  # where KServe's server forwards a v2 request for TorchServe
    served, reference = (httpx.post(f"{pod['url']}{path}", json=body, timeout=60) for pod in (torchserve, triton))
    assert served.status_code == reference.status_code == 200, (served.text, reference.text)
    got, expected = ({o["name"]: o for o in answer.json()["outputs"]} for answer in (served, reference))
    assert got.keys() == expected.keys()
    for name, output in expected.items():
        assert (got[name]["datatype"], got[name]["shape"]) == (output["datatype"], output["shape"])
        if output["datatype"] == "BYTES":
            assert got[name]["data"] == output["data"]
        else:
            np.testing.assert_allclose(np.array(got[name]["data"]), np.array(output["data"]), atol=TOLERANCE)


def test_both_liveness_probes_pass_on_a_healthy_pod_and_fail_without_a_server(pods, tmp_path):
    model, torchserve, triton = pods
    assert subprocess.run(torchserve["probe"], capture_output=True, timeout=60).returncode == 0
    assert subprocess.run(triton["liveness"], capture_output=True, timeout=60, cwd=REPO_ROOT).returncode == 0
    closed = f"127.0.0.1:{free_port()}"
    dead_config = tmp_path / "config.properties"
    text = torchserve["config"].read_text()
    dead_config.write_text(text.replace(torchserve["url"].removeprefix("http://"), closed))
    dead = subprocess.run([*torchserve["probe"][:-1], str(dead_config)], capture_output=True, text=True, timeout=60)
    assert dead.returncode == 1 and f"DOWN {model}" in dead.stdout
    triton_dead = [closed if a.startswith("127.0.0.1:") else a for a in triton["liveness"]]
    assert subprocess.run(triton_dead, capture_output=True, timeout=60, cwd=REPO_ROOT).returncode == 1


def test_the_pod_keeps_triton_admin_apis_behind_the_secret_and_torchserve_logs_bounded(pods):
    model, torchserve, triton = pods
    index = f"{triton['url']}/v2/repository/index"
    assert httpx.post(index, timeout=10).status_code == 403
    assert httpx.post(index, headers={"maas-triton-key": TRITON_KEY}, timeout=10).status_code == 200
    # config.properties' vmargs point TorchServe at the layout's log4j2.xml: no access-log line per request.
    access_log = torchserve["workdir"] / "logs" / "access_log.log"
    for _ in range(20):  # inference requests: TorchServe's default configuration logs each one there
        assert subprocess.run(torchserve["probe"], capture_output=True, timeout=60).returncode == 0
    assert (torchserve["workdir"] / "logs" / "ts_log.log").exists()
    assert not access_log.exists() or len(access_log.read_text().splitlines()) < 5
