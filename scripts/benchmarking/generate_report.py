"""``maas bench generate``'s targets and reports: the issue's targets read from the measured modes, and
generate.json, generate.md (tables, targets) and generate.png."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.benchmarking.generate_load import IN_PROCESS, SERVED_BASELINES, SERVERS, TARGET_C
from scripts.benchmarking.serving_report import concurrency_axes, number, table

BASELINE_GOALS = {"naive": 3.0, "static": 1.5}  # continuous batching's tokens/s over each, at least


BUSY_LOAD = 1.0  # a 1-min load average above this at the start: the figures share the machine
CLIENT_LIMIT = 50.0  # % of one core: a client busier than this may be what limits a level


# ---- targets ----------------------------------------------------------------------------------------------
def at(modes: dict, mode: str, c: int) -> dict | None:
    return next((p for p in modes.get(mode, []) if p["concurrency"] == c), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def target(mode: str, c: int, name: str, op: str, goal: float, mine: float | None, theirs: float | None,
           unit: str) -> dict:  # fmt: skip
    measured = ratio(mine, theirs)
    met = None if measured is None else measured >= goal if op == ">=" else measured <= goal
    return {"mode": mode, "concurrency": c, "target": name, "goal": f"{op} {goal:g}x", "measured": measured,
            "met": met, "detail": f"{number(mine, 2)} vs {number(theirs, 2)} {unit}"}  # fmt: skip


def is_served(mode: str) -> bool:
    return mode.split("-")[0] in SERVERS


def check_targets(modes: dict) -> list[dict]:
    """The issue's targets per server, at c=16 (or the highest level measured); ``met`` None: not measurable. The
    naive and static baselines are read on the same server (the issue's targets), then in process (stricter: no
    server's costs, every core)."""
    rows = []
    for server in [m for m in SERVERS if modes.get(m)]:
        c = TARGET_C if at(modes, server, TARGET_C) else max(p["concurrency"] for p in modes[server])
        here = at(modes, server, c)
        refs = [(f"{server}-{b}", goal, f"{b} on {server}") for b, goal in BASELINE_GOALS.items()]
        refs += [(b, goal, f"{b} in process") for b, goal in BASELINE_GOALS.items()]
        refs.append(("in-process", 0.8, "in-process"))
        for ref, goal, name in refs:
            theirs = (at(modes, ref, c) or {}).get("tokens_per_s")
            rows.append(target(server, c, f"tokens/s at c={c} vs {name}", ">=", goal, here["tokens_per_s"], theirs,
                               "tok/s"))  # fmt: skip
        first = (at(modes, server, 1) or {}).get("ttft_p50_ms") if c != 1 else None
        rows.append(target(server, c, f"TTFT p50 at c={c} vs c=1", "<=", 3.0, here["ttft_p50_ms"], first, "ms"))
        bound = (at(modes, "in-process", c) or {}).get("itl_p50_ms")
        rows.append(target(server, c, f"ITL p50 at c={c} vs in-process", "<=", 2.0, here["itl_p50_ms"], bound, "ms"))
    return rows


# ---- targets and reports ---------------------------------------------------------------------------------
def verdict(met: bool | None) -> str:
    return "n/a" if met is None else "**met**" if met else "**not met**"


def levels_table(modes: dict) -> str:
    header = ["mode", "c", "requests", "errors", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms",
              "ITL p99 ms", "TPOT p50 ms", "tokens = planned", "client CPU % of a core", "server cores"]  # fmt: skip
    rows = [[mode, p["concurrency"], p["requests"], p["errors"], number(p["tokens_per_s"]),
             number(p["requests_per_s"], 2), number(p["ttft_p50_ms"]), number(p["ttft_p99_ms"]),
             number(p["itl_p50_ms"], 2), number(p["itl_p99_ms"], 2), number(p["tpot_p50_ms"], 2),
             "yes" if p["tokens_match"] else "**no**",
             number(p["process_cpu_pct"], 0) if is_served(mode) else "-", number(p.get("server_cores"), 2)]
            for mode, points in modes.items() for p in points]  # fmt: skip
    return table(header, rows)


def targets_table(targets: list[dict]) -> str:
    if not targets:
        return "No server measured (`--servers none`): the targets compare served modes, none to check."
    rows = [[t["mode"], t["target"], t["goal"], number(t["measured"], 2), t["detail"], verdict(t["met"])]
            for t in targets]  # fmt: skip
    return table(["server", "target", "goal", "measured", "numbers", "verdict"], rows)


def render_markdown(result: dict) -> str:
    meta, modes = result["meta"], result["modes"]
    loads = f"{meta['load_average_start']} at the start, {meta['load_average_end']} at the end"
    busy = [f"**WARNING: the 1-min load average was {meta['load_average_start'][0]} at the start (above "
            f"{BUSY_LOAD:g}): the machine was busy; run again.**", ""] if meta["busy"] else []  # fmt: skip
    client = [p["process_cpu_pct"] for m, points in modes.items() if is_served(m) for p in points]
    fill_ms = SERVED_BASELINES["static"]["max_batch_delay_ms"]
    client_line = (f"The load generator used at most {max(client):.0f}% of one core over any server level "
                   f"({'under' if max(client) < CLIENT_LIMIT else '**above**'} {CLIENT_LIMIT:.0f}%: "
                   f"{'it kept up' if max(client) < CLIENT_LIMIT else 'it may have limited the server'}). "
                   if client else "")  # fmt: skip
    client_line += ("While a server is measured, the load generator runs on the cores its engine leaves to the "
                    "server's other threads, where it binds them (`serving.bind_cores`), as a client elsewhere "
                    "would. ")  # fmt: skip
    return "\n".join([
        "# Generation benchmark: continuous batching served vs in process, naive and static batching", "",
        f"`{meta['command']}` - {meta['date']}, {meta['wall_s']} s wall. {meta['machine']}, {meta['cores']} cores, "
        f"shared by client and server; load average {loads}. Model: {meta['model'].get('architecture')}, "
        f"context {meta['model'].get('max_context')}, up to {meta['max_running']} sequences decoding at once.", "",
        *busy, f"Workload: {result['workload']['description']}.", "",
        "Closed loop: c clients, each sending its next request when the previous one ends. Output tok/s: planned "
        "tokens of the completed requests over the level's wall time. TTFT: send to the first chunk with text; ITL: "
        "every gap between chunks with text, pooled (chunks that come in bursts make small gaps; TPOT, a request's "
        "time after its first chunk per token after the first, shows the pace all the same). static (in process) is "
        "not streamed: its TTFT is the whole batch. SERVER-naive and SERVER-static, the targets' baselines, are the "
        "same server built with `max_batch_size` 1 (one sequence at a time) and with `static_batching` 1 (newcomers "
        f"join only an empty batch, waiting {fill_ms:g} ms at most for it to fill; rows that end early are computed "
        "as padding until the longest ends; each row still streams), measured at the target level only. "
        f"{client_line}in-process runs the served engine with no server in between, on every core (as do naive "
        "and static): it bounds what a server can do. in-process-served is the same engine at the servers' default "
        f"of {meta.get('served_threads', '?')} intra-op thread(s) (every core but one, which the server's front end "
        "needs), its thread not bound: not a target, it shows what that setting costs without a server.",
        *[f"**{kind} failed**: {why}" for kind, why in result.get("server_failures", {}).items()],
        "", "## Targets", "", targets_table(result["targets"]), "", "## Every mode and level", "",
        levels_table(modes), "", "![tokens/s and TTFT against concurrency](generate.png)", "",
    ])  # fmt: skip


def plot(modes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    for ax, key, label in ((axes[0], "tokens_per_s", "output tokens/s"), (axes[1], "ttft_p50_ms", "TTFT p50 (ms)")):
        for mode, points in modes.items():
            ax.plot([p["concurrency"] for p in points], [p[key] for p in points], marker="o", markersize=3,
                    linestyle=":" if mode in IN_PROCESS else "-", label=mode)  # fmt: skip
        levels = sorted({p["concurrency"] for points in modes.values() for p in points})
        concurrency_axes(ax, levels, "concurrency (clients)", label)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "generate.md").write_text(render_markdown(result))
    plot(result["modes"], out / "generate.png")
    print(f"wrote {out / 'generate.json'}, {out / 'generate.md'}, {out / 'generate.png'}")
