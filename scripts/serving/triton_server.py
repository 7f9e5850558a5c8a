"""tritonserver (from the nvidia-pytriton wheel) on loopback, supervised, with its admin APIs behind a key.

``start_triton`` runs ``scripts/serving/triton_supervisor.py``, which starts tritonserver, writes its log with
rotation and reloads any model whose deep health probe fails (a killed Python stub). tritonserver runs with

* ``--model-control-mode=explicit --load-model=*``: every model in the repository is loaded at start, and the
  repository API can reload one (the supervisor does, on loopback);
* ``--http-restricted-api`` / ``--grpc-restricted-protocol``: the model-repository, model-config, shared-memory,
  statistics, trace and logging APIs (and inference too, with ``protect_inference``) answer only requests that
  carry the header ``maas-triton-key: <key>`` (gRPC: the metadata ``triton-grpc-protocol-maas-triton-key``).
  The key (``keys.py``) is generated at each start and written, readable by its owner only, to the key file; it
  never leaves the machine. Rotate it by restarting the server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from scripts import REPO_ROOT
from scripts.serving.keys import TritonAccess
from scripts.serving.processes import stop_process, wait_ready


@dataclass
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def triton_home() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def triton_backends() -> Path:
    """A backend directory holding the Python backend with its stub (the wheel ships the stub apart)."""
    python_dir = REPO_ROOT / ".triton" / "backends" / "python"
    stub = python_dir / "triton_python_backend_stub"
    if not stub.exists():
        shutil.copytree(triton_home() / "backends" / "python", python_dir, dirs_exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(triton_home() / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    return python_dir.parent


def libpython_dir() -> Path | None:
    """Where this interpreter's shared libpython lies, if it has one.

    The Python backend's stub links ``libpython3.11.so.1.0`` and loads the standard library of the environment it
    runs in (EXECUTION_ENV_PATH). Put first on the library path, this interpreter's libpython keeps both from the same
    Python build; otherwise the system's libpython is used and C extension modules of another 3.11 patch release
    can fail to load (seen here: ``_ssl``: undefined symbol ``_PyModule_Add`` when transformers imports ssl).
    """
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return Path(libdir) if libdir and soname and (Path(libdir) / soname).exists() else None


def triton_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the stubs must import this project's code from the model directory only
    libs = [Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs", libpython_dir()]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in [*libs, env.get("LD_LIBRARY_PATH")] if p)
    return env


def triton_command(repository: Path, ports: TritonPorts, access: TritonAccess, address: str = "127.0.0.1") -> list[str]:
    """``address``: loopback here; a pod's (0.0.0.0) under KServe, whose server must reach it from outside."""
    return [
        str(triton_home() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={triton_backends()}",
        f"--http-address={address}", f"--http-port={ports.http}",
        f"--grpc-address={address}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={address}", f"--metrics-port={ports.metrics}",
        "--model-control-mode=explicit", "--load-model=*",
        "--disable-auto-complete-config",  # configs are complete: no extra stub launch per model load
        "--strict-readiness=true",
        "--exit-on-error=true",
        *access.server_flags(),
    ]  # fmt: skip


@dataclass
class TritonInstance:
    process: subprocess.Popen  # the supervisor; stopping it stops tritonserver
    ports: TritonPorts
    access: TritonAccess
    repository: Path

    # the ports as attributes of the instance: tests and benchmarks say triton.http, triton.grpc
    http = property(lambda self: self.ports.http)
    grpc = property(lambda self: self.ports.grpc)
    metrics = property(lambda self: self.ports.metrics)


def start_triton(repository: Path, ports: TritonPorts, log_file: Path, timeout: float = 120,
                 protect_inference: bool = False, key_file: Path | None = None,
                 heal_interval: float = 1.0) -> TritonInstance:  # fmt: skip
    """Start the supervisor and tritonserver under it on loopback; wait until every model is ready.

    The key goes to ``key_file`` (default: ``triton_key.json`` beside the log) before the server starts. The
    supervisor probes every model each ``heal_interval`` seconds (0: never, for tests that count requests).
    """
    access = TritonAccess(protect_inference=protect_inference)
    key_file = key_file or log_file.parent / "triton_key.json"
    access.write(key_file)
    command = [
        sys.executable, "-m", "scripts.serving.triton_supervisor",
        "--repository", str(Path(repository).resolve()), "--key-file", str(key_file), "--log-file", str(log_file),
        "--http-port", str(ports.http), "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
        "--interval", str(heal_interval),
    ]  # fmt: skip
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    supervisor_log = log_file.with_suffix(".supervisor.log")
    with open(supervisor_log, "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_ready(f"http://127.0.0.1:{ports.http}/v2/health/ready", process, timeout, log_file)
    except Exception:
        stop_process(process, group=False)
        raise
    return TritonInstance(process, ports, access, Path(repository))
