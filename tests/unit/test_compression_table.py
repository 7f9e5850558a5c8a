"""The compression table's verdicts on made-up rows: the Pareto front, the targets, the accuracy interval."""

from __future__ import annotations

import pytest

from scripts.benchmarking.compression_table import evaluate, mark_pareto
from scripts.packaging.acceptance import accuracy_interval


def row(model, fmt, req_s, accuracy, *lineage):
    return {"model": model, "format": fmt, "accuracy": accuracy, "served": {"triton_grpc": {"c16": {"req_s": req_s}}},
            "compression": {"method": lineage[-1], "lineage": list(lineage)} if lineage else None}  # fmt: skip


def test_the_pareto_front_keeps_only_rows_nothing_beats():
    rows = [row("t", "eager", 50, 0.84), row("t", "onnx_int8", 120, 0.84), row("s", "onnx_int8", 300, 0.83),
            row("s", "eager", 100, 0.83), row("p", "eager", 110, 0.80)]  # fmt: skip
    mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [False, True, True, False, False]


def test_targets_take_the_fastest_student_within_the_allowed_loss():
    teacher = [row("t", "eager", 50, 0.84), row("t", "onnx_int8", 120, 0.84)]
    rows = [
        *teacher,
        row("s", "onnx_int8", 260, 0.83, "distillation"),
        row("s2", "onnx_int8", 400, 0.70, "distillation"),
    ]
    first, second = evaluate(rows, "t")
    assert (
        first["variant"] == "s onnx_int8"
        and first["speedup"] == pytest.approx(260 / 120)
        and first["verdict"] == "PASS"
    )
    assert second["speedup"] == pytest.approx(260 / 50) and second["verdict"] == "PASS"
    assert evaluate([row("t", "eager", 50, 0.84)], "t")[0]["verdict"] == "not measured"
    # "distilled + int8" takes a pruned distilled student (its lineage), not a student that was only pruned
    pruned = [row("p", "onnx_int8", 280, 0.83, "pruning"), row("dp", "onnx_int8_static", 270, 0.83, "distillation",
                                                                "pruning")]  # fmt: skip
    assert evaluate([*rows, *pruned], "t")[1]["variant"] == "dp onnx_int8_static"


def test_the_accuracy_interval_covers_the_rate_and_narrows_with_rows():
    low, high = accuracy_interval(838, 1000)
    assert low < 0.838 < high and high - low < accuracy_interval(84, 100)[1] - accuracy_interval(84, 100)[0]
    assert accuracy_interval(0, 10)[0] == 0.0 and accuracy_interval(10, 10)[1] == 1.0
