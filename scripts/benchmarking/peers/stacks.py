"""The serving stacks a user would pick instead of this package, each running ``apps/user_model.py`` as its own
docs recommend, on a free loopback port: how to install it, start it, and what wrk sends it.

LitServe and BentoML install into their own virtual environments under ``.peers/`` (their pins below), which see
the project's ``.venv`` through a ``.pth`` file: torch, ONNX Runtime and transformers are the same builds everywhere,
and a peer's own dependencies never change the project's. FastAPI, uvicorn, the kserve SDK and TorchServe are
already in ``.venv``.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tritonclient.http as triton_http

from scripts import REPO_ROOT
from scripts.serving.keys import bearer
from scripts.serving.processes import free_ports, stop_process
from scripts.serving.servers import start_torchserve

APPS = Path(__file__).parent / "apps"
PEER_VENVS = REPO_ROOT / ".peers"
PINS = {"litserve": "litserve==0.2.19", "bentoml": "bentoml==1.4.40"}


@dataclass
class Running:
    """A started stack: where to send, with which headers, and the process whose tree does the work."""

    url: str
    process: subprocess.Popen
    headers: dict[str, str] = field(default_factory=dict)
    group: bool = True

    def stop(self) -> None:
        stop_process(self.process, group=self.group)


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    setup: str  # how it is configured, for the report
    venv: str | None = None  # a key of PINS: installed in its own environment
    wrap: str = "{row}"  # the body around one JSON row
    path: str = "/predict"  # where the app answers

    def body(self, row: bytes) -> bytes:
        head, tail = self.wrap.split("{row}")
        return head.encode() + row + tail.encode()

    def python(self) -> Path:
        return peer_venv(self.venv) / "bin" / "python" if self.venv else Path(sys.executable)

    def command(self, artifact: Path, port: int, grpc_port: int) -> list[str]:
        if self.key == "bentoml":
            return [str(self.python()), "-m", "bentoml", "serve", "bentoml_app:Classifier", "--host", "127.0.0.1",
                    "--port", str(port)]  # fmt: skip
        return [str(self.python()), f"{self.key}_app.py", str(artifact), str(port), str(grpc_port)]

    def start(self, artifact: Path, workdir: Path, first_row: bytes, timeout: float = 180) -> Running:
        workdir.mkdir(parents=True, exist_ok=True)
        if self.key == "torchserve_handler":
            return start_torchserve_handler(artifact, workdir)
        port, grpc_port = free_ports(2)
        env = {**os.environ, "MAAS_PEER_ARTIFACT": str(artifact), "PYTHONPATH": str(APPS),
               "BENTOML_HOME": str(workdir / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
        log = workdir / f"{self.key}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(self.command(artifact, port, grpc_port), cwd=APPS, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        running = Running(f"http://127.0.0.1:{port}{self.path}", process, {"Content-Type": "application/json"})
        try:
            wait_answering(running, self.body(first_row), timeout, log)
        except BaseException:
            running.stop()
            raise
        return running


PEERS = [
    Peer("torchserve_handler", "TorchServe, plain handler", "BaseHandler subclass; batch 32, 1 ms delay, 1 worker"),
    Peer("litserve", "LitServe", "max_batch_size 16, batch_timeout 1 ms, 1 worker", venv="litserve"),
    Peer("bentoml", "BentoML", "adaptive batching (max_batch_size 16), 1 worker", venv="bentoml",
         wrap='{"rows": [{row}]}'),
    Peer("kserve", "KServe ModelServer", "v1 protocol, 1 worker, no batching", wrap='{"instances": [{row}]}',
         path="/v1/models/model:predict"),
    Peer("fastapi", "FastAPI + uvicorn", "one request per call, 1 worker"),
]  # fmt: skip
PEERS_BY_KEY = {peer.key: peer for peer in PEERS}


def peer_venv(name: str) -> Path:
    """``.peers/<name>``, made on first use: a venv that sees ``.venv``'s packages, plus the peer's pin."""
    venv = PEER_VENVS / name
    stamp = venv / f".installed-{PINS[name]}"
    if stamp.exists():
        return venv
    print(f"installing {PINS[name]} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    parent = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" /
     "_maas_parent.pth").write_text(parent + "\n")  # fmt: skip
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", PINS[name]], check=True)
    stamp.touch()
    return venv


def start_torchserve_handler(artifact: Path, workdir: Path) -> Running:
    """Archive ``apps/torchserve_app.py`` with the artifact's files (torch-model-archiver) and serve it."""
    store = workdir / "model_store"
    store.mkdir(exist_ok=True)
    config = workdir / "model-config.yaml"
    config.write_text("batchSize: 32\nmaxBatchDelay: 1\nminWorkers: 1\nmaxWorkers: 1\nresponseTimeout: 60\n")
    extra = [APPS / "user_model.py", *sorted(p for p in artifact.iterdir() if p.is_file())]
    subprocess.run([str(Path(sys.executable).parent / "torch-model-archiver"), "--model-name", "model",
                    "--version", "1.0", "--handler", str(APPS / "torchserve_app.py"), "--extra-files",
                    ",".join(map(str, extra)), "--config-file", str(config), "--export-path", str(store),
                    "--force"], check=True)  # fmt: skip
    server = start_torchserve(store, workdir / "torchserve", {"load_models": "model.mar"}, worker_env=False)
    headers = {**bearer(server.inference_key), "Content-Type": "application/json"}
    return Running(f"{server.inference_url}/predictions/model", server.process, headers)


def wait_answering(running: Running, body: bytes, timeout: float, log: Path) -> None:
    """Until a real request is answered 200: /health routes answer before the model has loaded in some stacks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"exited with {running.process.returncode}; see {log}")
        try:
            if httpx.post(running.url, content=body, headers=running.headers, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {running.url} after {timeout:.0f}s; see {log}")


def label_in(reply) -> str | None:
    """The first label in a JSON reply: a ``label`` key at any depth."""
    if isinstance(reply, dict):
        if "label" in reply:
            return str(reply["label"])
        reply = list(reply.values())
    if isinstance(reply, list):
        return next((found for item in reply if (found := label_in(item)) is not None), None)
    return None


def labels_from(url: str, headers: dict, bodies: list[tuple[bytes, int | None]]) -> list[str | None]:
    """Each body's answer label, one request at a time; a body with its JSON part's size is Triton's binary form."""
    labels = []
    with httpx.Client(timeout=60) as client:
        for body, json_size in bodies:
            extra = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
            reply = client.post(url, content=body, headers={**headers, **extra})
            if size := reply.headers.get("Inference-Header-Content-Length"):  # Triton's binary tensors
                result = triton_http.InferenceServerClient.parse_response_body(reply.content, header_length=int(size))
                labels.append(result.as_numpy("LABEL").reshape(-1)[0].decode())
            else:
                labels.append(label_in(json.loads(reply.content)))
    return labels
