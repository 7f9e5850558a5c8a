"""An interleaved A/B of two serving settings: both builds served at once, measured in alternating short points.

    maas bench ab --model sentiment [--format eager] --a call_cost_tokens=1e9 [--b KEY=VALUE ...] [--concurrency 1,16]
                  [--rounds 5] [--duration 4] [--series torchserve_rest,triton_http] [--out reports/ab]
    maas bench ab --model sentiment --format eager --b-env GOMP_SPINCOUNT=300000   (the servers' environment)

On a shared machine two runs minutes apart can differ 2x, so comparing two benchmark runs says little. Here the
model is built twice (``<model>_a`` with the ``--a`` settings, ``<model>_b`` with ``--b``; none means the
artifact's own), ONE TorchServe and ONE tritonserver serve both, and every round measures A and B back to back at
each server and concurrency, the order alternating between rounds: a slow spell hits both. The report gives each
round's figures, the median B/A ratio of throughput and p50, and in how many rounds B was faster. ``--a-env`` /
``--b-env`` set a variable in the environment the servers start with (what torch reads as it loads, such as
OpenMP's): then each variant has a TorchServe and a tritonserver of its own, and the idle pair waits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from handlers.formats import FORMATS
from scripts import REPO_ROOT
from scripts.benchmarking.bench_servers import SERIES_BY_KEY, Servers, add_client_argument, build_for_both, interrupt
from scripts.benchmarking.workloads import model_under_test
from scripts.packaging.build import parse_settings

POINT_KEYS = ("throughput", "p50_ms", "p99_ms", "errors", "client_cores", "server_cores")
SERVER_KEYS = ("avg_batch", "forward_ms_per_row")  # the server's own metrics: the batch it formed, forward time


def parse_env(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    if bad := [item for item, (key, equals, _) in zip(items, pairs, strict=True) if not (key and equals)]:
        raise ValueError(f"environment variable {bad[0]!r}: expected KEY=VALUE, e.g. GOMP_SPINCOUNT=300000")
    return {key: value for key, _, value in pairs}


@contextlib.contextmanager
def environment(variables: dict[str, str]):
    """``os.environ`` with ``variables`` set while the servers start (they inherit it), then as it was."""
    before = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def run(args) -> dict:
    model = model_under_test(args.model)
    variants = {"a": parse_settings(args.a), "b": parse_settings(args.b)}
    envs = {"a": parse_env(args.a_env), "b": parse_env(args.b_env)}
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="maas-ab-") as tmp:
        own = envs["a"] != envs["b"]  # each variant's servers start in its own environment
        roots = {variant: Path(tmp) / (variant if own else "both") for variant in variants}
        for variant, overrides in variants.items():
            build_for_both(model.artifact, roots[variant], overrides, name=f"{model.name}_{variant}", fmt=args.format)
        servers = {root: Servers(root) for root in dict.fromkeys(roots.values())}
        try:
            for variant, root in roots.items():
                if not servers[root].torchserve:
                    with environment(envs[variant]):
                        servers[root].start()
            for variant in variants:
                servers[roots[variant]].wait_torchserve_model(f"{model.name}_{variant}", model.workload)
            for r in range(args.rounds):
                order = ("a", "b") if r % 2 == 0 else ("b", "a")
                for key in args.series.split(","):
                    for c in args.concurrency:
                        for variant in order:
                            point = servers[roots[variant]].measure(SERIES_BY_KEY[key], f"{model.name}_{variant}",
                                                                    model, c, args, r * 64)  # fmt: skip
                            rounds.append({"round": r, "series": key, "concurrency": c, "variant": variant,
                                           **{k: point[k] for k in POINT_KEYS},
                                           **{k: point["server"][k] for k in SERVER_KEYS}})  # fmt: skip
                            print(f"round {r + 1}/{args.rounds} {key:<16} c={c:<3} {variant}: "
                                  f"{point['throughput']:8.1f} req/s p50 {point['p50_ms'] or 0:7.2f} ms "
                                  f"errors {point['errors']}", flush=True)  # fmt: skip
        finally:
            for pair in servers.values():
                pair.stop()
    name = f"{model.name}.{args.format}" if args.format else model.name
    label = {v: {**variants[v], **{f"env {key}": value for key, value in envs[v].items()}} for v in variants}
    return {"model": name, "a": label["a"], "b": label["b"], "points": rounds, "summary": summarize(rounds)}


def summarize(points: list[dict]) -> list[dict]:
    """Per server and concurrency: medians of A and B, the median of the per-round B/A ratios, B's wins."""
    rows = []
    for key, c in dict.fromkeys((p["series"], p["concurrency"]) for p in points):
        pairs = {}
        for p in points:
            if p["series"] == key and p["concurrency"] == c:
                pairs.setdefault(p["round"], {})[p["variant"]] = p
        pairs = [pair for pair in pairs.values() if len(pair) == 2]
        rows.append({
            "series": key, "concurrency": c, "rounds": len(pairs),
            "a_req_s": statistics.median(p["a"]["throughput"] for p in pairs),
            "b_req_s": statistics.median(p["b"]["throughput"] for p in pairs),
            "throughput_b_over_a": statistics.median(p["b"]["throughput"] / p["a"]["throughput"] for p in pairs),
            "p50_b_over_a": statistics.median(p["b"]["p50_ms"] / p["a"]["p50_ms"] for p in pairs),
            "b_faster_rounds": sum(p["b"]["throughput"] > p["a"]["throughput"] for p in pairs),
            **{f"{v}_{k}": statistics.median(p[v][k] or 0 for p in pairs)
               for v in ("a", "b") for k in SERVER_KEYS},
        })  # fmt: skip
    return rows


def report(result: dict, command: str) -> str:
    lines = [f"# A/B: {result['model']}, A = {result['a'] or 'as built'}, B = {result['b'] or 'as built'}", "",
             f"`{command}` - {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Both served at once (by servers of "
             f"their own where their environments differ); points interleaved; load average "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end.", "",
             "| server | c | rounds | A req/s (median) | B req/s (median) | B/A throughput (median) | B/A p50 | "
             "rounds B faster | batch A / B | forward ms/row A / B |", "|---" * 10 + "|"]  # fmt: skip
    for row in result["summary"]:
        lines.append(f"| {SERIES_BY_KEY[row['series']].label} | {row['concurrency']} | {row['rounds']} | "
                     f"{row['a_req_s']:.1f} | {row['b_req_s']:.1f} | {row['throughput_b_over_a']:.2f} | "
                     f"{row['p50_b_over_a']:.2f} | {row['b_faster_rounds']}/{row['rounds']} | "
                     f"{row['a_avg_batch']:.1f} / {row['b_avg_batch']:.1f} | "
                     f"{row['a_forward_ms_per_row']:.2f} / {row['b_forward_ms_per_row']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--format", choices=FORMATS, help="serve this format of the artifact, as maas build --format "
                        "(default: the task's own, as maas build serves it)")  # fmt: skip
    parser.add_argument("--a", action="append", default=[], metavar="[SERVER.]KEY=VALUE", help="A's serving settings")
    parser.add_argument("--b", action="append", default=[], metavar="[SERVER.]KEY=VALUE", help="B's serving settings")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE",
                        help="in the environment A's servers start with (then each has its own)")  # fmt: skip
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE", help="the same for B")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--series", default="torchserve_rest,triton_http")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "ab")
    add_client_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    result = run(args)
    command = " ".join(["maas bench ab", *(argv if argv is not None else sys.argv[1:])])
    text = report(result, command)
    args.out.mkdir(parents=True, exist_ok=True)
    a, b = args.a + [f"env.{e}" for e in args.a_env], args.b + [f"env.{e}" for e in args.b_env]
    label = "-".join(a + ["vs"] + (b or ["as-built"])).replace("=", "_").replace("/", "_")
    (args.out / f"{result['model']}-{label}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{result['model']}-{label}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
