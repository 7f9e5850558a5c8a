"""``maas bench overload``'s arithmetic and report (``scripts/benchmarking/overload.py``, ``overload_report.py``)."""

from __future__ import annotations

import json

import pytest

from scripts.benchmarking.overload import in_time, machine_bound
from scripts.benchmarking.overload_report import write_report


def test_the_bound_is_the_cores_the_client_left_over_one_answers_cpu_and_never_above_the_offered_rate():
    capacity = {"throughput": 1000.0, "server_cores": 1.5, "client_cores": 0.1}  # 1.5 ms of server CPU an answer
    busy = {"offered_per_s": 4000.0, "client_cores": 0.5, "server_cores": 1.45, "goodput_per_s": 700.0,
            "refused_per_s": 2000.0}  # fmt: skip
    found = machine_bound(busy, capacity, cores=2)
    assert found["bound_of_peak"] == 1.0  # (2 - 0.5) / 1.5 ms = 1,000/s
    assert found["server_us_per_refusal"] == pytest.approx((1.45 - 700 * 1.5e-3) / 2000 * 1e6, abs=1)  # 200 µs
    greedy_client = {**busy, "client_cores": 1.1}
    assert machine_bound(greedy_client, capacity, cores=2)["bound_of_peak"] == 0.6
    light = {**busy, "offered_per_s": 500.0, "refused_per_s": 0.0}
    assert machine_bound(light, capacity, cores=2) == {"bound_of_peak": 0.5, "server_us_per_refusal": None}
    few = {**busy, "refused_per_s": 100.0}  # 1 refusal per 7 answers: the difference is noise, no figure
    assert machine_bound(few, capacity, cores=2)["server_us_per_refusal"] is None


def test_answers_in_time_are_the_200s_less_the_share_the_probe_saw_come_late():
    point = {"goodput_per_s": 1000.0, "probe_admitted": 80, "probe_answered_after_deadline": 20}
    assert in_time(point) == 750.0
    assert in_time({**point, "probe_admitted": 0, "probe_answered_after_deadline": 0}) == 1000.0


def test_the_overload_report_has_a_row_per_point_and_a_picture(tmp_path):
    point = {"level": 2, "offered_per_s": 200.0, "sent_per_s": 199.0, "goodput_per_s": 90.0, "goodput_of_peak": 0.9,
             "refused_per_s": 109.0, "failed": 0, "admitted_p50_ms": 3.0, "admitted_p99_ms": 9.5}  # fmt: skip
    report = {"model": "digits", "deadline_ms": 100, "connections": 64, "seconds": 5, "load_average_at_start": 0.1,
              "servers": {"triton": {"capacity_per_s": 100.0, "points": [point]}}}  # fmt: skip
    paths = write_report(report, tmp_path / "overload")
    assert json.loads(paths[0].read_text()) == report
    rows = [line for line in paths[1].read_text().splitlines() if line.startswith("| 2 |")]
    assert rows == ["| 2 | 200 | 199 | 90 | 0.9 | - | - | 109 | - | 0 | 3 | 9.5 | - | - | - | - |"]
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
