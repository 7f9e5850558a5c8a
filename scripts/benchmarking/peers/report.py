"""``maas bench peers``' report: JSON (every figure), Markdown (a table per model) and a PNG (req/s at the middle
concurrency and p50 at the lowest, per stack and model)."""

from __future__ import annotations

import json
from pathlib import Path


def point_at(points: list[dict], concurrency: int) -> dict:
    return next((p for p in points if p["concurrency"] == concurrency), {})


def concurrencies(report: dict) -> list[int]:
    return sorted({p["concurrency"] for stack in report["results"].values() for r in stack.values()
                   for p in r["points"]})  # fmt: skip


def models(report: dict) -> list[str]:
    return list(dict.fromkeys(m for stack in report["results"].values() for m in stack))


def markdown(report: dict) -> str:
    levels = concurrencies(report)
    low, high = levels[0], levels[-1]
    lines = [
        "# Speed against the peers",
        "",
        f"`{report['command']}` on {report['date']}: {report['cpus']} cores, load average "
        f"{report['load_average_at_start']:.2f} at the start. wrk closed loop, {report['duration_s']:g} s a point "
        f"after {report['warmup_s']:g} s of load; one stack at a time. 'agree': of the first {report['check_rows']} "
        "held-out rows, how many labels match maas on TorchServe's. 'wrk cores': the client's CPU at the highest "
        "concurrency (of 2 cores: far below 1 means wrk was not the limit).",
    ]
    header = ["stack", "setup", *(f"req/s c={c}" for c in levels), f"p50 ms c={low}", f"p99 ms c={high}",
              "errors", "wrk cores", "agree"]  # fmt: skip
    for model in models(report):
        lines += ["", f"## {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, stack in report["results"].items():
            if model not in stack:
                continue
            points, check = stack[model]["points"], stack[model]["check"]
            agree = f"{check['agree']}/{check['of']}" if "agree" in check else "reference"
            cells = [report["labels"][key], report["setups"][key],
                     *(f"{point_at(points, c).get('throughput', 0):,.0f}" for c in levels),
                     f"{point_at(points, low).get('p50_ms', 0):.2f}", f"{point_at(points, high).get('p99_ms', 0):.1f}",
                     str(sum(p["errors"] for p in points)), f"{point_at(points, high).get('client_cores', 0):.2f}",
                     agree]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels, names = concurrencies(report), models(report)
    middle, low = levels[len(levels) // 2], levels[0]
    keys = list(report["results"])
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(len(keys), 1)
    for index, key in enumerate(keys):
        stack = report["results"][key]
        x = [m + (index - (len(keys) - 1) / 2) * width for m in range(len(names))]
        rate = [point_at(stack[n]["points"], middle).get("throughput", 0) if n in stack else 0 for n in names]
        p50 = [point_at(stack[n]["points"], low).get("p50_ms", 0) if n in stack else 0 for n in names]
        axes[0].bar(x, rate, width, label=report["labels"][key])
        axes[1].bar(x, p50, width, label=report["labels"][key])
    for axis, title in ((axes[0], f"req/s at c={middle} (higher is better)"),
                        (axes[1], f"p50 ms at c={low} (lower is better)")):  # fmt: skip
        axis.set_xticks(range(len(names)), names)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"maas against the peers ({report['date']}, load average {report['load_average_at_start']:.2f})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "peers.json", out / "peers.md", out / "peers.png"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
