"""``maas bench peers``: the same trained models served by this package (TorchServe and Triton) and by the stacks a
user would pick instead (``stacks.PEERS``), under the same wrk load, one stack at a time.

    maas bench peers [--models digits,sentiment_int8,sentiment] [--stacks KEY,...] [--concurrency 1,16,32]
                     [--duration 10] [--warmup 3] [--out reports/peers]

Every stack gets the same held-out rows as JSON (``{"pixels": [[...]]}`` or ``{"text": "..."}``) in the body its
API defines (BentoML and KServe wrap the row in their list); Triton gets the same values as its tensors (binary).
Our servers are built from the artifacts as ``maas build --format <the artifact's own>`` builds them (explainers
off) and started
privately; each peer runs ``apps/user_model.py``, plain ONNX Runtime / transformers code, with the stack's
batching on. Before its load, each stack answers the first ``--check-rows`` rows one by one, and the report counts
how many of its labels agree with our TorchServe's. Each point: wrk closed loop, the cores each side used.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.http as triton_http

from handlers.artifact import read_manifest
from scripts import ARTIFACTS_DIR, REPO_ROOT, at_least, positive
from scripts.benchmarking.bench_servers import Servers, build_for_both, interrupt
from scripts.benchmarking.loadgen import Workload
from scripts.benchmarking.peers.stacks import PEERS, PEERS_BY_KEY, Running, labels_from
from scripts.benchmarking.wrk_load import HttpTarget, ensure_wrk, wrk_point
from scripts.serving.keys import bearer

MODELS = {"digits": "digits.onnx", "sentiment_int8": "sentiment.onnx_int8", "sentiment": "sentiment"}
OURS = {"maas_torchserve": "maas on TorchServe", "maas_triton": "maas on Triton (HTTP)"}


def held_out_rows(artifact: Path) -> list[dict]:
    """The held-out inputs as the JSON rows every stack is sent."""
    lines = (artifact / "held_out.jsonl").read_text().splitlines()
    key = "text" if json.loads((artifact / "pipeline.json").read_text())["task"] == "text_classification" else "pixels"
    return [{key: json.loads(line)["input"]} for line in lines if line.strip()]


def triton_body(row: dict) -> tuple[bytes, int | None]:
    """One row as Triton's tensors (PIXELS FP32 [1, 8, 8] or TEXT BYTES [1, 1]), as tritonclient.http sends it."""
    if "pixels" in row:
        pixels = np.asarray([row["pixels"]], dtype=np.float32)
        tensor = triton_http.InferInput("PIXELS", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
    else:
        tensor = triton_http.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[row["text"].encode()]], dtype=np.object_))
    return triton_http.InferenceServerClient.generate_request_body([tensor])


def our_targets(servers: Servers, model: str, rows: list[bytes], tensors: list) -> dict[str, HttpTarget]:
    ts = servers.torchserve
    json_headers = {**bearer(ts.inference_key), "Content-Type": "application/json"}
    triton_headers = {"Content-Type": "application/octet-stream"}
    return {
        "maas_torchserve": HttpTarget(f"{ts.inference_url}/predictions/{model}", json_headers,
                                      [(row, None) for row in rows]),
        "maas_triton": HttpTarget(f"http://127.0.0.1:{servers.triton_ports.http}/v2/models/{model}/infer",
                                  triton_headers, tensors),
    }  # fmt: skip


def measure(key: str, target: HttpTarget, pids: list[int], args) -> list[dict]:
    points = []
    for offset, concurrency in enumerate(args.concurrency):
        point = wrk_point(target, concurrency, args.duration, args.warmup, offset * 97, pids)
        points.append({"concurrency": concurrency, **{k: round(v, 4) if isinstance(v, float) else v
                                                      for k, v in point.items()}})  # fmt: skip
        print(f"  {key} c={concurrency}: {point['throughput']:.0f} req/s, p50 {point['p50_ms']:.2f} ms, "
              f"p99 {point['p99_ms']:.2f} ms, {point['errors']} errors, client {point['client_cores']:.2f} cores, "
              f"servers {point['server_cores']:.2f}", flush=True)  # fmt: skip
        time.sleep(1)
    return points


def checked(target: HttpTarget, count: int, reference: dict[str, list], model: str) -> dict:
    """Labels of the first ``count`` rows, one request at a time, and how many agree with ``reference[model]``;
    the first stack checked on a model (maas on TorchServe) sets the reference."""
    labels = labels_from(target.url, target.headers, target.bodies[:count])
    if model not in reference:
        reference[model] = labels
        return {"labels": labels}
    agree = sum(a == b for a, b in zip(labels, reference[model], strict=True))
    return {"labels": labels, "agree": agree, "of": count}


def run_ours(args, models: dict[str, Path], rows: dict[str, list], root: Path, results: dict, reference: dict) -> None:
    for name, artifact in models.items():  # in the artifact's own format: eager stays eager (not the int8 default)
        fmt = read_manifest(artifact).model.get("format", "eager")
        build_for_both(artifact, root, {}, name=name, explain=False, fmt=fmt)
    servers = Servers(root)
    try:
        servers.start()
        for name in models:
            bodies = [json.dumps(row).encode() for row in rows[name]]
            tensors = [triton_body(row) for row in rows[name]]
            servers.wait_torchserve_model(name, Workload(bodies, "application/json", None))
            for key, target in our_targets(servers, name, bodies, tensors).items():
                if key not in args.stacks:
                    continue
                check = checked(target, args.check_rows, reference, name)
                pid = (servers.torchserve if key == "maas_torchserve" else servers.triton).process.pid
                results[key][name] = {"check": check, "points": measure(f"{key} {name}", target, [pid], args)}
    finally:
        servers.stop()


def run_peer(key: str, args, models: dict[str, Path], rows: dict[str, list], root: Path, results: dict,
             reference: dict) -> None:  # fmt: skip
    peer = PEERS_BY_KEY[key]
    for name, artifact in models.items():
        bodies = [json.dumps(row).encode() for row in rows[name]]
        started = time.perf_counter()
        running: Running = peer.start(artifact, root / key / name, bodies[0])
        try:
            print(f"{peer.label} serving {name} in {time.perf_counter() - started:.0f}s", flush=True)
            target = HttpTarget(running.url, running.headers, [(peer.body(body), None) for body in bodies])
            check = checked(target, args.check_rows, reference, name)
            results[key][name] = {"check": check, "points": measure(f"{key} {name}", target, [running.process.pid],
                                                                   args)}  # fmt: skip
        finally:
            running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stacks = [*OURS, *(peer.key for peer in PEERS)]
    parser.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    parser.add_argument("--stacks", default=",".join(stacks), help=f"of {', '.join(stacks)}")
    parser.add_argument("--concurrency", default="1,16,32")
    parser.add_argument("--duration", type=positive, default=10.0, help="seconds per point (default 10)")
    parser.add_argument("--warmup", type=positive, default=3.0, help="seconds of load before each point")
    parser.add_argument("--check-rows", type=at_least(1), default=50)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "peers")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # a stopped run stops every server it started
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.stacks = [s for s in args.stacks.split(",") if s]
    if unknown := sorted(set(args.stacks) - set(stacks)):
        raise SystemExit(f"--stacks: unknown {', '.join(unknown)} (known: {', '.join(stacks)})")
    models = {}
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"--models: unknown {name} (known: {', '.join(MODELS)})")
        models[name] = ARTIFACTS_DIR / MODELS[name]
        if not (models[name] / "pipeline.json").is_file():
            raise SystemExit(f"{models[name]} is missing: train it (maas train) and export it (maas export)")
    ensure_wrk()
    report = {"command": " ".join(["maas bench peers", *(argv or [])]), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2),
              "duration_s": args.duration, "warmup_s": args.warmup, "check_rows": args.check_rows,
              "setups": {**{k: "maas build defaults" for k in OURS}, **{p.key: p.setup for p in PEERS}},
              "labels": {**OURS, **{p.key: p.label for p in PEERS}},
              "results": {s: {} for s in args.stacks}}  # fmt: skip
    print(f"load average at start: {report['load_average_at_start']}", flush=True)
    reference: dict[str, list] = {}  # per model, the labels the first stack checked answered
    rows = {name: held_out_rows(artifact) for name, artifact in models.items()}  # read once, sent to every stack
    with tempfile.TemporaryDirectory(prefix="maas-peers-") as tmp:
        if set(OURS) & set(args.stacks):
            run_ours(args, models, rows, Path(tmp) / "maas", report["results"], reference)
        for key in args.stacks:
            if key not in OURS:
                run_peer(key, args, models, rows, Path(tmp), report["results"], reference)
    from scripts.benchmarking.peers.report import write_report  # here for matplotlib's import cost

    for path in write_report(report, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
