"""Deep liveness probe for TorchServe in a KServe pod: one real inference per model, standard library only.

    python3 /mnt/models/config/maas_probe.py [CONFIG_PROPERTIES]

Copied into each TorchServe layout as ``config/maas_probe.py`` by ``maas deploy kserve``
(``scripts/deploy/kserve_layout.py``), because the runtime image need not hold this project: it runs alone, so it
imports nothing but the standard library. It reads the models from the config's ``model_snapshot``, sends each the
``probe.json`` its archive was built with (a held-out row) at ``inference_address``, and exits 1 unless every one
answered 200 within 5 s: a model whose worker died reads as dead here even while TorchServe's /ping says healthy.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.request
import zipfile
from pathlib import Path

DEFAULT_CONFIG = "/mnt/models/config/config.properties"


def read_properties(path: Path) -> dict[str, str]:
    lines = Path(path).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))


def torchserve_body(probe: dict) -> tuple[bytes, str]:
    """A probe's TorchServe request: body bytes and content type (``health.py`` and ``soak.py`` use it too)."""
    wire = probe["torchserve"]
    if "base64" in wire:
        return base64.b64decode(wire["base64"]), "application/octet-stream"
    return json.dumps(wire["json"]).encode(), "application/json"


def probe_request(url: str, mar: Path) -> urllib.request.Request:
    with zipfile.ZipFile(mar) as archive:
        body, content_type = torchserve_body(json.loads(archive.read("probe.json")))
    return urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")


def main(argv: list[str]) -> int:
    config = Path(argv[0] if argv else DEFAULT_CONFIG)
    properties = read_properties(config)
    store = Path(properties["model_store"])
    failed = 0
    for model, versions in json.loads(properties["model_snapshot"])["models"].items():
        mar = store / next(iter(versions.values()))["marName"]
        url = f"{properties['inference_address'].rstrip('/')}/predictions/{model}"
        try:
            with urllib.request.urlopen(probe_request(url, mar), timeout=5) as answer:
                print(f"OK   {model}: {answer.status}")
        except (OSError, KeyError, ValueError) as exc:  # HTTP errors, refused, timeouts, an archive without probe
            failed += 1
            print(f"DOWN {model}: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
