"""Faults to inject on loopback: kill a TorchServe worker or a Triton Python stub, as a crash would (SIGKILL).

Processes are found below a server's own process, so a test's private server is hit and never another one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import psutil

from scripts import REPO_ROOT
from scripts.serving.processes import cmdline, descendants, triton_stubs

TORCHSERVE_WORKER = "model_service_worker"


@dataclass
class Kill:
    server: str
    what: str  # the process killed, e.g. "worker pid 123" or "stub digits_0_0 (pid 456)"
    at: float  # time.monotonic() of the kill


def cli_torchserve_pid() -> int | None:
    """The frontend of the TorchServe ``maas serve start`` runs (its working directory is the repository root)."""
    for process in psutil.process_iter(["cmdline", "cwd"]):
        command = " ".join(process.info["cmdline"] or [])
        if "org.pytorch.serve.ModelServer" in command and process.info["cwd"] == str(REPO_ROOT):
            return process.pid
    return None


def kill_torchserve_worker(server_pid: int, rng: random.Random) -> Kill:
    """SIGKILL one model worker of the TorchServe below ``server_pid`` (TorchServe restarts it)."""
    workers = [p for p in descendants(server_pid) if TORCHSERVE_WORKER in " ".join(cmdline(p))]
    if not workers:
        raise RuntimeError(f"no TorchServe worker below pid {server_pid}")
    victim = rng.choice(workers)
    victim.kill()
    return Kill("torchserve", f"worker pid {victim.pid}", time.monotonic())


def kill_triton_stub(server_pid: int, model: str) -> Kill:
    """SIGKILL the Python-backend stub of ``model``'s first instance below ``server_pid``."""
    process = next((p for p in triton_stubs(server_pid, model) if f"{model}_0_0" in cmdline(p)), None)
    if process is None:
        raise RuntimeError(f"no Python stub for {model}_0_0 below pid {server_pid}")
    process.kill()
    return Kill("triton", f"stub {model}_0_0 (pid {process.pid})", time.monotonic())
