"""What every rollout shares: its refusal, the contract a new version must keep, the version's checksum."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from handlers.artifact import Manifest, read_manifest


class RolloutRefused(ValueError):
    """The new version was not put in service (it failed to load or its probe); the message says why."""


def check_contract(new: Manifest, served: dict | None, model: str, new_contract: bool) -> None:
    """Refuse a version whose answers the model's clients would not expect: another task, or other labels."""
    if served is None or new_contract:
        return
    for field in ("task", "labels"):
        if served.get(field) != getattr(new, field):
            raise RolloutRefused(
                f"{model}: the new version's {field} ({getattr(new, field)}) differ from the served version's "
                f"({served.get(field)}): its clients would get answers they do not expect. Deploy it under another "
                "--name, or pass --new-contract"
            )


def weights_checksum(artifact: Path) -> str:
    files = read_manifest(artifact, verify=False).files
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
