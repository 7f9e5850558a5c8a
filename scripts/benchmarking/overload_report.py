"""``maas bench overload``'s report: JSON (every figure), Markdown (the table) and a PNG (goodput against offered)."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [
    ("level", "load (x capacity)"), ("offered_per_s", "offered/s"), ("sent_per_s", "sent/s"),
    ("goodput_per_s", "goodput/s"), ("goodput_of_peak", "goodput / capacity"),
    ("in_time_of_peak", "in time / capacity"), ("bound_of_peak", "bound / capacity"), ("refused_per_s", "refused/s"),
    ("server_us_per_refusal", "µs / refusal"),
    ("failed", "failed"), ("admitted_p50_ms", "admitted p50 ms"), ("admitted_p99_ms", "admitted p99 ms"),
    ("probe_answered_after_deadline", "probe: late"), ("triton_rejected_uncomputed", "refused uncomputed"),
    ("client_cores", "wrk cores"), ("server_cores", "server cores"),
]  # fmt: skip


def markdown(report: dict) -> str:
    lines = [
        f"# Overload: {report['model']}, deadline {report['deadline_ms']:g} ms",
        "",
        f"Open loop (Poisson arrivals over {report['connections']} wrk connections), {report['seconds']:g} s a point; "
        f"load average {report['load_average_at_start']:.2f} at the start. Admitted p50/p99 and late answers come "
        "from a probe of ~25 requests/s; 'refused uncomputed' is Triton's REJECTED count. Goodput counts every 200; "
        "'in time' takes out the share of them the probe saw answered after the deadline. 'bound': the most this "
        "machine could answer at that point if refusals cost nothing (the cores wrk left, over one answer's server "
        "CPU at capacity); 'µs / refusal': the server CPU spent beyond its answers, per refusal.",
    ]
    for server, result in report["servers"].items():
        lines += ["", f"## {server}: capacity {result['capacity_per_s']:.0f} req/s (closed loop, 64 connections)", ""]
        lines.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for point in result["points"]:
            lines.append("| " + " | ".join(_cell(point.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for server, result in report["servers"].items():
        points = result["points"]
        axis.plot([p["offered_per_s"] for p in points], [p["goodput_per_s"] for p in points], marker="o",
                  label=f"{server} (capacity {result['capacity_per_s']:.0f}/s)")  # fmt: skip
    axis.set_xlabel("offered requests/s")
    axis.set_ylabel("answered 200/s (goodput)")
    axis.set_title(f"{report['model']}: goodput under overload")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: dict, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
