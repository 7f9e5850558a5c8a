"""Where a served request's time goes: py-spy on TorchServe's worker and Triton's stub while wrk loads them.

    maas bench profile [--model sentiment] [--concurrency 1] [--seconds 10] [--out reports/profile]
                       [--serving [torchserve.|triton.]KEY=VALUE]

The model is built (batched, as ``maas bench serving`` builds it) into a temporary directory, ONE TorchServe and ONE
tritonserver serve it on loopback, and for each server wrk sends held-out requests at ``--concurrency`` for
``--seconds`` while ``py-spy record --idle`` samples every Python process of that server (TorchServe's worker,
Triton's stub for the model) at 100 Hz. Idle samples are kept: a worker that waits on its socket most of the time
is limited by what is in front of it (frontend, batcher, IPC), not by its own code.

Written to ``--out``: ``<model>-<server>-c<C>.txt`` (py-spy's collapsed stacks: open them in speedscope.app or
flamegraph.pl) and ``profile.md``, per server the wrk figures, the cores each side used, and the functions with the
largest share of samples (inclusive, and self).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from scripts import REPO_ROOT
from scripts.benchmarking.bench_servers import SERIES_BY_KEY, Servers, build_for_both, http_target, interrupt
from scripts.benchmarking.workloads import model_under_test
from scripts.benchmarking.wrk_load import wrk_point
from scripts.packaging.build import parse_settings

WORKERS = {"torchserve": "model_service_worker", "triton": "triton_python_backend_stub"}
RATE_HZ = 100  # at 250 Hz, Triton's c=1 throughput fell to 40 req/s from 96-114 unprofiled (2 cores)


def worker_pids(server_pid: int, server: str, model: str) -> list[int]:
    """The Python processes that run the model's handler: TorchServe's workers, or Triton's stubs for ``model``."""
    found = []
    for process in psutil.Process(server_pid).children(recursive=True):
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if WORKERS[server] in cmdline and (server == "torchserve" or f"/{model}/" in cmdline):
            found.append(process.pid)
    return found


def profile_point(servers: Servers, series_key: str, model, concurrency: int, seconds: float, out: Path) -> dict:
    """wrk at ``concurrency`` while py-spy records each worker process; the wrk point plus the stacks' summary."""
    series = SERIES_BY_KEY[series_key]
    pids = worker_pids(servers.pids(series)[0], series.server, model.name)
    if not pids:
        raise RuntimeError(f"no {WORKERS[series.server]} process found for {model.name}")
    stacks = out / f"{model.name}-{series.server}-c{concurrency}.txt"
    spies, files = [], []
    for pid in pids:
        path = stacks.with_suffix(f".{pid}.txt")
        command = [py_spy(), "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--idle", "--nonblocking",
                   "--format", "raw", "--output", str(path), "--duration", f"{seconds + 1:.0f}"]  # fmt: skip
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        files.append(path)
    time.sleep(1.0)  # py-spy attaches; the first second is not measured by wrk either
    target = http_target(series, model.name, model.workload, servers.torchserve, servers.triton_ports.http)
    point = wrk_point(target, concurrency, seconds, 0, 0, servers.pids(series))
    for spy in spies:
        if spy.wait(timeout=seconds + 60):
            raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode(errors='replace')[-1000:]}")
    with stacks.open("w") as merged:
        for path in files:
            merged.write(path.read_text())
            path.unlink()
    return {"series": series.label, "point": point, "workers": len(pids), **summarize(stacks.read_text())}


def summarize(collapsed: str, top: int = 15) -> dict:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks (``a;b;c COUNT`` lines)."""
    inclusive, own, total = collections.Counter(), collections.Counter(), 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = [f.strip() for f in stack.split(";")], int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    share = lambda counter: [(f, round(n / total, 4)) for f, n in counter.most_common(top)]  # noqa: E731
    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is needed: pip install py-spy (requirements.txt pins it)")
    return found


def report(model: str, concurrency: int, seconds: float, results: list[dict], command: str) -> str:
    lines = [f"# Profile: {model} at concurrency {concurrency}, {seconds:.0f} s per server", "",
             f"`{command}` - {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Load from wrk; py-spy {RATE_HZ} Hz with idle "
             "samples, so a share is of the worker's wall time (per thread, every thread counted).", ""]  # fmt: skip
    for result in results:
        p = result["point"]
        lines += [f"## {result['series']}", "",
                  f"{p['throughput']:.1f} req/s, p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
                  f"errors {p['errors']}; cores: wrk {p['client_cores']:.2f}, server tree {p['server_cores']:.2f}; "
                  f"{result['workers']} worker process(es), {result['samples']} samples.", "",
                  "| share (inclusive) | function | share (self) | function |", "|---|---|---|---|"]  # fmt: skip
        for (f_in, s_in), (f_self, s_self) in zip(result["inclusive"], result["self"], strict=False):
            lines.append(f"| {s_in:.1%} | `{f_in}` | {s_self:.1%} | `{f_self}` |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentiment", help="artifact name under artifacts/ (default sentiment)")
    parser.add_argument("--concurrency", type=int, default=1, help="wrk connections (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per server (default 10)")
    parser.add_argument("--servers", default="torchserve_rest,triton_http", help="series to profile (HTTP only)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "profile")
    parser.add_argument("--serving", action="append", default=[], metavar="[SERVER.]KEY=VALUE",
                        help="override a serving setting of the build (as maas bench serving)")  # fmt: skip
    args = parser.parse_args(argv)
    args.serving = parse_settings(args.serving)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    model = model_under_test(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="maas-profile-") as tmp:
        root = Path(tmp)
        build_for_both(model.artifact, root, args.serving, name=model.name)  # digits.onnx is served as such
        servers = Servers(root)
        try:
            servers.start()
            servers.wait_torchserve_model(model.name, model.workload)
            for key in args.servers.split(","):
                series = SERIES_BY_KEY[key]
                target = http_target(series, model.name, model.workload, servers.torchserve, servers.triton_ports.http)
                wrk_point(target, args.concurrency, 3, 0, 0, servers.pids(series))  # warm-up, JVM JIT included
                results.append(profile_point(servers, key, model, args.concurrency, args.seconds, args.out))
                print(f"{key}: {results[-1]['point']['throughput']:.1f} req/s", flush=True)
        finally:
            servers.stop()
    command = " ".join(["maas bench profile", *(argv if argv is not None else sys.argv[1:])])
    text = report(model.name, args.concurrency, args.seconds, results, command)
    (args.out / f"profile-{model.name}-c{args.concurrency}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
