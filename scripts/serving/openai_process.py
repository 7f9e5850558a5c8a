"""Run the OpenAI frontend (``openai_frontend.py``) as a process beside tritonserver, with a fresh API key.

``maas serve start`` runs it on 127.0.0.1:9000 with its key in run/openai_key.json (readable by its owner only);
tests run private ones on free ports.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts import REPO_ROOT
from scripts.serving.keys import write_private
from scripts.serving.processes import RUN_DIR, stop_process, wait_ready

OPENAI_KEY_FILE = RUN_DIR / "openai_key.json"
OPENAI_PID_FILE = RUN_DIR / "openai.pid"


@dataclass
class OpenAIFrontend:
    process: subprocess.Popen
    base_url: str  # what an OpenAI client takes: http://host:port/v1
    key: str

    def stop(self) -> None:
        stop_process(self.process)


def read_openai_key(path: Path = OPENAI_KEY_FILE) -> str:
    return json.loads(Path(path).read_text())["key"]


def start_openai_frontend(repository: Path, triton_grpc: str, port: int, key_file: Path, log_file: Path,
                          triton_key_file: Path | None = None, timeout: float = 120,
                          canary_file: Path | None = None) -> OpenAIFrontend:  # fmt: skip
    """Start the frontend on loopback and wait until it and Triton's language models are ready; ``canary_file``:
    the canaries it splits requests to (``maas serve start`` passes run/canary.json)."""
    key = secrets.token_urlsafe(32)
    write_private(key_file, {"key": key})
    command = [sys.executable, "-m", "scripts.serving.openai_frontend", "--repository", str(repository),
               "--triton-grpc", triton_grpc, "--port", str(port), "--key-file", str(key_file)]  # fmt: skip
    if triton_key_file is not None and triton_key_file.exists():
        command += ["--triton-key-file", str(triton_key_file)]
    if canary_file is not None:
        command += ["--canary-file", str(canary_file)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", process, timeout, log_file)
    except Exception:
        stop_process(process)
        raise
    return OpenAIFrontend(process, f"http://127.0.0.1:{port}/v1", key)
