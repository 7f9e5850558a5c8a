"""The canary's share of requests without a version (``scripts/serving/canary.py``), and the overload report."""

from __future__ import annotations

import json

from scripts.benchmarking.overload_report import write_report
from scripts.deploy.soak_deploy import canary_share
from scripts.serving.canary import CanarySplit, canary_name, read_canaries, set_canary


def test_a_canary_takes_its_share_and_a_change_of_file_is_seen_at_the_next_request(tmp_path):
    path = tmp_path / "canary.json"
    split = CanarySplit(path, seed=7)
    assert split.torchserve_path("digits") == "/predictions/digits" and split.triton_model("digits") == "digits"
    set_canary("torchserve", "digits", 2, 20, path)
    set_canary("triton", "digits", 2, 20, path)
    routes = [split.torchserve_path("digits") for _ in range(4000)]
    share = routes.count("/predictions/digits/2.0") / len(routes)
    assert set(routes) == {"/predictions/digits", "/predictions/digits/2.0"}
    assert abs(share - 0.2) < 5 * (0.2 * 0.8 / len(routes)) ** 0.5  # 5 standard deviations of the binomial
    assert split.torchserve_path("sentiment") == "/predictions/sentiment"  # other models: untouched
    assert {split.triton_model("digits") for _ in range(200)} == {"digits", canary_name("digits")}
    set_canary("torchserve", "digits", None, path=path)  # ended: no request goes to it from now on
    assert {split.torchserve_path("digits") for _ in range(200)} == {"/predictions/digits"}
    assert read_canaries(path) == {"torchserve": {}, "triton": {"digits": {"version": 2, "percent": 20}}}
    path.unlink()
    assert split.triton_model("digits") == "digits"  # no file: no canary


def test_the_deploy_soak_reports_the_share_in_standard_deviations():
    phases = {"torchserve digits canary to_canary": 90, "torchserve digits canary to_default": 910,
              "triton digits canary to_canary": 100, "triton digits canary to_default": 900}  # fmt: skip
    shares = canary_share({"phases": phases}, "digits", 10)
    assert shares["triton"] == {"answers": 1000, "to_canary": 100, "share_percent": 10.0, "asked_percent": 10,
                                "deviation_in_sd": 0.0}  # fmt: skip
    assert shares["torchserve"]["deviation_in_sd"] == round(-10 / (1000 * 0.1 * 0.9) ** 0.5, 2)


def test_the_overload_report_has_a_row_per_point_and_a_picture(tmp_path):
    point = {"level": 2, "offered_per_s": 200.0, "sent_per_s": 199.0, "goodput_per_s": 90.0, "goodput_of_peak": 0.9,
             "refused_per_s": 109.0, "failed": 0, "admitted_p50_ms": 3.0, "admitted_p99_ms": 9.5}  # fmt: skip
    report = {"model": "digits", "deadline_ms": 100, "connections": 64, "seconds": 5, "load_average_at_start": 0.1,
              "servers": {"triton": {"capacity_per_s": 100.0, "points": [point]}}}  # fmt: skip
    paths = write_report(report, tmp_path / "overload")
    assert json.loads(paths[0].read_text()) == report
    rows = [line for line in paths[1].read_text().splitlines() if line.startswith("| 2 |")]
    assert rows == ["| 2 | 200 | 199 | 90 | 0.9 | 109 | 0 | 3 | 9.5 | - | - | - | - |"]
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
