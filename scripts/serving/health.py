"""Deep health: a real inference per model on each server, not the server's word for it.

    maas serve status [torchserve|triton|both] [--json]      exit 0 when every model answered, 1 otherwise

With Triton, the OpenAI frontend started beside it is probed too: each language model it lists, one token. Each
line names the version that answered; a running canary (``maas serve deploy --canary``) has a line of its own,
``<model>-canary``, with its share (``maas serve versions`` lists every version loaded).

Each model's probe (``scripts/serving/probe.py``: a held-out row written into the archive and the Triton model at
build time) is sent to the model, without retries and with a short timeout; the model is healthy only when it
answers. This sees what the servers' own readiness does not: a killed Triton Python stub leaves
``/v2/health/ready`` at 200 while every request fails. Use the command as a Kubernetes exec probe (readiness and
liveness); the Triton supervisor (``scripts/serving/triton_supervisor.py``) runs the same check to heal models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from scripts import MODEL_STORE, REPO_ROOT, TRITON_REPOSITORY
from scripts.serving.canary import CANARY_FILE, CANARY_SUFFIX, canary_name, read_canaries
from scripts.serving.client import infer_inputs
from scripts.serving.keys import read_inference_key, read_triton_key
from scripts.serving.openai_process import OPENAI_KEY_FILE, read_openai_key
from scripts.serving.pod_probe import torchserve_body
from scripts.serving.probe import GENERATE, VERSION_HEADER, torchserve_probes, triton_inputs, triton_probes

PROBE_TIMEOUT = 5.0


@dataclass
class ModelHealth:
    server: str
    model: str
    ok: bool
    ms: float
    detail: str


def torchserve_health(url: str, key: str | None, model_store: Path = MODEL_STORE, timeout: float = PROBE_TIMEOUT,
                      canary_file: Path | None = None) -> list[ModelHealth]:  # fmt: skip
    """``canary_file``: a running canary (``maas serve deploy --canary``) is probed too, as ``<model>-canary``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    canaries = read_canaries(canary_file).get("torchserve", {}) if canary_file else {}
    results = []
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
        for model, probe in torchserve_probes(model_store).items():
            results.append(_torchserve_probe(http, model, f"/predictions/{model}", probe))
            if canary := canaries.get(model):
                path = f"/predictions/{model}/{canary['version']}.0"
                result = _torchserve_probe(http, canary_name(model), path, probe)
                result.detail += _share(canaries, result.model)
                results.append(result)
    return results


def _torchserve_probe(http: httpx.Client, name: str, path: str, probe: dict | None) -> ModelHealth:
    start = time.perf_counter()
    try:
        if probe is None:
            response = http.get("/ping")
            ok, detail = response.status_code == 200, f"no probe in the archive: ping {response.status_code}"
        else:
            body, content_type = torchserve_body(probe)
            response = http.post(path, content=body, headers={"Content-Type": content_type})
            version = response.headers.get(VERSION_HEADER)  # the version that answered
            ok, detail = response.status_code == 200, f"HTTP {response.status_code}"
            detail += f", version {version}" if version else ""
            if not ok:
                detail += f": {response.text[:200]}"
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return ModelHealth("torchserve", name, ok, _ms(start), detail)


def triton_health(url: str, repository: Path = TRITON_REPOSITORY, headers: dict[str, str] | None = None,
                  timeout: float = PROBE_TIMEOUT, probes: dict | None = None,
                  canary_file: Path | None = None) -> list[ModelHealth]:  # fmt: skip
    """``url``: host:port of Triton's HTTP endpoint; ``headers``: the access key when inference is restricted;
    ``probes``: ``triton_probes(repository)`` already read (the supervisor reads them once); ``canary_file``: the
    canaries' shares, for their lines (a canary is the model ``<model>-canary``)."""
    canaries = read_canaries(canary_file).get("triton", {}) if canary_file else {}
    client = triton_http.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    results = []
    try:
        for model, probe in (probes if probes is not None else triton_probes(repository)).items():
            start = time.perf_counter()
            try:
                # tritonclient adds its own (int-valued) headers to the dict it is given: each call gets a copy
                if probe is None:
                    ok = client.is_model_ready(model, headers=dict(headers or {}))
                    detail = f"no probe in the model directory: model {'ready' if ok else 'not ready'}"
                elif GENERATE in probe:  # a language model (decoupled): /infer refuses it, generate answers
                    response = httpx.post(f"http://{url}/v2/models/{model}/generate", json=probe[GENERATE],
                                          headers=headers, timeout=timeout)  # fmt: skip
                    ok, detail = response.status_code == 200, f"generate: HTTP {response.status_code}"
                else:
                    inputs = infer_inputs(triton_http, triton_inputs(probe))
                    result = client.infer(model, inputs, headers=dict(headers or {}))
                    ok, detail = True, f"answered, version {result.get_response().get('model_version')}"
                    detail += _share(canaries, model)
            except (InferenceServerException, OSError, httpx.HTTPError) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results.append(ModelHealth("triton", model, ok, _ms(start), detail))
    finally:
        client.close()
    return results


def openai_health(base_url: str, key: str) -> list[ModelHealth]:
    """Each language model the OpenAI frontend over Triton lists, asked for one token through it."""
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    try:
        listed = httpx.get(f"{base_url}/models", headers=headers, timeout=PROBE_TIMEOUT)
        listed.raise_for_status()
        models = [m["id"] for m in listed.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return [ModelHealth("openai", "(frontend)", False, _ms(start), f"{type(exc).__name__}: {exc}")]
    results = []
    for model in models:
        start = time.perf_counter()
        body = {"model": model, "prompt": "The", "max_tokens": 1, "temperature": 0}
        try:
            answer = httpx.post(f"{base_url}/completions", json=body, headers=headers, timeout=PROBE_TIMEOUT)
            ok, detail = answer.status_code == 200, f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.append(ModelHealth("openai", model, ok, _ms(start), detail if not ok else "answered"))
    return results


def _share(canaries: dict[str, dict], name: str) -> str:
    """What a canary's health line adds: its share of the requests."""
    canary = canaries.get(name.removesuffix(CANARY_SUFFIX)) if name.endswith(CANARY_SUFFIX) else None
    return f", a canary of {canary['percent']:g}%" if canary else ""


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", nargs="?", default="both", choices=["torchserve", "triton", "both"])
    parser.add_argument("--torchserve", default="http://127.0.0.1:8080", help="TorchServe inference URL")
    parser.add_argument("--triton-http", default="127.0.0.1:8000", help="Triton HTTP host:port")
    parser.add_argument("--openai", default="http://127.0.0.1:9000/v1", help="the OpenAI frontend's base URL")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--repository", type=Path, default=TRITON_REPOSITORY)
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    args = parser.parse_args(argv)
    results = []
    if args.server in ("torchserve", "both"):
        try:
            key = read_inference_key(REPO_ROOT)
        except (OSError, ValueError, KeyError):
            key = None  # not started here: every probe fails with the server's own answer
        results += torchserve_health(args.torchserve, key, args.model_store, canary_file=CANARY_FILE)
    if args.server in ("triton", "both"):
        headers = read_triton_key().inference_headers()
        results += triton_health(args.triton_http, args.repository, headers, canary_file=CANARY_FILE)
        if OPENAI_KEY_FILE.exists():  # the frontend runs beside a tritonserver started here
            results += openai_health(args.openai, read_openai_key())
    if not results:  # nothing built: say so, not exit 1 in silence
        stores = {"torchserve": [args.model_store], "triton": [args.repository]}
        where = " or ".join(map(str, stores.get(args.server, [args.model_store, args.repository])))
        raise SystemExit(f"no model in {where}: nothing to probe; build one first: maas build ARTIFACT")
    width = max(16, *(len(r.model) for r in results))
    for result in results:
        if args.json:
            print(json.dumps(asdict(result)))
        else:
            state = "OK  " if result.ok else "DOWN"
            print(f"{state} {result.server:<10} {result.model:<{width}} {result.ms:>8.1f} ms  {result.detail}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
