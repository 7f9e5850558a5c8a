"""Run tritonserver and keep its models answering: the process ``maas serve start triton`` leaves running.

    python -m scripts.serving.triton_supervisor --repository model_repository --key-file run/triton_key.json \
        --log-file logs/triton.log [--http-port 8000 --grpc-port 8001 --metrics-port 8002] [--interval 1]

In a KServe pod (the ServingRuntime of ``maas deploy kserve``) it runs with ``--address 0.0.0.0`` and the key from a
Secret (``--key-env MAAS_TRITON_KEY``), and without ``--log-file`` it writes tritonserver's output to stdout.

* **Self-healing.** A killed Python-backend stub is a silent outage: tritonserver keeps answering readiness with
  200 while every request to the model fails ``Stub process ... is not healthy``. Every ``--interval`` seconds the
  supervisor looks for each instance's stub process and probes a model one of whose instances has none (a lone
  probe may only meet the live instances); every ``DEEP_PROBE_S`` it sends each model its deep health probe
  (``scripts/serving/health.py``), a real inference, which at every second cost an idle server ~0.1 of a core. A
  model whose probe finds a dead stub, or that fails 3 deep probes in a row, is reloaded with fresh instances
  through the repository API on loopback, with the access key (an ensemble: the models it is made of). Requests
  that fail meanwhile are retried by ``scripts/serving/client.py``.
* **Bounded logs.** tritonserver's output goes to ``--log-file``, rotated at 20 MB with 3 old files kept.
* **Stopping.** SIGTERM or SIGINT stops tritonserver (SIGTERM to it alone: it shuts its stubs down itself) and
  then the supervisor. When tritonserver exits by itself the supervisor exits with its code, for the container's
  restart policy to act on.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from scripts.serving.health import triton_health
from scripts.serving.keys import TritonAccess
from scripts.serving.probe import triton_probes
from scripts.serving.processes import triton_stub_commands
from scripts.serving.triton_server import TritonPorts, triton_command, triton_environment

LOG_BYTES, LOG_BACKUPS = 20 * 2**20, 3
PERSISTENT_FAILURES = 3  # deep probes in a row before a model that is not known dead is reloaded
DEEP_PROBE_S = 10.0  # every model's deep probe at most this often; the stub processes are looked for every interval
SUSPECT_PROBES = 8  # more probes a check sends a model with an instance's stub process gone, to meet that instance
log = logging.getLogger("maas.triton_supervisor")


def pump_log(stream, log_file: Path | None) -> None:
    """Copy tritonserver's output into a size-capped, rotating log file (None: to stdout, in a pod)."""
    if log_file is None:
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for line in iter(stream.readline, b""):
        handler.emit(logging.makeLogRecord({"msg": line.decode(errors="replace").rstrip("\n")}))
    handler.close()


def composing_models(repository: Path, model: str) -> list[str]:
    """An ensemble's steps' models (empty for any other model), to reload with it."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repository / model / "config.pbtxt").read_text(), config)
    return [step.model_name for step in config.ensemble_scheduling.step]


class Healer:
    """Reload a model with a dead stub, or one that does not answer its probes."""

    def __init__(self, repository: Path, ports: TritonPorts, access: TritonAccess, server_pid: int | None = None):
        self.repository, self.access, self.server_pid = repository, access, server_pid
        self.url = f"127.0.0.1:{ports.http}"
        self.admin = httpx.Client(base_url=f"http://{self.url}", headers=access.admin_headers(), timeout=300)
        self.failures: dict[str, int] = {}  # consecutive failed probes per model
        self.probes = triton_probes(repository)  # read once: the repository does not change under a running server

    def check(self, deep: bool = True) -> None:
        """A dead stub is reloaded at once; any other failure (a timeout under load...) only when it persists.
        ``deep``: probe every model too, not only those with an instance's stub process gone.

        A model with an instance whose stub process is gone gets up to ``SUSPECT_PROBES`` more probes, until one
        lands on that instance: the reload waits for Triton itself to report the stub unhealthy, since unloading
        an instance whose death it has not noticed aborted tritonserver (``boost::interprocess::lock_exception``).
        """
        headers = self.access.inference_headers()
        reloaded = set()
        results = triton_health(self.url, headers=headers, probes=self.probes) if deep else []
        for result in results:
            failures = self.failures[result.model] = 0 if result.ok else self.failures.get(result.model, 0) + 1
            if failures and ("is not healthy" in result.detail or failures >= PERSISTENT_FAILURES):
                log.warning("%s failed its health probe (%s); reloading it", result.model, result.detail)
                self.reload(result.model)
                self.failures[result.model] = 0
                reloaded.add(result.model)
        for model, instances in self.dead_instances().items():
            if model in reloaded:
                continue
            for _ in range(SUSPECT_PROBES):
                (result,) = triton_health(self.url, headers=headers, probes={model: self.probes[model]})
                if "is not healthy" in result.detail:
                    log.warning("%s: no stub process for %s, and a probe met it (%s); reloading it", model,
                                ", ".join(instances), result.detail)  # fmt: skip
                    self.reload(model)
                    break

    def dead_instances(self) -> dict[str, list[str]]:
        """Per Python-backend model, its instances without a live stub process (empty when all are there).

        The probes cannot find every dead stub: a model with several instances answers from the live ones, and
        Triton sends a lone probe to whichever is free, while a share of the real traffic fails. So each instance
        the server's config names (``<group>_<index>``) must have its stub running below the server.
        """
        dead: dict[str, list[str]] = {}
        if self.server_pid is None:
            return dead
        running = {arg for _, args in triton_stub_commands(self.server_pid) for arg in args}
        for model in self.probes:
            config = self.admin.get(f"/v2/models/{model}/config")
            if config.status_code != 200 or config.json().get("backend") != "python":
                continue
            expected = [f"{group['name']}_{i}" for group in config.json().get("instance_group", [])
                        for i in range(group.get("count", 1))]  # fmt: skip
            if missing := [name for name in expected if name not in running]:
                dead[model] = missing
        return dead

    def reload(self, model: str) -> None:
        """Reload the model (an ensemble: the models it is made of) with fresh instances.

        Loading an unchanged model is a no-op that keeps its dead stub, and so is a touched file or an identical
        config: Triton re-creates instances only for a changed model config. So the model's own config is sent
        back with one parameter, ``maas_reload``, changed (when and why), as a config override.
        """
        start = time.perf_counter()
        for name in composing_models(self.repository, model) or [model]:
            config = self.admin.get(f"/v2/models/{name}/config")
            if config.status_code == 200:
                changed = config.json()
                stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}: the health probe failed"
                changed.setdefault("parameters", {})["maas_reload"] = {"string_value": stamp}
                body = {"parameters": {"config": json.dumps(changed)}}
                config = self.admin.post(f"/v2/repository/models/{name}/load", json=body)
            if config.status_code != 200:
                log.error("reloading %s failed: HTTP %d %s", name, config.status_code, config.text[:300])
                return
        log.warning("%s reloaded in %.1f s", model, time.perf_counter() - start)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"http://{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def supervise(repository: Path, ports: TritonPorts, access: TritonAccess, log_file: Path | None, interval: float,
              address: str = "127.0.0.1") -> int:  # fmt: skip
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server = subprocess.Popen(
        triton_command(repository, ports, access, address), cwd=repository, env=triton_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    # cwd: the repository, so no checkout of this project on the stub's sys.path can shadow a model's own code.
    pump = threading.Thread(target=pump_log, args=(server.stdout, log_file), daemon=True)
    pump.start()
    log.info("tritonserver started (pid %d)", server.pid)
    healer, serving, probed = Healer(repository, ports, access, server.pid), False, float("-inf")
    try:
        while not stopping.wait(interval or 1.0) and server.poll() is None:
            serving = serving or ready(healer.url)  # models are loading until the server first says ready
            if serving and interval:
                now = time.monotonic()
                deep = now - probed >= DEEP_PROBE_S
                probed = now if deep else probed
                try:
                    healer.check(deep)
                except Exception:  # a fault of the check itself must not take the server down with it
                    log.exception("health check failed; trying again in %.0fs", interval)
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        pump.join(5)
    log.info("tritonserver exited with %s", server.returncode)
    return 0 if stopping.is_set() else server.returncode or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-file", type=Path, help="written by start_triton (TritonAccess)")
    key.add_argument("--key-env", help="an environment variable holding the key (a pod's Secret)")
    parser.add_argument("--log-file", type=Path, help="rotated log file (default: stdout, as a pod's log)")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on (a pod: 0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between health probes (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s supervisor: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe otherwise
    if args.key_env:
        if len(os.environ.get(args.key_env, "")) < 16:
            sys.exit(f"${args.key_env} must hold the access key (16 characters or more)")
        access = TritonAccess(key=os.environ[args.key_env])
    elif (access := TritonAccess.read(args.key_file)) is None:
        sys.exit(f"no key file {args.key_file}")
    ports = TritonPorts(args.http_port, args.grpc_port, args.metrics_port)
    return supervise(args.repository.resolve(), ports, access, args.log_file, args.interval, args.address)


if __name__ == "__main__":
    sys.exit(main())
