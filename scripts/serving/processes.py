"""Process control for the servers started here: free loopback ports, readiness, stopping, the run-state files.

The bottom of ``scripts/serving``: standard library only, importing nothing of this project but ``REPO_ROOT``.
``servers.py`` (TorchServe, the command line) and ``triton_server.py`` (tritonserver under its supervisor) start
processes with these; tests and benchmarks use them to run private instances beside any running one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from scripts import REPO_ROOT

RUN_DIR = REPO_ROOT / "run"  # what ``maas serve start`` leaves for ``stop`` and the other commands
TRITON_PID_FILE = RUN_DIR / "triton.pid"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports. The sockets are held open together: one at a time, the kernel may
    hand out the port it has just released again (seen in CI: a server's HTTP and gRPC ports collided)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class ServerExited(RuntimeError):
    """A server stopped while starting (a port taken, a model that does not load): its log's tail says why."""


def wait_ready(url: str, process: subprocess.Popen | None, timeout: float, log_file: Path, headers=dict) -> float:
    """Poll ``url`` until it answers 200; fail early, with the log's tail, if the server exits.

    ``headers`` is called before each try (TorchServe's key file appears only once it has started).
    """
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process is not None and process.poll() is not None:
            raise ServerExited(f"server exited with {process.returncode} ({log_file}); log tail:\n{_tail(log_file)}")
        try:
            request = urllib.request.Request(url, headers=headers())
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (OSError, ValueError):  # not listening yet, or key file not written yet
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s; log tail:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen | int, timeout: float = 30, group: bool = True) -> None:
    """SIGTERM the server (its whole process group, or the leader alone), then SIGKILL whatever is left.

    TorchServe's launcher does not forward signals to its java child, so it needs the group; tritonserver shuts its
    Python-backend stubs down itself and waits out its exit timeout if they are killed under it, so it gets the leader.
    """
    pid = process if isinstance(process, int) else process.pid
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = process.poll() is not None if isinstance(process, subprocess.Popen) else not alive(pid)
        if exited:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # leftovers of the group, or the leader itself after the timeout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


TRITON_STUB = "triton_python_backend_stub"


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def triton_stub_commands(server_pid: int) -> list[tuple[psutil.Process, list[str]]]:
    """Every live Python-backend stub below ``server_pid``, with its command line (which names its instance). A dead
    one is a zombie, whose command line cannot be read, so it is not listed."""
    commands = ((process, cmdline(process)) for process in descendants(server_pid))
    return [(process, args) for process, args in commands if args and TRITON_STUB in args[0]]


def triton_stubs(server_pid: int, model: str) -> list[psutil.Process]:
    """The stubs of every instance of ``model`` (``<model>_<group>_<index>``) below ``server_pid``. A reload starts
    new ones beside the old."""
    instance = re.compile(rf"{re.escape(model)}_\d+_\d+")
    return [process for process, args in triton_stub_commands(server_pid) if any(map(instance.fullmatch, args))]


def cmdline(process: psutil.Process) -> list[str]:
    """A process's command line; empty when it cannot be read (a zombie, a process that has ended)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []
