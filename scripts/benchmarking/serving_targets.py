"""The serving benchmark's targets, each judged from one run's measurements."""

from __future__ import annotations

from scripts.benchmarking.in_process import in_process_at
from scripts.benchmarking.server_metrics import ratio

# The issues' targets. Saturation: served / in-process throughput at the batch size the server formed, for the
# text model; tiny models (every other task): served / the same server's ceiling (a constant-answer model).
SATURATION_GOAL = {"triton": 0.9, "torchserve": 0.9}
CEILING_GOAL = 0.8
LATENCY_GOAL_MS = {"triton": 0.5, "torchserve": 2.0}
NAIVE_GOAL, NAIVE_CONCURRENCY = 3.0, 16
SATURATION_TASKS = {"text_classification"}


def variant_of(series: dict) -> str:
    """``""`` for the model as built, ``naive`` or ``ceiling`` (reports from before ceilings say ``naive: true``)."""
    return series.get("variant", "naive" if series["naive"] else "")


def point_at(series: dict, concurrency: int) -> dict | None:
    return next((p for p in series["points"] if p["concurrency"] == concurrency), None)


def evaluate_targets(result: dict) -> list[dict]:
    """Each target of the issue against its measured value, per model and server/protocol."""
    targets = []
    for model, data in result["models"].items():
        in_process, all_series = data["in_process"], data["series"]
        b1 = next((p for p in in_process if p["batch_size"] == 1), None)
        for key, series in all_series.items():
            if variant_of(series):
                continue
            server = series["server"]
            peak = max(series["points"], key=lambda p: p["throughput"])
            batch = peak["server"].get("avg_batch") or peak["concurrency"]
            reference = in_process_at(in_process, batch)
            applies = data["task"] in SATURATION_TASKS
            targets.append({
                "model": model, "series": key, "target": "saturation",
                "measured": peak["throughput"] / reference, "goal": SATURATION_GOAL[server], "higher_is_better": True,
                "applies": applies,
                "detail": f"{peak['throughput']:.1f} req/s at c={peak['concurrency']}, avg batch {batch:.1f}; "
                f"in-process {reference:.1f} items/s at that batch",
            })  # fmt: skip
            c1, ceiling = point_at(series, 1), all_series.get(f"{key}_ceiling")
            if c1 and b1 and c1["p50_ms"] is not None:
                # The ceiling's own c=1 p50 is the least any model can add on this server, protocol and client.
                floor = ceiling and point_at(ceiling, 1)
                targets.append({
                    "model": model, "series": key, "target": "latency_c1",
                    "measured": c1["p50_ms"] - b1["ms_per_batch_p50"], "goal": LATENCY_GOAL_MS[server],
                    "higher_is_better": False, "applies": True,
                    "detail": f"p50 {c1['p50_ms']:.2f} ms - in-process b1 {b1['ms_per_batch_p50']:.2f} ms"
                    + (f"; the ceiling's own c=1 p50: {floor['p50_ms']:.2f} ms" if floor else ""),
                })  # fmt: skip
            if ceiling:
                top = max(ceiling["points"], key=lambda p: p["throughput"])
                targets.append({
                    "model": model, "series": key, "target": "vs_ceiling",
                    "measured": ratio(peak["throughput"], top["throughput"]) or 0.0, "goal": CEILING_GOAL,
                    "higher_is_better": True, "applies": not applies,
                    "detail": f"peak {peak['throughput']:.1f} req/s (c={peak['concurrency']}) vs the constant-answer "
                    f"model's {top['throughput']:.1f} (c={top['concurrency']})",
                })  # fmt: skip
            naive = all_series.get(f"{key}_naive")
            batched_c, naive_c = point_at(series, NAIVE_CONCURRENCY), naive and point_at(naive, NAIVE_CONCURRENCY)
            if batched_c and naive_c:
                targets.append({
                    "model": model, "series": key, "target": "vs_naive_c16",
                    "measured": ratio(batched_c["throughput"], naive_c["throughput"]) or 0.0, "goal": NAIVE_GOAL,
                    "higher_is_better": True, "applies": True,
                    "detail": f"{batched_c['throughput']:.1f} vs naive {naive_c['throughput']:.1f} req/s at "
                    f"c={NAIVE_CONCURRENCY}",
                })  # fmt: skip
    for target in targets:
        measured, goal = target["measured"], target["goal"]
        met = measured >= goal if target["higher_is_better"] else measured <= goal
        target["verdict"] = ("PASS" if met else "FAIL") if target["applies"] else "n/a"
    return targets


TARGET_TEXT = {
    "saturation": ("served / in-process throughput at the same batch size, at saturation", "x", ">="),
    "latency_c1": ("p50 at c=1 minus in-process batch-1 latency", " ms", "<="),
    "vs_naive_c16": (f"throughput at c={NAIVE_CONCURRENCY} / naive baseline", "x", ">="),
    "vs_ceiling": ("peak throughput / the same server's ceiling (constant-answer model)", "x", ">="),
}
