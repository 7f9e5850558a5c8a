"""The serving benchmark's reports: benchmark.json, benchmark.md (summary, targets, per point) and benchmark.png."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.benchmarking.in_process import in_process_ms_at
from scripts.benchmarking.server_metrics import describe_served
from scripts.benchmarking.serving_targets import NAIVE_CONCURRENCY, TARGET_TEXT, point_at, variant_of


def number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary_rows(result: dict) -> list[list[str]]:
    """Per model and batched server/protocol: latency at c=1, peak throughput, efficiency, gain over naive."""
    rows = []
    targets = {(t["model"], t["series"], t["target"]): t for t in result.get("targets", [])}
    for model, data in result["models"].items():
        b1 = next((p for p in data["in_process"] if p["batch_size"] == 1), {})
        for key, series in data["series"].items():
            if variant_of(series):
                continue
            peak = max(series["points"], key=lambda p: p["throughput"])
            c1, c16 = point_at(series, 1) or {}, point_at(series, NAIVE_CONCURRENCY) or {}
            naive = point_at(data["series"].get(f"{key}_naive", {"points": []}), NAIVE_CONCURRENCY) or {}
            sat, gain = targets.get((model, key, "saturation")), targets.get((model, key, "vs_naive_c16"))
            rows.append([
                model, series["label"], f"{number(c1.get('p50_ms'), 2)} ({number(b1.get('ms_per_batch_p50'), 2)})",
                f"{number(peak['throughput'])} (c={peak['concurrency']})", number(peak["server"].get("avg_batch")),
                number(sat and sat["measured"], 2), number(c16.get("throughput")), number(naive.get("throughput")),
                number(gain and gain["measured"], 1),
            ])  # fmt: skip
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


SUMMARY_HEADER = [
    "model", "server", "p50 c=1 ms (in-process b1)", "peak req/s", "avg batch at peak", "served / in-process",
    f"req/s c={NAIVE_CONCURRENCY}", f"naive c={NAIVE_CONCURRENCY}", "x naive",
]  # fmt: skip


def summary_table(result: dict) -> str:
    return table(SUMMARY_HEADER, summary_rows(result))


def targets_table(result: dict) -> str:
    rows = []
    for t in result["targets"]:
        what, unit, op = TARGET_TEXT[t["target"]]
        label = result["models"][t["model"]]["series"][t["series"]]["label"]
        verdict = f"**{t['verdict']}**" if t["verdict"] != "n/a" else "n/a (another task's target)"
        rows.append([t["model"], label, what, f"{op} {t['goal']:g}{unit}", f"{t['measured']:.2f}{unit}", verdict,
                     t["detail"]])  # fmt: skip
    return table(["model", "server", "target", "goal", "measured", "verdict", "how"], rows)


def load_average(meta: dict) -> str:
    return " / ".join(f"{x:.2f}" for x in meta.get("load_average_at_start", [])) or "?"


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    overrides = ", ".join(f"{k}={v}" for k, v in meta["serving_overrides"].items()) or "none"
    out = [
        "# Benchmark: in-process limit, TorchServe and Triton, batched and naive",
        "",
        f"`{meta['command']}` - {meta['date']}, {meta.get('wall_s', '?')} s wall. {meta['machine']}; client and "
        f"servers share the machine (load average at start: {load_average(meta)}). Closed loop, one item per "
        f"request (HTTP client: {meta.get('http_client', 'python')}; gRPC: Python; each point gives the cores the "
        "client and the server used), "
        f"{meta['warmup_s']} s warm-up + {meta['duration_s']} s per point (TorchServe warmed with "
        f"{meta['torchserve_warmup_requests']} requests first). Serving overrides: {overrides}. Naive = the same "
        "model built with `max_batch_size` 1 (one request per forward pass).",
        "",
        "## Summary",
        "",
        summary_table(result),
        "",
        "## Targets",
        "",
        targets_table(result),
        "",
    ]
    errors = sum(p["errors"] for d in result["models"].values() for s in d["series"].values() for p in s["points"])
    out += [f"Errors (non-200 answers, all points, warm-ups included): **{errors}**.", ""]
    out += ["## Where time goes (the servers' own metrics)", "", breakdown_table(result), ""]
    for model, data in result["models"].items():
        if "served" in data:
            settings = "Served with " + describe_served(data["served"])
        else:
            settings = "Serving settings (batched builds) - " + "; ".join(
                f"{server}: " + ", ".join(f"{k}={v}" for k, v in serving.items())
                for server, serving in data["serving"].items()
            )
        served_format = f"Model format: {data['format']} (in process and served). " if "format" in data else ""
        out += [f"## {model}", "", f"{served_format}Requests: {data['requests']}. {settings}.", ""]
        out += ["In-process (`handle_tensors`, b one-item requests per call; the limit is the better of a pass "
                "before the servers start and one after they stop):", ""]  # fmt: skip
        out.append(table(["batch size", "items/s", "ms per batch (p50)", "items/s per pass"],
                         [[p["batch_size"], number(p["items_per_s"]), number(p["ms_per_batch_p50"], 2),
                           " / ".join(number(x) for x in p.get("passes_items_per_s", []))]
                          for p in data["in_process"]]))  # fmt: skip
        out += ["", "Served:", ""]
        rows = [
            [series["label"], p["concurrency"], number(p["throughput"]), number(p["p50_ms"], 2), number(p["p90_ms"], 2),
             number(p["p99_ms"], 2), p["errors"], number(p["server"].get("avg_batch")), p.get("client", "python"),
             number(p.get("client_cores"), 2), number(p.get("server_cores"), 2)]
            for series in data["series"].values() for p in series["points"]
        ]  # fmt: skip
        header = ["server", "concurrency", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "avg batch", "client",
                  "client cores", "server cores"]  # fmt: skip
        out += [table(header, rows), ""]
    out += ["![throughput against concurrency](benchmark.png)", ""]
    return "\n".join(out)


BREAKDOWN_AT = (1, NAIVE_CONCURRENCY)


def breakdown_table(result: dict) -> str:
    """The servers' own account, per series at c=1 and c=16 (each point's counter deltas, warm-up included)."""
    rows = []
    for model, data in result["models"].items():
        for series in data["series"].values():
            for point in [p for p in series["points"] if p["concurrency"] in BREAKDOWN_AT]:
                b = point["server"]
                batch, handler = b.get("avg_batch"), b.get("handler_ms_per_batch")
                slowdown = handler / in_process_ms_at(data["in_process"], batch) if batch and handler else None
                rows.append([
                    model, series["label"], point["concurrency"], number(batch),
                    number(b.get("queue_ms_per_request"), 2),
                    number(b.get("server_ms_per_request"), 2), number(handler, 2), number(slowdown, 2),
                    number(b.get("preprocess_ms_per_row"), 3), number(b.get("forward_ms_per_row"), 3),
                    number(b.get("postprocess_ms_per_row"), 3),
                ])  # fmt: skip
    header = ["model", "server", "concurrency", "rows per execution", "queue ms/request", "server ms/request",
              "handler ms/batch", "handler / in-process", "preprocess ms/row", "forward ms/row",
              "postprocess ms/row"]  # fmt: skip
    note = (
        "\n\nqueue: TorchServe `ts_queue_latency_microseconds`, Triton `nv_inference_queue_duration_us`; server: "
        "TorchServe `ts_inference_latency_microseconds` (frontend, queue included), Triton "
        "`nv_inference_compute_infer_duration_us` (each request of a batch is charged the whole execution); handler "
        "and stages: the pipeline's own counters (`MaasPreprocessMs`... / `maas_stage_duration_ms_total`) over "
        "`MaasBatches` / `nv_inference_exec_count` and `MaasRows` / `maas_rows_total`; handler / in-process: the "
        "handler's time per batch over the in-process pipeline's at the same batch size (above 1: the model ran "
        "slower inside the server, i.e. it shared the cores with the frontend, the client or anything else). Every "
        "point's figures, and each whole series', are in benchmark.json."
    )
    return table(header, rows) + note


def plot(result: dict, path: Path) -> None:
    """One subplot per model: throughput against concurrency, one line per server, in-process best as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), dpi=80, squeeze=False)
    for ax, model in zip(axes[0], names, strict=True):
        data = result["models"][model]
        for key, series in data["series"].items():
            xs = [p["concurrency"] for p in series["points"]]
            ys = [p["throughput"] for p in series["points"]]
            variant = variant_of(series)
            style, color = STYLES[variant], _COLORS[key.removesuffix(f"_{variant}")]
            ax.plot(xs, ys, style, marker="o", markersize=3, label=series["label"], color=color)
        best = max(data["in_process"], key=lambda p: p["items_per_s"])
        ax.axhline(best["items_per_s"], color="black", linestyle=":",
                   label=f"in-process best (b={best['batch_size']})")  # fmt: skip
        ax.set_title(model)
        concurrency_axes(ax, result["meta"]["concurrency"], "concurrency (requests in flight)",
                         "requests/s (one item each)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def concurrency_axes(ax, levels: list[int], xlabel: str, ylabel: str) -> None:
    """A log2 concurrency axis ticked at the levels measured, the y axis from 0, a grid and the legend."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


STYLES = {"": "-", "naive": "--", "ceiling": ":"}
_COLORS = {"torchserve_rest": "tab:orange", "triton_http": "tab:blue", "triton_grpc": "tab:green"}


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "benchmark.md").write_text(render_markdown(result))
    plot(result, out / "benchmark.png")
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")
