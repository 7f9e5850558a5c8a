"""Soak and fault test: N requests at concurrency C across both servers and their models, killing a TorchServe
worker or a Triton stub (alternately) every K requests; report what was sent, answered, lost and wrong, and how
long each server took to answer again after each kill.

    maas soak [--requests 100000] [--concurrency 32] [--kill-every 10000] [--models digits,sentiment]
              [--time-limit 1800] [--no-retry] [--report reports/soak.json]

It runs against the servers ``maas serve start`` started (loopback only), stops by itself after ``--requests`` or
``--time-limit`` seconds, and exits 1 when a request was lost or answered wrongly. Every request is a model's
deep health probe (a held-out row, ``scripts/serving/probe.py``) sent through the retrying clients
(``scripts/serving/client.py``; ``--no-retry``: one try each, to count what a naive client loses). "Wrong" means a
label other than the one the same server gave the same row before any kill. Recovery is the time from the kill to
the first moment every model of that server answers a probe (no retries) again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scripts import MODEL_STORE, REPO_ROOT, TRITON_REPOSITORY, at_least
from scripts.serving.client import RetryPolicy, TorchServeClient, TritonClient
from scripts.serving.faults import cli_torchserve_pid, kill_torchserve_worker, kill_triton_stub
from scripts.serving.keys import TritonAccess, read_inference_key, read_triton_key
from scripts.serving.pod_probe import torchserve_body
from scripts.serving.probe import torchserve_probes, triton_inputs, triton_probes
from scripts.serving.processes import TRITON_PID_FILE


@dataclass
class Servers:
    """Where the servers listen, their keys, and the process below which faults are injected."""

    torchserve_url: str
    torchserve_key: str
    torchserve_pid: int
    triton_grpc: str
    triton_pid: int
    triton_access: TritonAccess | None = None
    model_store: Path = MODEL_STORE
    repository: Path = TRITON_REPOSITORY


@dataclass(frozen=True)
class Target:
    server: str
    model: str


class Caller:
    """One thread's clients; ``answer`` sends a target its probe and returns the label (raises when it fails)."""

    def __init__(self, servers: Servers, retrying: bool):
        policy = RetryPolicy() if retrying else RetryPolicy(attempts=1)
        self.torchserve = TorchServeClient(servers.torchserve_url, servers.torchserve_key, policy)
        self.triton = TritonClient(servers.triton_grpc, "grpc", servers.triton_access, policy)
        self.torchserve_probes = torchserve_probes(servers.model_store)
        self.triton_probes = triton_probes(servers.repository)
        self.policy = policy

    def answer(self, target: Target) -> str:
        if target.server == "torchserve":
            body, content_type = torchserve_body(self.torchserve_probes[target.model])
            response = self.torchserve.predict(target.model, content=body, headers={"Content-Type": content_type})
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:120]}")
            answer = response.json()
            return str(answer.get("label", answer)) if isinstance(answer, dict) else json.dumps(answer)
        result = self.triton.infer(target.model, triton_inputs(self.triton_probes[target.model]))
        label = result.as_numpy("LABEL")
        return label.reshape(-1)[0].decode() if label is not None else str(result.get_response().outputs[0])


def recovery_seconds(servers: Servers, targets: list[Target], since: float, limit: float = 120.0) -> tuple[float, bool]:
    """Seconds from ``since`` until every target answers a probe without retries; and whether one failed first."""
    caller, failed = Caller(servers, retrying=False), False
    while time.monotonic() - since < limit:
        try:
            for target in targets:
                caller.answer(target)
            return time.monotonic() - since, failed
        except Exception:
            failed = True
            time.sleep(0.1)
    return float("inf"), True


def soak(servers: Servers, models: list[str], requests: int, concurrency: int, kill_every: int,
         time_limit: float, retrying: bool = True, seed: int = 0) -> dict:  # fmt: skip
    targets = [Target(server, model) for model in models for server in ("torchserve", "triton")]
    warm = Caller(servers, retrying=True)
    expected = {target: warm.answer(target) for target in targets}
    counter, lock, rng = itertools.count(), threading.Lock(), random.Random(seed)
    outcomes, errors, kills, injectors, callers = Counter(), Counter(), [], [], []
    start = time.monotonic()

    def inject(number: int, at_request: int) -> None:
        server = "torchserve" if number % 2 else "triton"
        if server == "torchserve":
            kill = kill_torchserve_worker(servers.torchserve_pid, rng)
        else:
            kill = kill_triton_stub(servers.triton_pid, models[(number // 2 - 1) % len(models)])
        seconds, outage = recovery_seconds(servers, [t for t in targets if t.server == server], kill.at)
        with lock:
            kills.append({"server": server, "killed": kill.what, "at_request": at_request,
                          "recovery_s": round(seconds, 2), "outage_seen": outage})  # fmt: skip

    def work() -> None:
        caller = Caller(servers, retrying)
        with lock:
            callers.append(caller)
        while (i := next(counter)) < requests and time.monotonic() - start < time_limit:
            if kill_every and i and i % kill_every == 0:
                injector = threading.Thread(target=inject, args=(i // kill_every, i))
                injector.start()
                injectors.append(injector)
            target = targets[i % len(targets)]
            try:
                outcome = "answered" if caller.answer(target) == expected[target] else "wrong"
            except Exception as exc:
                outcome = "lost"
                with lock:
                    errors[f"{target.server}/{target.model}: {str(exc)[:160]}"] += 1
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for injector in injectors:
        injector.join()
    seconds = time.monotonic() - start
    sent = sum(outcomes.values())
    return {
        "sent": sent, "answered": outcomes["answered"], "lost": outcomes["lost"], "wrong": outcomes["wrong"],
        "retries": sum(c.policy.retried for c in callers), "retrying_client": retrying,
        "seconds": round(seconds, 1), "requests_per_s": round(sent / seconds, 1), "concurrency": concurrency,
        "kills": sorted(kills, key=lambda k: k["at_request"]), "errors": dict(errors.most_common(5)),
        "stopped_by_time_limit": sent < requests,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=at_least(1), default=100_000)
    parser.add_argument("--concurrency", type=at_least(1), default=32)
    parser.add_argument("--kill-every", type=at_least(0), default=10_000, help="requests between kills (0: no kills)")
    parser.add_argument("--models", default="digits,sentiment")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds; stops sending after it")
    parser.add_argument("--no-retry", action="store_true", help="one try per request (a naive client)")
    parser.add_argument("--report", type=Path, help="write the report as JSON here too")
    args = parser.parse_args(argv)
    if args.time_limit <= 0:
        parser.error(f"argument --time-limit: must be positive, not {args.time_limit:g}")
    torchserve_pid = cli_torchserve_pid()
    if torchserve_pid is None or not TRITON_PID_FILE.exists():
        sys.exit("start both servers first: maas serve start")
    servers = Servers("http://127.0.0.1:8080", read_inference_key(REPO_ROOT), torchserve_pid, "127.0.0.1:8001",
                      int(TRITON_PID_FILE.read_text()), read_triton_key())  # fmt: skip
    report = soak(servers, args.models.split(","), args.requests, args.concurrency, args.kill_every,
                  args.time_limit, retrying=not args.no_retry)  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    return 0 if report["lost"] == 0 and report["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
