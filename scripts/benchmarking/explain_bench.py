"""What an explanation costs, and what it costs the model's other requests, on the running servers.

    maas bench explain [--models digits,sentiment] [--requests 20] [--out reports/]

Needs ``maas serve start`` (both servers, from this checkout). Per model, one client at a time:

1. the latency of one explanation (default steps) in process, on TorchServe (``/explanations/<model>``) and on
   Triton (``<model>_explain``);
2. the latency of a plain prediction alone, then while a second client asks for explanations back to back: on
   TorchServe the explanation runs in the model's own worker, so a prediction waits behind it; on Triton it runs in
   the sibling model's own process and only shares the cores.

Writes ``explain.json`` and ``explain.md`` to ``--out``. The load average at the start is in the report: run it on
a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton_http

from handlers.explain import explainer_for
from handlers.tasks import load_pipeline
from scripts import REPO_ROOT
from scripts.packaging.explain import source_of
from scripts.serving.client import infer_inputs
from scripts.serving.keys import bearer, read_inference_key, read_triton_key

INPUTS = {  # model -> (TorchServe body, Triton inputs) of one row
    "digits": lambda row: ({"pixels": row}, {"PIXELS": np.asarray([row], dtype=np.float32)}),
    "sentiment": lambda row: ({"text": row}, {"TEXT": np.array([[row.encode()]], dtype=np.object_)}),
}


def held_out_row(model: str):
    first = json.loads((REPO_ROOT / "artifacts" / model / "held_out.jsonl").read_text().splitlines()[0])
    return first["input"]


def timed(call: Callable[[], object], n: int) -> dict:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"n": n, "p50_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (n - 1))], 2)}


def while_busy(plain: Callable[[], object], busy: Callable[[], object], n: int) -> tuple[dict, int]:
    """``plain`` timed ``n`` times while another thread calls ``busy`` back to back; how many ``busy`` calls ran."""
    stop, done = threading.Event(), [0]

    def loop():
        while not stop.is_set():
            busy()
            done[0] += 1

    worker = threading.Thread(target=loop)
    worker.start()
    time.sleep(0.5)  # the first explanation is under way
    try:
        return timed(plain, n), done[0]
    finally:
        stop.set()
        worker.join()


def measure(model: str, requests: int, http: httpx.Client, triton, triton_headers: dict) -> dict:
    body, tensors = INPUTS[model](held_out_row(model))
    explainer = explainer_for(load_pipeline(source_of(REPO_ROOT / "artifacts" / model)))

    def ok(response: httpx.Response) -> httpx.Response:
        response.raise_for_status()
        return response

    def triton_call(name: str):
        return lambda: triton.infer(name, infer_inputs(triton_http, tensors), headers=dict(triton_headers))

    ts_explain = lambda: ok(http.post(f"/explanations/{model}", json=body))  # noqa: E731
    ts_predict = lambda: ok(http.post(f"/predictions/{model}", json=body))  # noqa: E731
    for call in (ts_explain, triton_call(f"{model}_explain"), ts_predict, triton_call(model)):
        call()  # warm: the explainers load at their first request
    report = {
        "explanation": {
            "in_process": timed(lambda: explainer.explain_json([body], [{}]), requests),
            "torchserve": timed(ts_explain, requests),
            "triton": timed(triton_call(f"{model}_explain"), requests),
        },
        "prediction_alone": {
            "torchserve": timed(ts_predict, 10 * requests),
            "triton": timed(triton_call(model), 10 * requests),
        },  # fmt: skip
    }
    busy = {}
    for server, plain, explain in (("torchserve", ts_predict, ts_explain),
                                   ("triton", triton_call(model), triton_call(f"{model}_explain"))):  # fmt: skip
        busy[server], count = while_busy(plain, explain, 10 * requests)
        busy[server]["explanations_meanwhile"] = count
    report["prediction_while_explaining"] = busy
    return report


def markdown(report: dict) -> str:
    lines = [f"# Explanations: latency, and what they cost other requests (load average {report['load_average']})",
             "", "One client at a time; p50 / p90 in ms; default steps (serving.explain_steps).", "",
             "| model | explanation in process | on TorchServe | on Triton | prediction alone TS / Triton | "
             "prediction while explaining TS / Triton |", "|---|---|---|---|---|---|"]  # fmt: skip
    for model, r in report["models"].items():
        e, alone, busy = r["explanation"], r["prediction_alone"], r["prediction_while_explaining"]
        cell = lambda m: f"{m['p50_ms']} / {m['p90_ms']}"  # noqa: E731
        lines.append(f"| {model} | {cell(e['in_process'])} | {cell(e['torchserve'])} | {cell(e['triton'])} | "
                     f"{alone['torchserve']['p50_ms']} / {alone['triton']['p50_ms']} | "
                     f"{busy['torchserve']['p50_ms']} / {busy['triton']['p50_ms']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,sentiment", help="of: " + ", ".join(INPUTS))
    parser.add_argument("--requests", type=int, default=20, help="explanations timed per point (predictions: 10x)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--torchserve", default="http://127.0.0.1:8080")
    parser.add_argument("--triton-http", default="127.0.0.1:8000")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in models if m not in INPUTS]:
        parser.error(f"--models: no inputs for {unknown}; known: {', '.join(INPUTS)}")
    if not (REPO_ROOT / "key_file.json").is_file():
        raise SystemExit("no key_file.json: start the servers from this checkout first (maas serve start)")
    access = read_triton_key()
    http = httpx.Client(base_url=args.torchserve, headers=bearer(read_inference_key(REPO_ROOT)), timeout=120)
    triton = triton_http.InferenceServerClient(args.triton_http, network_timeout=120)
    report = {"load_average": round(os.getloadavg()[0], 2), "requests": args.requests, "models": {}}
    for model in models:
        report["models"][model] = measure(model, args.requests, http, triton,
                                          access.inference_headers() if access else {})  # fmt: skip
        print(json.dumps({model: report["models"][model]}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "explain.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
