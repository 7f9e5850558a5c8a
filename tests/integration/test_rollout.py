"""Versions rolled out and back on real servers (``scripts/deploy/rollout.py``), under a steady load.

Private TorchServe and tritonserver instances serve digits (the shared ones stay as they are); a client thread keeps
sending requests, each naming no version, while versions are deployed, refused, rolled back and retired.
"""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from scripts.deploy.rollout import deploy_version, end_canary_or_roll_back, promote_canary
from scripts.deploy.torchserve_versions import TorchServeVersions
from scripts.deploy.triton_versions import TritonVersions
from scripts.deploy.version_rules import RolloutRefused
from scripts.packaging.build import build
from scripts.serving.canary import CanarySplit
from scripts.serving.client import RetryPolicy, TorchServeClient, TritonClient
from scripts.serving.keys import TritonAccess, bearer
from scripts.serving.processes import free_ports, stop_process
from scripts.serving.samples import digit_png
from scripts.serving.servers import start_torchserve
from scripts.serving.triton_server import TritonPorts, start_triton
from tests.unit.test_self_check import rewrite


@pytest.fixture(scope="module")
def servers(digits_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    store, repository = root / "model_store", root / "model_repository"
    build(digits_artifact, model_store=store, triton_repository=repository, fmt="eager")
    torchserve = start_torchserve(store, root / "torchserve")
    ports = TritonPorts(*free_ports(3))
    triton = start_triton(repository, ports, root / "triton.log", heal_interval=0, key_file=root / "triton_key.json")
    versions = {
        "torchserve": TorchServeVersions(
            torchserve.inference_url, torchserve.management_url, torchserve.workdir, store
        ),  # fmt: skip
        "triton": TritonVersions(f"127.0.0.1:{ports.http}", repository, TritonAccess.read(root / "triton_key.json")),
    }
    yield torchserve, triton, versions
    stop_process(torchserve.process)
    stop_process(triton.process, group=False)


class Load:
    """Requests without a version, one after the other on each server, until stopped: every answer's status and
    the version that gave it."""

    def __init__(self, torchserve, triton, png: bytes):
        self.answers: dict[str, list[tuple[int, str]]] = {"torchserve": [], "triton": []}
        self.stopping = threading.Event()
        self.torchserve, self.triton, self.png = torchserve, triton, png
        self.threads = [threading.Thread(target=self.run, args=(server,)) for server in self.answers]

    def run(self, server: str) -> None:
        while not self.stopping.is_set():
            self.answers[server].append(ask(server, self.torchserve, self.triton, self.png))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def ask(server: str, torchserve, triton, png: bytes, version: str | None = None) -> tuple[int, str]:
    """(status, the version that answered) of one digits request."""
    if server == "torchserve":
        path = f"/predictions/digits/{version}.0" if version else "/predictions/digits"
        response = httpx.post(f"{torchserve.inference_url}{path}", content=png, timeout=60,
                              headers={"Content-Type": "image/png", **bearer(torchserve.inference_key)})  # fmt: skip
        return response.status_code, response.headers.get("X-Model-Version", "")
    client = triton_http.InferenceServerClient(f"127.0.0.1:{triton.http}")
    image = triton_http.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[png]], dtype=np.object_))
    try:
        result = client.infer("digits", [image], model_version=version or "")
        return 200, result.get_response()["model_version"]
    except Exception as exc:
        return 500, str(exc)
    finally:
        client.close()


def test_deploy_refuse_rollback_and_retire_under_load_lose_nothing(servers, digits_artifact, held_out_digits,
                                                                     tmp_path):  # fmt: skip
    torchserve, triton, versions = servers
    png = digit_png(held_out_digits[0][0])
    broken = shutil.copytree(digits_artifact, tmp_path / "digits-broken")

    def drifted(record):  # answers this machine would not give: its self-check refuses it at load
        record["reference"][3] = list(np.roll(record["reference"][3], 1))

    rewrite(broken, drifted)
    relabelled = shutil.copytree(digits_artifact, tmp_path / "digits-relabelled")
    pipeline = json.loads((relabelled / "pipeline.json").read_text())
    pipeline["labels"] = [f"digit {label}" for label in pipeline["labels"]]  # the same network, other answers
    (relabelled / "pipeline.json").write_text(json.dumps(pipeline))
    with Load(torchserve, triton, png) as load:
        for server_versions in versions.values():
            assert server_versions.deploy(digits_artifact, "digits") == 2
            assert server_versions.versions("digits")[1] == 2
            with pytest.raises(RolloutRefused, match="version 3"):
                server_versions.deploy(broken, "digits")
            with pytest.raises(RolloutRefused, match="labels"):
                server_versions.deploy(relabelled, "digits")
            assert server_versions.versions("digits")[1] == 2  # the refused version took no traffic
        for server in versions:
            assert ask(server, torchserve, triton, png) == (200, "2")
            assert ask(server, torchserve, triton, png, version="1") == (200, "1")  # an explicit version is honoured
        for server, server_versions in versions.items():
            assert server_versions.rollback("digits") == 1
            assert ask(server, torchserve, triton, png) == (200, "1")
        for server, server_versions in versions.items():
            assert server_versions.retire("digits") == [2], server
            assert server_versions.versions("digits") == ([1], 1)
    for server, answers in load.answers.items():
        assert len(answers) > 10, server
        assert {status for status, _ in answers} == {200}, (server, [a for a in answers if a[0] != 200][:3])
        seen = [version for _, version in answers]
        assert set(seen) <= {"1", "2"}
        switches = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
        assert len(switches) <= 2, (server, switches)  # 1 -> 2 at the deploy, 2 -> 1 at the rollback: no flapping
    assert not list((triton.repository / "digits").glob("3")) and not list((triton.repository / "digits").glob("2"))
    assert sorted(p.name for p in versions["torchserve"].model_store.glob("*.mar")) == ["digits.mar"]


class SplitLoad(Load):
    """Requests without a version through this package's clients, which send a canary its share, one after the
    other on each server until stopped: each answer's phases (when sent and when answered), status, whether it
    was routed to the canary, and the version that gave it."""

    def __init__(self, torchserve, triton, png: bytes, canary_file):
        super().__init__(torchserve, triton, png)
        self.phase = {"torchserve": "before", "triton": "before"}
        policy = RetryPolicy(attempts=1)  # a lost request shows as one
        split = {server: CanarySplit(canary_file, seed=i) for i, server in enumerate(self.answers)}
        self.torchserve = TorchServeClient(torchserve.inference_url, torchserve.inference_key, policy, 60,
                                           split["torchserve"])  # fmt: skip
        self.triton = TritonClient(f"127.0.0.1:{triton.http}", "http", policy=policy, timeout=60,
                                   canary=split["triton"])  # fmt: skip
        self.image = np.array([[png]], dtype=np.object_)

    def ask(self, server: str) -> tuple[int, bool, str]:
        if server == "torchserve":
            response = self.torchserve.predict("digits", content=self.png, headers={"Content-Type": "image/png"})
            routed = response.request.url.path != "/predictions/digits"
            return response.status_code, routed, response.headers.get("X-Model-Version", "")
        try:
            answer = self.triton.infer("digits", {"IMAGE": self.image}).get_response()
        except Exception as exc:
            return 500, False, str(exc)[:200]
        return 200, answer["model_name"] != "digits", answer["model_version"]

    def run(self, server: str) -> None:
        while not self.stopping.is_set():
            sent = self.phase[server]
            status, routed, version = self.ask(server)
            self.answers[server].append((sent, self.phase[server], status, routed, version))

    def within(self, server: str, phase: str) -> list[tuple]:
        """Answers sent and answered in ``phase``."""
        return [a for a in self.answers[server] if a[0] == a[1] == phase]

    def wait_for(self, phase: str, count: int, limit: float = 90) -> None:
        deadline = threading.Event()
        for _ in range(int(limit * 10)):
            if all(len(self.within(server, phase)) >= count for server in self.answers):
                return
            deadline.wait(0.1)


def test_canary_share_promotion_and_rollbacks_under_load(servers, digits_artifact, held_out_digits, tmp_path):
    """A canary of 25% on both servers: its share of the answers within a binomial bound, each answer from the
    version it was routed to; promoted; a second canary ended; rolled back; nothing lost on the way."""
    torchserve, triton, versions = servers
    canary_file, share = tmp_path / "canary.json", 25

    def canary(server, server_versions):
        return deploy_version(server, server_versions, digits_artifact, "digits", canary=share, canary_file=canary_file)

    steps = [
        ("canary 2", 400, canary),
        ("promoted", 20, lambda s, v: promote_canary(s, v, "digits", canary_file)),
        ("canary 3", 20, canary),
        ("canary ended", 20, lambda s, v: end_canary_or_roll_back(s, v, "digits", canary_file)),
        ("rolled back", 20, lambda s, v: end_canary_or_roll_back(s, v, "digits", canary_file)),
    ]
    done = {server: [] for server in versions}
    with SplitLoad(torchserve, triton, digit_png(held_out_digits[0][0]), canary_file) as load:
        for phase, count, step in steps:
            for server, server_versions in versions.items():
                load.phase[server] = "moving"  # answers given while a step runs are not checked
                done[server].append(step(server, server_versions))
                load.phase[server] = phase
                if phase == "canary 2":
                    assert server_versions.versions("digits")[1] == 1  # the default did not move
                    with pytest.raises(RolloutRefused, match="a canary of digits .version 2. is running"):
                        step(server, server_versions)
            load.wait_for(phase, count)
        for server_versions in versions.values():
            assert server_versions.retire("digits") == [2]
    for server in versions:
        assert done[server] == [2, 2, 3, "its canary, version 3, ended and unloaded", "rolled back to version 1"]
    expected = {"canary 2": "1", "promoted": "2", "canary 3": "2", "canary ended": "2", "rolled back": "1"}
    for server, answers in load.answers.items():
        assert {status for _, _, status, _, _ in answers} == {200}, (server, [a for a in answers if a[2] != 200][:3])
        for phase, version in expected.items():
            within = load.within(server, phase)
            assert within, (server, phase)
            assert {v for _, _, _, routed, v in within if not routed} == {version}, (server, phase)
            assert {v for _, _, _, routed, v in within if routed} <= ({phase[-1]} if "canary " in phase else set())
        routed = [routed for _, _, _, routed, _ in load.within(server, "canary 2")]
        n, hits = len(routed), sum(routed)
        bound = 5 * (n * share / 100 * (1 - share / 100)) ** 0.5  # 5 standard deviations: a false alarm ~1e-6
        assert abs(hits - n * share / 100) <= bound, (server, hits, n)
        assert all(v == "2" for _, _, _, r, v in load.within(server, "canary 2") if r)
    assert not (triton.repository / "digits-canary").exists() and not list((triton.repository / "digits").glob("3"))
    assert sorted(p.name for p in versions["torchserve"].model_store.glob("*.mar")) == ["digits.mar"]


def test_torchserve_registers_archives_of_its_model_store_only(servers):
    """The model API is on for deploys; allowed_urls keeps it to the local model store, and it needs its key."""
    _, _, versions = servers
    management = versions["torchserve"].management
    refused = management.post("/models?url=https://example.com/evil.mar&model_name=evil")
    assert refused.status_code in (400, 403, 404) and "evil" not in management.get("/models").text
    no_key = httpx.post(f"{management.base_url}/models?url=digits.mar&model_name=other", timeout=30)
    assert no_key.status_code == 400 and "Token Authorization failed" in no_key.text
