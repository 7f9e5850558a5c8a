"""A canary's share of the requests that name no version. Neither TorchServe nor Triton splits traffic between
versions, so the split lives where this package sends requests: its retrying clients (``client.py``), the OpenAI
frontend in front of Triton and ``maas soak``. ``maas serve deploy --canary P`` writes the share to
``run/canary.json``; every request re-reads it when it changed (one ``stat``), so ``promote`` and ``rollback`` take
effect at the next request.

Where a canary request goes: TorchServe ``/predictions/<model>/<N>.0`` (the canary is a registered version that is
not the default); Triton the model ``<model>-canary`` (Triton sends requests without a version to the highest
loaded one and has no default to keep, so the canary is loaded as a sibling model). A request that names a version
is never re-routed. On a cluster, KServe's ``canaryTrafficPercent`` splits instead (``maas deploy kserve --canary``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from scripts.serving.processes import RUN_DIR

CANARY_FILE = RUN_DIR / "canary.json"  # {"<server>": {"<model>": {"version": N, "percent": P}}}
CANARY_SUFFIX = "-canary"  # Triton serves a canary as the model "<model>-canary"


def canary_name(model: str) -> str:
    """The name a canary goes by: Triton's sibling model, and its line in ``maas serve status``."""
    return f"{model}{CANARY_SUFFIX}"


def read_canaries(path: Path = CANARY_FILE) -> dict[str, dict[str, dict]]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def set_canary(server: str, model: str, version: int | None, percent: float = 0, path: Path = CANARY_FILE) -> None:
    """Start (``version`` given) or end (None) the canary of ``model`` on ``server``; written atomically, so a
    client never reads half a file."""
    canaries = read_canaries(path)
    models = canaries.setdefault(server, {})
    if version is None:
        models.pop(model, None)
    else:
        models[model] = {"version": version, "percent": percent}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(canaries, indent=1) + "\n")
    os.replace(temporary, path)


class CanarySplit:
    """Decides, per request, whether it goes to a canary; ``path`` is re-read whenever it changed."""

    def __init__(self, path: Path = CANARY_FILE, seed: int | None = None):
        self.path, self.random = path, random.Random(seed)
        self._stamp: tuple[int, int, int] | None = None
        self._canaries: dict[str, dict[str, dict]] = {}

    def canaries(self) -> dict[str, dict[str, dict]]:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._canaries = None, {}
            return self._canaries
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)  # each write is a new file
        if stamp != self._stamp:
            self._canaries, self._stamp = read_canaries(self.path), stamp
        return self._canaries

    def version(self, server: str, model: str) -> int | None:
        """The canary's version when this request goes to it, else None (the default version answers)."""
        canary = self.canaries().get(server, {}).get(model)
        if canary is None or self.random.random() * 100 >= canary["percent"]:
            return None
        return int(canary["version"])

    def torchserve_path(self, model: str) -> str:
        version = self.version("torchserve", model)
        return f"/predictions/{model}" if version is None else f"/predictions/{model}/{version}.0"

    def triton_model(self, model: str) -> str:
        return model if self.version("triton", model) is None else canary_name(model)
