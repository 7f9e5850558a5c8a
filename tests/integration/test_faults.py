"""Faults and access control on the real servers: deep health, killed workers and stubs, keys on every API.

A private TorchServe and a private tritonserver (under its self-healing supervisor, inference behind the key)
serve the digits and sentiment models, so the kills here never touch the servers other tests use.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from scripts.serving.health import torchserve_health, triton_health
from scripts.serving.keys import GRPC_PREFIX, KEY_HEADER, bearer
from scripts.serving.processes import free_ports, stop_process
from scripts.serving.samples import digit_png
from scripts.serving.servers import start_torchserve
from scripts.serving.soak import Servers, soak
from scripts.serving.triton_server import TritonPorts, start_triton
from tests.integration.conftest import wait_for_lines

MODELS = ["digits", "sentiment"]

pytestmark = pytest.mark.models(*MODELS, "digits_ensemble")  # the deep health test expects an ensemble too


@pytest.fixture(scope="module")
def private(built_models, tmp_path_factory):
    """Both servers with only MODELS, copied from the session's build; stopped after the module."""
    root = tmp_path_factory.mktemp("faults")
    (root / "model_store").mkdir()
    for model in MODELS:
        shutil.copy(built_models.root / "model_store" / f"{model}.mar", root / "model_store")
        shutil.copytree(built_models.root / "model_repository" / model, root / "model_repository" / model)
    torchserve = start_torchserve(root / "model_store", root / "torchserve")
    try:
        ports = TritonPorts(*free_ports(3))
        triton = start_triton(root / "model_repository", ports, root / "triton.log", protect_inference=True)
    except Exception:
        stop_process(torchserve.process)
        raise
    yield root, torchserve, triton
    stop_process(triton.process, group=False)
    stop_process(torchserve.process)


def servers_of(private) -> Servers:
    root, torchserve, triton = private
    return Servers(torchserve.inference_url, torchserve.inference_key, torchserve.process.pid,
                   f"127.0.0.1:{triton.grpc}", triton.process.pid, triton.access,
                   root / "model_store", root / "model_repository")  # fmt: skip


# ---- deep health -----------------------------------------------------------------------------------------
def test_deep_health_answers_for_every_model_of_both_servers(torchserve, triton, built_models):
    results = torchserve_health(torchserve.inference_url, torchserve.inference_key, built_models.root / "model_store")
    results += triton_health(f"127.0.0.1:{triton.http}", built_models.root / "model_repository")
    assert {r.model for r in results if r.server == "triton"} >= {"digits", "sentiment", "digits_ensemble"}
    assert all(r.ok for r in results), [r for r in results if not r.ok]


def test_deep_health_fails_where_the_server_would_not_answer(torchserve, built_models):
    results = torchserve_health(torchserve.inference_url, "wrong key", built_models.root / "model_store")
    assert results and not any(r.ok for r in results) and "HTTP 400" in results[0].detail


# ---- killed workers and stubs: nothing lost through the retrying client --------------------------------
def test_soak_with_a_worker_and_a_stub_killed_loses_nothing(private):
    """1,000 requests between kills: a TorchServe worker at 1,000, the digits stub at 2,000 (healed by reload)."""
    report = soak(servers_of(private), MODELS, requests=3000, concurrency=16, kill_every=1000, time_limit=600)
    assert report["sent"] == 3000 and report["lost"] == 0 and report["wrong"] == 0, report
    assert [k["server"] for k in report["kills"]] == ["torchserve", "triton"], report
    triton_kill = report["kills"][1]
    # The supervisor brought the killed stub back (Triton never restarts one by itself) and the model answers. Its
    # other instance may answer meanwhile (digits runs two), so the supervisor probes more once the stub is gone.
    assert "digits_0_0" in triton_kill["killed"] and triton_kill["recovery_s"] < 120, report
    # The other instance answers while the killed one reloads, so the soak may end before the reload does.
    log_path = private[0] / "triton.supervisor.log"
    reloaded = wait_for_lines(log_path, "digits reloaded in", timeout=60)
    supervisor_log = log_path.read_text()
    assert reloaded and "reloading it" in supervisor_log, supervisor_log
    assert "sentiment reloaded" not in supervisor_log  # only what was killed


# ---- access control --------------------------------------------------------------------------------------
PROTECTED_HTTP = [  # one call per restricted API family: method, path
    ("POST", "/v2/repository/index"),  # model-repository
    ("GET", "/v2/models/digits/config"),  # model-config
    ("GET", "/v2/models/digits/stats"),  # statistics
    ("GET", "/v2/trace/setting"),  # trace
    ("GET", "/v2/logging"),  # logging
    ("GET", "/v2/systemsharedmemory/status"),  # shared-memory
]


@pytest.mark.parametrize(("method", "path"), PROTECTED_HTTP)
def test_triton_http_admin_apis_need_the_key(triton, method, path):
    url = f"http://127.0.0.1:{triton.http}{path}"
    for headers in ({}, {KEY_HEADER: "wrong"}):
        refused = httpx.request(method, url, headers=headers, timeout=10)
        assert refused.status_code in (401, 403), (path, refused.status_code, refused.text)
        assert "restricted" in refused.text.lower() or "authoriz" in refused.text.lower(), refused.text
    assert httpx.request(method, url, headers=triton.access.admin_headers(), timeout=10).status_code == 200


GRPC_CALLS = {
    "model-repository": lambda c, h: c.get_model_repository_index(headers=h),
    "model-config": lambda c, h: c.get_model_config("digits", headers=h),
    "statistics": lambda c, h: c.get_inference_statistics("digits", headers=h),
    "trace": lambda c, h: c.get_trace_settings(headers=h),
    "logging": lambda c, h: c.get_log_settings(headers=h),
    "shared-memory": lambda c, h: c.get_system_shared_memory_status(headers=h),
}


@pytest.mark.parametrize("api", sorted(GRPC_CALLS))
def test_triton_grpc_admin_apis_need_the_key(triton, api):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    for headers in ({}, {KEY_HEADER: triton.access.key}, {f"{GRPC_PREFIX}{KEY_HEADER}": "wrong"}):
        with pytest.raises(InferenceServerException) as refused:
            GRPC_CALLS[api](client, headers)
        assert "This protocol is restricted" in refused.value.message(), refused.value
    GRPC_CALLS[api](client, triton.access.admin_headers(grpc=True))


def test_triton_health_and_metadata_stay_open_and_inference_as_configured(triton, private):
    """The shared server leaves inference open; the private one was started with protect_inference."""
    _, _, protected = private
    for server in (triton, protected):
        assert httpx.get(f"http://127.0.0.1:{server.http}/v2/health/ready", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{server.http}/v2/models/digits", timeout=10).status_code == 200
    open_health = triton_health(f"127.0.0.1:{triton.http}", triton.repository)
    assert all(r.ok for r in open_health)
    refused = triton_health(f"127.0.0.1:{protected.http}", protected.repository)
    assert refused and not any(r.ok for r in refused), refused
    answered = triton_health(f"127.0.0.1:{protected.http}", protected.repository, protected.access.inference_headers())
    assert all(r.ok for r in answered), answered
    with pytest.raises(InferenceServerException):
        triton_http.InferenceServerClient(f"127.0.0.1:{protected.http}").get_model_repository_index(
            headers=triton.access.admin_headers()  # another server's key opens nothing here
        )


def test_torchserve_management_and_inference_need_their_keys(torchserve, pngs_for_faults):
    keys = json.loads((torchserve.workdir / "key_file.json").read_text())
    models, predict = f"{torchserve.management_url}/models", f"{torchserve.inference_url}/predictions/digits"
    for key in (None, "wrong", keys["inference"]["key"]):  # the inference key does not open management
        assert httpx.get(models, headers=bearer(key) if key else {}, timeout=10).status_code == 400
    assert httpx.get(models, headers=bearer(keys["management"]["key"]), timeout=10).status_code == 200
    for key in (None, "wrong", keys["management"]["key"]):  # nor the management key inference
        assert httpx.post(predict, content=pngs_for_faults, headers=bearer(key) if key else {}).status_code == 400
    assert httpx.post(predict, content=pngs_for_faults, headers=bearer(keys["inference"]["key"])).status_code == 200


@pytest.fixture(scope="module")
def pngs_for_faults(held_out_digits) -> bytes:
    return digit_png(held_out_digits[0][0])


# ---- bounded logs ----------------------------------------------------------------------------------------
def test_torchserve_logs_start_up_but_no_line_per_request(torchserve, pngs_for_faults):
    logs = torchserve.workdir / "logs"

    def lines() -> int:
        return sum(len(path.read_text(errors="replace").splitlines()) for path in logs.glob("*.log"))

    assert "Torchserve version" in (logs / "ts_log.log").read_text()  # log4j2.xml was read, not TorchServe's own
    before = lines()
    with httpx.Client(headers=bearer(torchserve.inference_key), timeout=30) as client:
        for _ in range(100):
            assert client.post(f"{torchserve.inference_url}/predictions/digits", content=pngs_for_faults).is_success
    assert lines() - before < 10, f"{lines() - before} log lines for 100 requests"
