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

from scripts import MODEL_STORE, REPO_ROOT, TRITON_REPOSITORY, at_least, positive
from scripts.serving.canary import CANARY_FILE, CanarySplit
from scripts.serving.client import RetryPolicy, TorchServeClient, TritonClient
from scripts.serving.faults import cli_torchserve_pid, kill_torchserve_worker, kill_triton_stub
from scripts.serving.keys import TritonAccess, read_inference_key, read_triton_key
from scripts.serving.pod_probe import torchserve_body
from scripts.serving.probe import VERSION_HEADER, torchserve_probes, triton_inputs, triton_probes
from scripts.serving.processes import TRITON_PID_FILE, triton_stubs


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
    canary_file: Path | None = None  # the clients send running canaries their share (``maas soak --deploy``)


@dataclass(frozen=True)
class Target:
    server: str
    model: str


@dataclass(frozen=True)
class Answer:
    label: str
    version: str  # the version that answered, as the server says ("" when it does not)
    routed: str | None  # the version this request was routed to (a canary's), None: the model's default


HEALED_ROUNDS = 20  # probes in a row after a Triton reload starts: a dead instance left would fail ~half


class Caller:
    """One thread's clients; ``answer`` sends a target its probe and returns its ``Answer`` (raises when it fails)."""

    def __init__(self, servers: Servers, retrying: bool):
        policy = RetryPolicy() if retrying else RetryPolicy(attempts=1)
        split = CanarySplit(servers.canary_file) if servers.canary_file else None
        self.torchserve = TorchServeClient(servers.torchserve_url, servers.torchserve_key, policy, canary=split)
        self.triton = TritonClient(servers.triton_grpc, "grpc", servers.triton_access, policy, canary=split)
        self.torchserve_probes = torchserve_probes(servers.model_store)
        self.triton_probes = triton_probes(servers.repository)
        self.policy = policy

    def answer(self, target: Target) -> Answer:
        if target.server == "torchserve":
            body, content_type = torchserve_body(self.torchserve_probes[target.model])
            response = self.torchserve.predict(target.model, content=body, headers={"Content-Type": content_type})
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:120]}")
            answer = response.json()
            label = str(answer.get("label", answer)) if isinstance(answer, dict) else json.dumps(answer)
            path = response.request.url.path
            routed = path.rsplit("/", 1)[-1].removesuffix(".0") if path != f"/predictions/{target.model}" else None
            return Answer(label, response.headers.get(VERSION_HEADER, ""), routed)
        result = self.triton.infer(target.model, triton_inputs(self.triton_probes[target.model]))
        response, label = result.get_response(), result.as_numpy("LABEL")
        label = label.reshape(-1)[0].decode() if label is not None else str(response.outputs[0])
        routed = response.model_version if response.model_name != target.model else None  # to <model>-canary
        return Answer(label, response.model_version, routed)


def recovery_seconds(servers: Servers, targets: list[Target], since: float, limit: float = 120.0,
                     healed=lambda: True, rounds: int = 1) -> tuple[float, bool]:  # fmt: skip
    """Seconds from ``since`` until ``healed()`` and every target answers ``rounds`` probes in a row without retries;
    and whether a probe failed first."""
    caller, failed, streak = Caller(servers, retrying=False), False, 0
    while time.monotonic() - since < limit:
        try:
            for target in targets:
                caller.answer(target)
            if healed():  # the rounds of a streak run back to back; waiting for the heal is paced
                streak += 1
                if streak >= rounds:
                    return time.monotonic() - since, failed
                continue
            streak = 0
        except Exception:
            failed, streak = True, 0
        time.sleep(0.1)
    return float("inf"), True


def soak(servers: Servers, models: list[str], requests: int, concurrency: int, kill_every: int,
         time_limit: float, retrying: bool = True, seed: int = 0, events=None) -> dict:  # fmt: skip
    """``events``: instead of a kill every ``kill_every`` requests, ``events(number, at_request)``, which returns
    its record for the report (None: nothing more to do); its ``phase``, read at each request, groups the answers
    (``maas soak --deploy``). An answer is "mixed" when it came from another version than the one the request was
    routed to, and "wrong" when its label differs from the first that version gave for the same row."""
    targets = [Target(server, model) for model in models for server in ("torchserve", "triton")]
    warm = Caller(servers, retrying=True)
    expected = {(target, answer.version): answer.label for target in targets for answer in [warm.answer(target)]}
    counter, lock, rng = itertools.count(), threading.Lock(), random.Random(seed)
    outcomes, errors, phases, records, injectors, callers = Counter(), Counter(), Counter(), [], [], []
    switches = Counter()  # per client thread and target: changes of the version answering requests without one
    start = time.monotonic()

    def kill(number: int, at_request: int) -> dict:
        server, model = "torchserve" if number % 2 else "triton", models[(number // 2 - 1) % len(models)]
        if server == "torchserve":  # TorchServe restarts its worker: back once every model answers
            kill, healed, rounds = kill_torchserve_worker(servers.torchserve_pid, rng), lambda: True, 1
        else:
            # A Triton model's other instances answer while one stub is dead, so a probe need not fail: it is back
            # once the supervisor's reload has started new stubs and HEALED_ROUNDS rounds in a row answer (the old
            # instances, the dead one among them, serve until the reload is done, ~2 s).
            before = {p.pid for p in triton_stubs(servers.triton_pid, model)}
            kill, rounds = kill_triton_stub(servers.triton_pid, model), HEALED_ROUNDS

            def healed() -> bool:
                return any(p.pid not in before for p in triton_stubs(servers.triton_pid, model))

        seconds, outage = recovery_seconds(servers, [t for t in targets if t.server == server], kill.at, healed=healed,
                                           rounds=rounds)  # fmt: skip
        return {"server": server, "killed": kill.what, "at_request": at_request, "recovery_s": round(seconds, 2),
                "outage_seen": outage}  # fmt: skip

    def inject(number: int, at_request: int) -> None:
        record = (events or kill)(number, at_request)
        if record is not None:
            with lock:
                records.append(record)

    def outcome(caller: Caller, target: Target, last: dict) -> tuple[str, bool]:
        """What became of one request, and whether it went to a canary."""
        answer = caller.answer(target)
        to_canary = answer.routed is not None
        if to_canary and answer.routed != answer.version:
            return "mixed", to_canary
        if answer.routed is None:
            if last.get(target, answer.version) != answer.version:
                switches[(threading.get_ident(), target)] += 1
            last[target] = answer.version
        with lock:
            first = expected.setdefault((target, answer.version), answer.label)
        return "answered" if answer.label == first else "wrong", to_canary

    def work() -> None:
        caller, last = Caller(servers, retrying), {}
        with lock:
            callers.append(caller)
        while (i := next(counter)) < requests and time.monotonic() - start < time_limit:
            if kill_every and i and i % kill_every == 0:
                injector = threading.Thread(target=inject, args=(i // kill_every, i))
                injector.start()
                injectors.append(injector)
            target, phase = targets[i % len(targets)], getattr(events, "phase", None)
            to_canary = None
            try:
                result, to_canary = outcome(caller, target, last)
            except Exception as exc:
                result = "lost"
                with lock:
                    errors[f"{target.server}/{target.model}: {str(exc)[:160]}"] += 1
            with lock:
                outcomes[result] += 1
                if to_canary is not None and phase is not None and phase == events.phase:  # sent and answered in it
                    phases[(target.server, target.model, phase, "to_canary" if to_canary else "to_default")] += 1

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for injector in injectors:
        injector.join()
    seconds = time.monotonic() - start
    sent = sum(outcomes.values())
    report = {
        "sent": sent, "answered": outcomes["answered"], "lost": outcomes["lost"], "wrong": outcomes["wrong"],
        "mixed": outcomes["mixed"], "retries": sum(c.policy.retried for c in callers), "retrying_client": retrying,
        "seconds": round(seconds, 1), "requests_per_s": round(sent / seconds, 1), "concurrency": concurrency,
        "default_switches_max": max(switches.values(), default=0), "errors": dict(errors.most_common(5)),
        "stopped_by_time_limit": sent < requests,
    }  # fmt: skip
    if events is None:
        report["kills"] = sorted(records, key=lambda k: k["at_request"])
    else:
        report["steps"] = sorted(records, key=lambda k: k["at_request"])
        report["phases"] = {" ".join(key): count for key, count in sorted(phases.items())}
    return report


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=at_least(1), default=100_000)
    parser.add_argument("--concurrency", type=at_least(1), default=32)
    parser.add_argument("--kill-every", type=at_least(0), default=10_000, help="requests between kills (0: no kills)")
    parser.add_argument("--models", default="digits,sentiment")
    parser.add_argument("--time-limit", type=positive, default=1800, help="seconds; stops sending after it")
    parser.add_argument("--no-retry", action="store_true", help="one try per request (a naive client)")
    parser.add_argument("--report", type=Path, help="write the report as JSON here too")
    return parser


def run(args: argparse.Namespace, events=None, extra=None) -> dict:
    """The soak ``args`` ask for, against the servers ``maas serve start`` started; its report, printed (and
    written to ``--report``). Running canaries get their share of the requests. ``extra(report)``: a summary
    added to the report as ``summary``."""
    torchserve_pid = cli_torchserve_pid()
    if torchserve_pid is None or not TRITON_PID_FILE.exists():
        sys.exit("start both servers first: maas serve start")
    servers = Servers("http://127.0.0.1:8080", read_inference_key(REPO_ROOT), torchserve_pid, "127.0.0.1:8001",
                      int(TRITON_PID_FILE.read_text()), read_triton_key(), canary_file=CANARY_FILE)  # fmt: skip
    report = soak(servers, args.models.split(","), args.requests, args.concurrency, args.kill_every,
                  args.time_limit, retrying=not args.no_retry, events=events)  # fmt: skip
    if extra is not None:
        report["summary"] = extra(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    return report


def failed(report: dict) -> bool:
    return any(report[outcome] for outcome in ("lost", "wrong", "mixed"))


def main(argv: list[str] | None = None) -> int:
    return 1 if failed(run(arguments().parse_args(argv))) else 0


if __name__ == "__main__":
    sys.exit(main())
