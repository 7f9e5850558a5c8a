"""``maas bench overload``: each server offered 0.5x, 1x, 2x and 4x its measured capacity, at a fixed arrival rate.

    maas bench overload [--model digits] [--levels 0.5,1,2,4] [--seconds 10] [--deadline-ms 100]
                        [--connections 1024] [--only torchserve|triton] [--out reports/overload]

Against the servers ``maas serve start`` started (loopback). Per server: its capacity first (wrk, closed loop, 64
connections), then one point per level, offered by wrk with Poisson arrivals: each of ``--connections`` keep-alive
connections waits an exponential pause of mean ``connections / rate`` before each request. That keeps the rate only
while answers are quick next to the pause; the report gives the rate each point reached (``sent_per_s``) beside
the one it asked for, so a point where the client could not keep it shows as such. A probe thread sends the same
request at ~25 requests/s through the point and times each answer: the admitted requests' p50/p99 come from it
(wrk's percentiles mix in the refusals), as does the count answered after the deadline. Every request carries its
deadline, stamped when it is sent (TorchServe: the header ``X-Request-Deadline``; Triton: the parameter
``deadline``); our adapters refuse an expired one uncomputed (504 / 503). Triton's own count of requests it refused
(REJECTED: its queue policy, off by default) is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import tritonclient.http as triton_http

from handlers.deadline import DEADLINE_HEADER, DEADLINE_PARAMETER
from scripts import REPO_ROOT, at_least, positive
from scripts.benchmarking.workloads import model_under_test
from scripts.benchmarking.wrk_load import SCRIPT, HttpTarget, run_wrk, tree_cpu_seconds, wrk_point
from scripts.serving.faults import cli_torchserve_pid
from scripts.serving.keys import bearer, read_inference_key
from scripts.serving.processes import TRITON_PID_FILE

PLACEHOLDER = "1000000000000"  # a deadline's place in a request (Unix ms: 13 digits until 2286)
REFUSALS_FOR_A_COST = 0.25  # refusals per answer below which the server CPU per refusal is not reported
SETTLE_S = 3.0  # between points: what the last one queued is answered before the next starts

# wrk's script, paced: a Poisson process per connection (mean pause args[3] ms), each request stamped with its
# deadline (args[4] ms from when it is sent: the 13 digits of PLACEHOLDER), answers counted by status.
OPEN_LOOP = (
    SCRIPT.replace("done = function", "done_closed = function").replace(
        "request = function", "request_closed = function"
    )
    + r"""
local mean, budget, threads = 0, 0, {}
ok, refused, failed = 0, 0, 0
local init_bodies = init
init = function(args)
  init_bodies(args)
  mean, budget = tonumber(args[3]), tonumber(args[4])
end
local ffi = require("ffi")  -- wrk's LuaJIT: the wall clock in ms, for each request's deadline
ffi.cdef[[ typedef struct { long sec; long usec; } maas_timeval; int gettimeofday(maas_timeval *tv, void *tz); ]]
local clock = ffi.new("maas_timeval")
request = function()
  i = i % #requests + 1
  ffi.C.gettimeofday(clock, nil)
  local deadline = tonumber(clock.sec) * 1000 + math.floor(tonumber(clock.usec) / 1000) + budget
  return (requests[i]:gsub("DEADLINE_PLACE", string.format("%d", deadline), 1))
end
setup = function(thread) threads[#threads + 1] = thread end
delay = function() return -math.log(1 - math.random()) * mean end
response = function(status)
  if status == 200 then ok = ok + 1
  elseif status == 429 or status == 503 or status == 504 then refused = refused + 1
  else failed = failed + 1 end
end
done = function(summary, latency, requests)
  local t, e = threads[1], summary.errors
  io.write(string.format('MAAS_WRK {"requests": %d, "duration_us": %d, "ok": %d, "refused": %d, "failed": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, t:get("ok"),
    t:get("refused"), t:get("failed"), e.connect + e.read + e.write + e.timeout, latency:percentile(50),
    latency:percentile(99)))
end
""".replace("DEADLINE_PLACE", PLACEHOLDER)
)


def targets(model: str, deadline_ms: float, torchserve_running: bool = True) -> dict[str, HttpTarget]:
    """Each server's request for ``model``'s first held-out item, with a place for its deadline (TorchServe's
    header, Triton's ``deadline`` parameter: ``handlers/deadline.py``). TorchServe's key is read only while it runs
    (its key file is written at start)."""
    workload = model_under_test(model).workload
    key = read_inference_key(REPO_ROOT) if torchserve_running else ""
    headers = {**bearer(key), "Content-Type": workload.content_type, DEADLINE_HEADER: PLACEHOLDER}
    torchserve = HttpTarget(f"http://127.0.0.1:8080/predictions/{model}", headers, [(workload.rest_bodies[0], None)])
    inputs = workload.triton_inputs(triton_http)[0]
    parameters = {DEADLINE_PARAMETER: int(PLACEHOLDER)}
    body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs, parameters=parameters)
    kind = "application/octet-stream" if json_size is not None else "application/json"
    triton = HttpTarget(f"http://127.0.0.1:8000/v2/models/{model}/infer", {"Content-Type": kind}, [(body, json_size)])
    return {"torchserve": torchserve, "triton": triton}


def without_deadline(target: HttpTarget) -> HttpTarget:
    """The same requests with a deadline that never comes (the closed-loop capacity)."""
    never = "9999999999999"
    headers = {k: never if v == PLACEHOLDER else v for k, v in target.headers.items()}
    bodies = [(body.replace(PLACEHOLDER.encode(), never.encode(), 1), size) for body, size in target.bodies]
    return HttpTarget(target.url, headers, bodies)


class Probe:
    """One request every ~40 ms while a point runs: the latency of each one admitted, and how many came late."""

    def __init__(self, target: HttpTarget, deadline_ms: float):
        self.target, self.deadline_ms = target, deadline_ms
        self.admitted: list[float] = []
        self.refused = self.failed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        body, json_size = self.target.bodies[0]
        headers = dict(self.target.headers)
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        with httpx.Client(timeout=30) as client:
            while not self.stopping.wait(0.04):
                start = time.perf_counter()
                deadline = str(int(time.time() * 1e3 + self.deadline_ms))
                stamped = {k: deadline if v == PLACEHOLDER else v for k, v in headers.items()}
                content = body.replace(PLACEHOLDER.encode(), deadline.encode(), 1)
                try:
                    status = client.post(self.target.url, content=content, headers=stamped).status_code
                except httpx.HTTPError:
                    status = 0
                if status == 200:
                    self.admitted.append((time.perf_counter() - start) * 1e3)
                elif status in (429, 503, 504):
                    self.refused += 1
                else:
                    self.failed += 1

    def summary(self) -> dict:
        ms = sorted(self.admitted)
        quantile = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 2) if ms else None  # noqa: E731
        late = sum(m > self.deadline_ms for m in ms)
        return {"probe_admitted": len(ms), "probe_refused": self.refused, "probe_failed": self.failed,
                "admitted_p50_ms": quantile(0.5), "admitted_p99_ms": quantile(0.99),
                "admitted_mean_ms": round(statistics.fmean(ms), 2) if ms else None,
                "probe_answered_after_deadline": late}  # fmt: skip


def rejected_by_triton(model: str) -> float:
    """Triton's count of requests it refused uncomputed (a queue timeout or a full queue)."""
    text = httpx.get("http://127.0.0.1:8002/metrics", timeout=10).text
    marks = (f'model="{model}"', 'reason="REJECTED"')
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_request_failure") and all(m in line for m in marks))  # fmt: skip


def open_point(server: str, model: str, target: HttpTarget, rate: float, args, pids: list[int]) -> dict:
    mean_pause_ms = args.connections / rate * 1e3
    probe = Probe(target, args.deadline_ms)
    rejected_before = rejected_by_triton(model) if server == "triton" else 0.0
    with tempfile.TemporaryDirectory(prefix="maas-overload-") as tmp:
        servers_before, started = tree_cpu_seconds(pids), time.perf_counter()
        probe.thread.start()
        result, client_cpu = run_wrk(target, args.connections, args.seconds, 0, Path(tmp), OPEN_LOOP,
                                     (f"{mean_pause_ms:.4f}", f"{args.deadline_ms:.0f}"))  # fmt: skip
        probe.stopping.set()
        probe.thread.join()
        wall = time.perf_counter() - started
        servers_cpu = tree_cpu_seconds(pids) - servers_before
    window = result["duration_us"] / 1e6
    point = {
        "offered_per_s": round(rate, 1), "sent_per_s": round(result["requests"] / window, 1),
        "goodput_per_s": round(result["ok"] / window, 1), "refused_per_s": round(result["refused"] / window, 1),
        "failed": result["failed"], "socket_errors": result["socket_errors"],
        "all_p50_ms": result["p50_us"] / 1e3, "all_p99_ms": result["p99_us"] / 1e3, **probe.summary(),
        "client_cores": round(client_cpu / wall, 2), "server_cores": round(servers_cpu / wall, 2),
    }  # fmt: skip
    if server == "triton":
        point["triton_rejected_uncomputed"] = rejected_by_triton(model) - rejected_before
    return point


def in_time(point: dict) -> float:
    """The answers per second that came before their deadline, estimated: wrk counts every 200 (its script cannot
    tell when each was sent), so the share the probe saw answered late is taken out."""
    admitted = point["probe_admitted"]
    late_share = point["probe_answered_after_deadline"] / admitted if admitted else 0.0
    return point["goodput_per_s"] * (1 - late_share)


def machine_bound(point: dict, capacity: dict, cores: int) -> dict:
    """What this machine could answer at ``point`` if refusals cost nothing: the cores the client left, over one
    answer's server CPU at capacity; and what the server really spent per refusal beyond its answers. The client
    shares the cores (loopback), so past some offered rate no server could keep its capacity here."""
    per_answer = capacity["server_cores"] / capacity["throughput"]
    bound = min(point["offered_per_s"], (cores - point["client_cores"]) / per_answer)
    spent_on_refusals = point["server_cores"] - point["goodput_per_s"] * per_answer
    # A few refusals among many answers leave the difference in the noise of one answer's cost: no figure then.
    many = point["refused_per_s"] >= REFUSALS_FOR_A_COST * point["goodput_per_s"]
    per_refusal = spent_on_refusals / point["refused_per_s"] * 1e6 if many and point["refused_per_s"] else None
    return {"bound_of_peak": round(bound / capacity["throughput"], 3),
            "server_us_per_refusal": round(per_refusal) if per_refusal is not None else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--levels", default="0.5,1,2,4", help="multiples of each server's measured capacity")
    parser.add_argument("--seconds", type=positive, default=10.0, help="per point")
    parser.add_argument("--deadline-ms", type=positive, default=100.0)
    parser.add_argument("--connections", type=at_least(1), default=1024)
    parser.add_argument("--only", choices=["torchserve", "triton"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "overload")
    args = parser.parse_args(argv)
    levels = [float(level) for level in args.levels.split(",")]
    torchserve_pid = cli_torchserve_pid()
    pids = {"torchserve": [torchserve_pid] if torchserve_pid else None,
            "triton": [int(TRITON_PID_FILE.read_text())] if TRITON_PID_FILE.exists() else None}  # fmt: skip
    missing = [server for server in pids if args.only in (None, server) and pids[server] is None]
    if missing:
        raise SystemExit(f"start {' and '.join(missing)} first: maas serve start {args.only or ''}".rstrip())
    report = {"model": args.model, "deadline_ms": args.deadline_ms, "connections": args.connections,
              "seconds": args.seconds, "load_average_at_start": os.getloadavg()[0], "servers": {}}  # fmt: skip
    for server, target in targets(args.model, args.deadline_ms, pids["torchserve"] is not None).items():
        if args.only not in (None, server):
            continue
        time.sleep(SETTLE_S)
        capacity = wrk_point(without_deadline(target), 64, args.seconds, 2, 0, pids[server])
        print(f"{server}: capacity {capacity['throughput']:.0f} req/s (closed loop, 64 connections)", flush=True)
        points = []
        for level in levels:
            time.sleep(SETTLE_S)
            point = {"level": level, **open_point(server, args.model, target, level * capacity["throughput"], args,
                                                  pids[server])}  # fmt: skip
            point["goodput_of_peak"] = round(point["goodput_per_s"] / capacity["throughput"], 3)
            point["in_time_of_peak"] = round(in_time(point) / capacity["throughput"], 3)
            point.update(machine_bound(point, capacity, len(os.sched_getaffinity(0))))
            print(json.dumps(point), flush=True)
            points.append(point)
        cores = {k: round(capacity[k], 2) for k in ("server_cores", "client_cores")}
        report["servers"][server] = {"capacity_per_s": round(capacity["throughput"], 1), "points": points,
                                     "capacity_cores": cores}  # fmt: skip
    from scripts.benchmarking.overload_report import write_report  # here for matplotlib's import cost

    for path in write_report(report, args.out):
        print(f"wrote {path}")
    return 0
