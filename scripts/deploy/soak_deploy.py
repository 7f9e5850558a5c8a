"""``maas soak --deploy ARTIFACT``: the soak's steady load on both servers while a new version of a model is rolled
out and back on each: deployed as a canary, promoted, rolled back, and the extra version retired.

    maas soak --deploy artifacts/digits [--name digits] [--canary 10] [--requests 20000] [--concurrency 16]

The steps come after 1, 3, 4 and 5 sixths of the requests (the canary runs for two sixths); no worker or stub is
killed. ``canary_share`` compares the canary's share of the model's answers with the one asked for.
The report (``scripts/serving/soak.py``) adds each step with its time, the answers of each phase split by where they
were routed (``to_canary``: the canary's share), "mixed" (an answer from another version than the one the request
was routed to) and ``default_switches_max`` (per client thread and model, how often the version answering requests
without one changed: at most 2 here, at the promotion and at the rollback). Exit 1 when a request was lost, wrong
or mixed, or a client saw the default flap. Without ``--deploy``, ``maas soak`` is the fault soak.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from handlers.artifact import read_manifest
from scripts.deploy.rollout import (
    arguments as rollout_arguments,
)
from scripts.deploy.rollout import (
    deploy_version,
    end_canary_or_roll_back,
    percentage,
    promote_canary,
    servers,
)
from scripts.packaging.build import served_artifact
from scripts.serving import soak
from scripts.serving.canary import CANARY_FILE

STEPS = ("canary", "promoted", "rolled back", "retired")
SCHEDULE = (1, 3, 4, 5)  # in sixths of the requests: the canary runs for two of them
DEFAULT_MOVES = 2  # the promotion and the rollback


class DeploySteps:
    """The soak's events: one step per call, each on every server, in order; ``phase`` names the last one done
    ("moving" while one runs)."""

    def __init__(self, rollouts: dict, artifact: Path, model: str, percent: float, canary_file: Path = CANARY_FILE):
        self.rollouts, self.artifact, self.model = rollouts, artifact, model
        self.percent, self.canary_file = percent, canary_file
        self.phase, self.done, self.lock = "before", 0, threading.Lock()

    def __call__(self, number: int, at_request: int) -> dict | None:
        return self.next_step(at_request) if number in SCHEDULE else None

    def next_step(self, at_request: int) -> dict | None:
        """Run the next step on every server; its record (None: all are done)."""
        with self.lock:
            if self.done == len(STEPS):
                return None
            step = STEPS[self.done]
            self.phase, start = "moving", time.monotonic()
            results = {server: self.run(step, server, versions) for server, versions in self.rollouts.items()}
            self.phase, self.done = step, self.done + 1
            return {"step": step, "at_request": at_request, "seconds": round(time.monotonic() - start, 2),
                    "servers": results}  # fmt: skip

    def run(self, step: str, server: str, versions) -> str:
        if step == "canary":
            version = deploy_version(server, versions, self.artifact, self.model, canary=self.percent,
                                     canary_file=self.canary_file)  # fmt: skip
            return f"version {version} at {self.percent:g}%"
        if step == "promoted":
            return f"version {promote_canary(server, versions, self.model, self.canary_file)} the default"
        if step == "rolled back":
            return end_canary_or_roll_back(server, versions, self.model, self.canary_file)
        return f"retired {versions.retire(self.model)}"

    def finish(self) -> list[dict]:
        """The steps a soak that stopped early did not reach, so the servers end as they began."""
        return list(iter(lambda: self.next_step(-1), None))


def canary_share(report: dict, model: str, percent: float) -> dict:
    """Per server, the share of ``model``'s answers (sent and answered while the canary ran) that the canary gave,
    against the share asked for, in binomial standard deviations."""
    shares = {}
    for server in ("torchserve", "triton"):
        hits = report["phases"].get(f"{server} {model} canary to_canary", 0)
        answers = hits + report["phases"].get(f"{server} {model} canary to_default", 0)
        expected, sd = answers * percent / 100, (answers * percent / 100 * (1 - percent / 100)) ** 0.5
        shares[server] = {
            "answers": answers, "to_canary": hits, "share_percent": round(100 * hits / max(answers, 1), 2),
            "asked_percent": percent, "deviation_in_sd": round((hits - expected) / sd, 2) if sd else None,
        }  # fmt: skip
    return shares


def main(argv: list[str] | None = None) -> int:
    parser = soak.arguments()
    parser.description += "\n" + __doc__
    parser.add_argument("--deploy", type=Path, metavar="ARTIFACT", help="roll this artifact out and back under load")
    parser.add_argument("--name", help="--deploy: the served model it is a version of (default: the artifact's)")
    parser.add_argument("--canary", type=percentage, default=10, metavar="PERCENT", help="--deploy: the canary's share")
    args = parser.parse_args(argv)
    if args.deploy is None:
        return 1 if soak.failed(soak.run(args)) else 0
    artifact = served_artifact(args.deploy)
    model = args.name or read_manifest(artifact).name
    if model not in args.models.split(","):
        parser.error(f"--deploy: {model} is not among the soaked --models {args.models}")
    rollouts = servers(rollout_arguments().parse_args(["versions"]))  # the servers maas serve start started
    steps = DeploySteps(rollouts, artifact, model, args.canary)
    args.kill_every = max(1, args.requests // 6)
    report = soak.run(args, events=steps, extra=lambda report: canary_share(report, model, args.canary))
    late = steps.finish()
    if late:
        print(f"the soak ended before {', '.join(r['step'] for r in late)}: done after it", file=sys.stderr)
    flapped = report["default_switches_max"] > DEFAULT_MOVES
    return 1 if soak.failed(report) or flapped else 0


if __name__ == "__main__":
    sys.exit(main())
