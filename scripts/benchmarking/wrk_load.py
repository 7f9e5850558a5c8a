"""HTTP load from wrk, a C load generator (Debian's ``wrk`` package), and the CPU each side used.

The Python clients of ``loadgen.py`` saturate before the servers do (wrk measured 2.5-5.5x more from the same
servers). A point here is ``wrk -t1 -c<concurrency> -d<seconds>s --latency -s maas.lua <url>``: one client thread,
``concurrency`` keep-alive connections, each sending the next request when its answer arrives (a closed loop, as
``loadgen.closed_loop``). The Lua script cycles through the workload's bodies (read from files: binary-safe, with
Triton's per-body ``Inference-Header-Content-Length``) from a per-point offset, and prints a JSON summary.

Every point records the cores each side used over its window: the client's from the kernel's account of the wrk
process (``os.wait4``), the servers' from their process trees (psutil). A client far from one core while the
servers use the rest shows the client was not the limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SCRIPT = r"""
local requests, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do
    local path, json_size = line:match("^(.-)\t(.*)$")
    local file = io.open(path, "rb")
    local body = file:read("*a")
    file:close()
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    if json_size ~= "" then headers["Inference-Header-Content-Length"] = json_size end
    requests[#requests + 1] = wrk.format("POST", nil, headers, body)
  end
  i = tonumber(args[2]) or 0
end
request = function()
  i = i % #requests + 1
  return requests[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MAAS_WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class HttpTarget:
    """What wrk sends: a URL, headers common to every request, and one body per item (with, for Triton's binary
    tensor extension, the size of the body's JSON part)."""

    url: str
    headers: dict[str, str]
    bodies: list[tuple[bytes, int | None]]


def ensure_wrk() -> str:
    """wrk's path; installed from Debian's packages when missing and this runs as root."""
    if found := shutil.which("wrk"):
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (Debian's package) for the HTTP load")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if found := shutil.which("wrk"):
            return found
    raise SystemExit("wrk is needed for the HTTP load: apt-get install wrk (or run the benchmark with --client python)")


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants (those alive now)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
    return total


def run_wrk(target: HttpTarget, concurrency: int, seconds: float, offset: int, workdir: Path, script: str = SCRIPT,
            extra: tuple[str, ...] = ()) -> tuple[dict, float]:  # fmt: skip
    """One wrk run: its JSON summary and the CPU seconds wrk used; ``script`` (Lua) gets the bodies' listing, the
    offset and ``extra`` as its arguments."""
    listing = workdir / "bodies.tsv"
    if not listing.exists():
        lines = []
        for index, (body, json_size) in enumerate(target.bodies):
            path = workdir / f"body-{index}"
            path.write_bytes(body)
            lines.append(f"{path}\t{'' if json_size is None else json_size}")
        listing.write_text("\n".join(lines) + "\n")
    (workdir / "maas.lua").write_text(script)
    headers = [flag for name, value in target.headers.items() for flag in ("-H", f"{name}: {value}")]
    command = [ensure_wrk(), "-t1", f"-c{concurrency}", f"-d{max(seconds, 1):.0f}s", "--latency", "--timeout", "60s",
               *headers, "-s", str(workdir / "maas.lua"), target.url, "--", str(listing), str(offset),
               *extra]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)  # reaps wrk and returns the kernel's account of its CPU time
    process.returncode = os.waitstatus_to_exitcode(status)
    summary = next((line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("MAAS_WRK ")), None)
    if process.returncode or summary is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output[-2000:]}")
    return json.loads(summary), usage.ru_utime + usage.ru_stime


def wrk_point(target: HttpTarget, concurrency: int, duration: float, warmup: float, offset: int,
              server_pids: list[int]) -> dict:  # fmt: skip
    """A closed-loop point, summarised as ``loadgen.summarize`` does, with each side's cores."""
    with tempfile.TemporaryDirectory(prefix="maas-wrk-") as tmp:
        if warmup > 0:
            run_wrk(target, concurrency, warmup, offset, Path(tmp))
        servers_before, started = tree_cpu_seconds(server_pids), time.perf_counter()
        result, client_cpu = run_wrk(target, concurrency, duration, offset, Path(tmp))
        wall = time.perf_counter() - started
        servers_cpu = tree_cpu_seconds(server_pids) - servers_before
    window = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    completed = result["requests"] - result["status"]
    return {
        "completed": completed,
        "errors": errors,
        "window_s": round(window, 3),
        "throughput": completed / window if window else 0.0,
        "mean_ms": result["mean_us"] / 1e3,
        **{f"p{q}_ms": result[f"p{q}_us"] / 1e3 for q in (50, 90, 99)},
        "client": "wrk",
        "client_cores": client_cpu / wall,
        "server_cores": servers_cpu / wall,
    }
