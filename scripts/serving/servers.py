"""Start and stop the real servers on loopback: Triton (from the nvidia-pytriton wheel) and TorchServe.

    maas serve start [torchserve|triton|both] [--repository model_repository] [--http-port 8000] ...
    maas serve stop [torchserve|triton|both]
    maas serve status [torchserve|triton|both] [--json]   deep health: a real inference per model (health.py)
    maas serve key torchserve|openai     print an inference key (for OPENAI_API_KEY, curl's bearer token)
    (the same as .venv/bin/python -m scripts.serving.servers start|stop ...)

``start torchserve`` runs ``torchserve --start --ncs --model-store model_store --ts-config config.properties``;
``stop torchserve`` runs ``torchserve --stop``. ``start triton`` runs tritonserver under its supervisor
(``triton_server.py``: self-healing, rotating log, admin APIs behind a key in run/triton_key.json); add
``--protect-inference`` to put inference behind that key too. With Triton starts its OpenAI-compatible frontend
(``openai_frontend.py``, ``http://127.0.0.1:9000/v1``, its own key in run/openai_key.json). The default is both
servers.

The command-line ones serve ``model_store/`` and ``model_repository/`` on the default ports from the repository
root (TorchServe writes key_file.json and logs/ there). Tests call ``start_torchserve`` / ``start_triton`` to run
private instances on free ports, beside any running one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scripts import REPO_ROOT, TRITON_REPOSITORY
from scripts.serving.canary import CANARY_FILE
from scripts.serving.keys import TRITON_KEY_FILE, bearer, read_inference_key
from scripts.serving.openai_process import OPENAI_KEY_FILE, OPENAI_PID_FILE, read_openai_key, start_openai_frontend
from scripts.serving.processes import RUN_DIR, TRITON_PID_FILE, alive, free_ports, stop_process, wait_ready
from scripts.serving.triton_server import TritonPorts, start_triton
from scripts.serving.worker_env import torchserve_env

LOG_DIR = REPO_ROOT / "logs"
LOG4J_CONFIG = REPO_ROOT / "log4j2.xml"  # TorchServe's logging: no line per request, files capped and rolled


# ---- TorchServe ------------------------------------------------------------------------------------------
@dataclass
class TorchServeInstance:
    process: subprocess.Popen
    inference_url: str
    grpc_port: int
    metrics_url: str
    workdir: Path
    management_url: str

    @property
    def inference_key(self) -> str:
        return read_inference_key(self.workdir)


def torchserve_properties(overrides: dict[str, str], base: Path = REPO_ROOT / "config.properties") -> str:
    """The project's config.properties with some keys replaced (ports, for a private instance)."""
    lines, seen = [], set()
    for line in base.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and key in overrides:
            line, _ = f"{key}={overrides[key]}", seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


def start_torchserve(model_store: Path, workdir: Path, overrides: dict[str, str] | None = None,
                     timeout: float = 120, worker_env: bool = True) -> TorchServeInstance:  # fmt: skip
    """A private TorchServe on free loopback ports, run in the foreground from ``workdir``.

    ``workdir`` receives key_file.json, logs/ and the pid file (TMPDIR), so it never meets another instance.
    PYTHONPATH is dropped: the workers import this project's code from the archive only. ``worker_env`` False leaves
    out the workers' OpenMP setting (``worker_env.py``): a stock TorchServe, for the peers' benchmark.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    names = ("inference", "management", "metrics", "grpc", "grpc_management")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    properties = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc"]),
        "grpc_management_port": str(ports["grpc_management"]),
        **(overrides or {}),
    }
    config = workdir / "config.properties"
    config.write_text(torchserve_properties(properties))
    (workdir / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp")}
    env = torchserve_env(env) if worker_env else env
    env.pop("PYTHONPATH", None)  # workers must find our code in the archive, nowhere else
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # workers use this Python
    command = [
        str(Path(sys.executable).parent / "torchserve"),
        "--start", "--foreground", "--ncs",
        "--model-store", str(model_store),
        "--ts-config", str(config),
        "--log-config", str(LOG4J_CONFIG),
    ]  # fmt: skip
    log_file = workdir / "torchserve.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_ready(f"http://127.0.0.1:{ports['inference']}/ping", process, timeout, log_file,
                   headers=lambda: bearer(read_inference_key(workdir)))  # fmt: skip
    except Exception:
        stop_process(process)
        raise
    return TorchServeInstance(
        process,
        f"http://127.0.0.1:{ports['inference']}",
        ports["grpc"],
        f"http://127.0.0.1:{ports['metrics']}",
        workdir,
        f"http://127.0.0.1:{ports['management']}",
    )


# ---- command line ----------------------------------------------------------------------------------------
def start_torchserve_cli() -> None:
    started = time.perf_counter()
    command = [*torchserve_command(), "--start", "--ncs", "--model-store", "model_store", "--ts-config",
               "config.properties", "--log-config", str(LOG4J_CONFIG)]  # fmt: skip
    (REPO_ROOT / "key_file.json").unlink(missing_ok=True)  # a stale key would only delay the readiness probe
    # Its console output duplicates logs/ (rotated by log4j) and can grow without bound: drop it.
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                   env=torchserve_env(os.environ))  # fmt: skip
    wait_ready("http://127.0.0.1:8080/ping", None, 120, LOG_DIR / "ts_log.log",
               headers=lambda: bearer(read_inference_key(REPO_ROOT)))  # fmt: skip
    print(f"TorchServe ready in {time.perf_counter() - started:.1f}s; REST 127.0.0.1:8080, "
          f"gRPC 127.0.0.1:7070, inference key in {REPO_ROOT / 'key_file.json'}, logs in {LOG_DIR}")  # fmt: skip


def start_triton_cli(repository: Path, ports: TritonPorts, protect_inference: bool, openai_port: int) -> None:
    if TRITON_PID_FILE.exists() and alive(int(TRITON_PID_FILE.read_text())):
        sys.exit(f"tritonserver already runs (pid {TRITON_PID_FILE.read_text().strip()}); stop it first")
    started = time.perf_counter()
    triton = start_triton(repository.resolve(), ports, LOG_DIR / "triton.log", protect_inference=protect_inference,
                          key_file=TRITON_KEY_FILE)  # fmt: skip
    RUN_DIR.mkdir(exist_ok=True)
    TRITON_PID_FILE.write_text(str(triton.process.pid))
    print(f"tritonserver ready in {time.perf_counter() - started:.1f}s (supervisor pid {triton.process.pid}); "
          f"HTTP 127.0.0.1:{ports.http}, gRPC 127.0.0.1:{ports.grpc}, log {LOG_DIR / 'triton.log'}, "
          f"access key in {TRITON_KEY_FILE}")  # fmt: skip
    started = time.perf_counter()
    frontend = start_openai_frontend(repository.resolve(), f"127.0.0.1:{ports.grpc}", openai_port, OPENAI_KEY_FILE,
                                     LOG_DIR / "openai.log", TRITON_KEY_FILE, canary_file=CANARY_FILE)  # fmt: skip
    OPENAI_PID_FILE.write_text(str(frontend.process.pid))
    print(f"OpenAI-compatible API ready in {time.perf_counter() - started:.1f}s: {frontend.base_url}, "
          f"key in {OPENAI_KEY_FILE} (maas serve key openai), log {LOG_DIR / 'openai.log'}")  # fmt: skip


def stop_triton_cli() -> None:
    if OPENAI_PID_FILE.exists():
        stop_process(int(OPENAI_PID_FILE.read_text()))
        OPENAI_PID_FILE.unlink()
        OPENAI_KEY_FILE.unlink(missing_ok=True)
        print("OpenAI frontend stopped")
    if not TRITON_PID_FILE.exists():
        print("tritonserver: not started by this script (no run/triton.pid)")
        return
    stop_process(int(TRITON_PID_FILE.read_text()), group=False)
    TRITON_PID_FILE.unlink()
    TRITON_KEY_FILE.unlink(missing_ok=True)
    print("tritonserver stopped")


def print_key(server: str) -> int:
    """The inference key a client sends as its bearer token (``export OPENAI_API_KEY=$(maas serve key openai)``)."""
    if server == "both":
        sys.exit("say which key: maas serve key torchserve|openai")
    try:
        print(read_openai_key() if server == "openai" else read_inference_key(REPO_ROOT))
    except FileNotFoundError:
        sys.exit(f"no {server} key: is it running? (maas serve start)")
    return 0


def torchserve_command() -> list[str]:
    return [str(Path(sys.executable).parent / "torchserve")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop", "status", "key"])
    parser.add_argument("server", nargs="?", default="both", choices=["torchserve", "triton", "openai", "both"])
    parser.add_argument("--repository", type=Path, default=TRITON_REPOSITORY, help="Triton model repository")
    parser.add_argument("--http-port", type=int, default=8000, help="Triton HTTP port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="Triton gRPC port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Triton metrics port")
    parser.add_argument("--protect-inference", action="store_true", help="Triton inference needs the key too")
    parser.add_argument("--openai-port", type=int, default=9000, help="the OpenAI frontend's port (with Triton)")
    args, rest = parser.parse_known_args(argv)
    if args.action == "key":
        return print_key(args.server)
    if args.server == "openai":
        parser.error("the OpenAI frontend starts and stops with triton")
    if args.action == "status":
        from scripts.serving.health import main as status  # here for its cost: httpx, tritonclient, numpy (~0.3 s)

        return status([args.server, *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    servers = ["torchserve", "triton"] if args.server == "both" else [args.server]
    for server in servers:
        if args.action == "start" and server == "torchserve":
            start_torchserve_cli()
        elif args.action == "start":
            ports = TritonPorts(args.http_port, args.grpc_port, args.metrics_port)
            start_triton_cli(args.repository, ports, args.protect_inference, args.openai_port)
        elif server == "torchserve":
            subprocess.run([*torchserve_command(), "--stop"], cwd=REPO_ROOT, check=False)
        else:
            stop_triton_cli()
    return 0


if __name__ == "__main__":
    main()
