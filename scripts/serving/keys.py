"""The servers' access keys, as the servers started here write them and the clients send them.

* TorchServe writes its keys to ``key_file.json`` in its working directory at start; clients send the inference
  key as a bearer token.
* tritonserver's restricted APIs (and inference too, with ``protect_inference``) answer only requests that carry
  the header ``maas-triton-key: <key>`` (gRPC: the metadata ``triton-grpc-protocol-maas-triton-key``). The key is
  generated at each start (``triton_server.py``) and written, readable by its owner only, to a key file; it never
  leaves the machine.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from scripts.serving.processes import RUN_DIR

KEY_HEADER = "maas-triton-key"
GRPC_PREFIX = "triton-grpc-protocol-"  # tritonserver matches gRPC restrictions against metadata named with it
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
TRITON_KEY_FILE = RUN_DIR / "triton_key.json"  # the key of the tritonserver ``maas serve start`` runs


def read_inference_key(workdir: Path) -> str:
    """The inference key TorchServe writes into its working directory at start."""
    return json.loads((workdir / "key_file.json").read_text())["inference"]["key"]


def write_private(path: Path, record: dict) -> None:
    """``record`` as JSON in a new file readable by its owner only (a key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class TritonAccess:
    """The key that opens tritonserver's restricted APIs; ``protect_inference`` puts inference behind it too."""

    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    protect_inference: bool = False

    @property
    def apis(self) -> tuple[str, ...]:
        return (*ADMIN_APIS, "inference") if self.protect_inference else ADMIN_APIS

    def server_flags(self) -> list[str]:
        rule = f"{','.join(self.apis)}:{KEY_HEADER}={self.key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

    def admin_headers(self, grpc: bool = False) -> dict[str, str]:
        """The key as an HTTP header, or as gRPC metadata (``grpc``)."""
        return {f"{GRPC_PREFIX}{KEY_HEADER}" if grpc else KEY_HEADER: self.key}

    def inference_headers(self, grpc: bool = False) -> dict[str, str]:
        return self.admin_headers(grpc) if self.protect_inference else {}

    def write(self, path: Path) -> None:
        write_private(path, {"header": KEY_HEADER, "key": self.key, "protect_inference": self.protect_inference})

    @classmethod
    def read(cls, path: Path) -> TritonAccess | None:
        """The key a running server was started with; None when there is no key file (no server started here)."""
        try:
            record = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        return cls(record["key"], record["protect_inference"])


def read_triton_key(path: Path = TRITON_KEY_FILE) -> TritonAccess:
    """The key of the tritonserver started here (an empty one, opening nothing, when none was)."""
    return TritonAccess.read(path) or TritonAccess(key="", protect_inference=False)
