"""The benchmark's pure parts: summary maths, metrics parsing, target evaluation, reports. No servers, no timing."""

from __future__ import annotations

import asyncio
import zipfile

import pytest

from scripts.benchmarking.bench_servers import per_server
from scripts.benchmarking.benchmark import parse_args
from scripts.benchmarking.in_process import best_of, in_process_at, in_process_ms_at
from scripts.benchmarking.loadgen import closed_loop, summarize
from scripts.benchmarking.server_metrics import (
    TORCHSERVE_COUNTERS,
    TRITON_COUNTERS,
    breakdown,
    describe_served,
    model_counters,
    parse_prometheus,
    served_settings,
)
from scripts.benchmarking.serving_report import plot, render_markdown, summary_rows
from scripts.benchmarking.serving_targets import evaluate_targets


def test_summarize_percentiles_and_throughput():
    summary = summarize([float(x) for x in range(1, 101)], window_s=4.0, errors=2)
    assert summary["completed"] == 100 and summary["errors"] == 2
    assert summary["throughput"] == pytest.approx(25.0)
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["mean_ms"] == pytest.approx(50.5)


def test_summarize_without_answers():
    summary = summarize([], window_s=2.0, errors=5)
    assert summary["throughput"] == 0.0 and summary["p50_ms"] is None and summary["errors"] == 5


def test_closed_loop_counts_answers_and_failures():
    class Flaky:
        def __init__(self):
            self.sent = []

        async def send(self, i):
            self.sent.append(i)
            await asyncio.sleep(0.001)
            if i % 3 == 0:
                raise RuntimeError("boom")

    client = Flaky()
    summary = asyncio.run(closed_loop(client, concurrency=3, duration=0.1, warmup=0.02))
    assert summary["completed"] > 0 and summary["errors"] > 0
    assert summary["first_error"] == "RuntimeError: boom"
    assert len(set(client.sent)) == len(client.sent)  # workers walk disjoint items


def test_in_process_limit_is_the_best_of_the_passes():
    before = [{"batch_size": 1, "items_per_s": 50.0, "ms_per_batch_p50": 21.0, "ms_per_batch_mean": 20.0}]
    after = [{"batch_size": 1, "items_per_s": 60.0, "ms_per_batch_p50": 19.0, "ms_per_batch_mean": 16.7}]
    (best,) = best_of([before, after])
    assert best["items_per_s"] == 60.0 and best["ms_per_batch_p50"] == 19.0
    assert best["passes_items_per_s"] == [50.0, 60.0]


def test_in_process_interpolates_in_log2_batch_size():
    points = [{"batch_size": b, "items_per_s": ips} for b, ips in [(1, 50.0), (2, 60.0), (4, 80.0)]]
    assert in_process_at(points, 2) == pytest.approx(60.0)
    assert in_process_at(points, 2**1.5) == pytest.approx(70.0)
    assert in_process_at(points, 0.5) == 50.0 and in_process_at(points, 64) == 80.0
    assert in_process_ms_at(points, 4) == pytest.approx(50.0)  # 4 items at 80 items/s


TORCHSERVE_METRICS = """\
# HELP ts_queue_latency_microseconds Cumulative queue duration in microseconds
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{model_name="sentiment",model_version="default",} 4000.0
ts_queue_latency_microseconds{model_name="digits",model_version="default",} 999.0
ts_inference_latency_microseconds{model_name="sentiment",model_version="default",} 40000.0
ts_inference_requests_total{model_name="sentiment",model_version="default",} 4.0
MaasForwardMs{Level="Model",ModelName="sentiment",Hostname="h",} 30.0
MaasPreprocessMs{Level="Model",ModelName="sentiment",Hostname="h",} 2.0
MaasPostprocessMs{Level="Model",ModelName="sentiment",Hostname="h",} 1.0
MaasRows{Level="Model",ModelName="sentiment",Hostname="h",} 4.0
MaasBatches{Level="Model",ModelName="sentiment",Hostname="h",} 2.0
"""

TRITON_METRICS = """\
nv_inference_request_success{model="sentiment",version="1"} 8
nv_inference_count{model="sentiment",version="1"} 8
nv_inference_exec_count{model="sentiment",version="1"} 2
nv_inference_queue_duration_us{model="sentiment",version="1"} 16000
nv_inference_compute_infer_duration_us{model="sentiment",version="1"} 80000
nv_inference_count{model="sentiment_naive",version="1"} 100
maas_rows_total{model="sentiment"} 8
maas_stage_duration_ms_total{model="sentiment",stage="preprocess"} 4
maas_stage_duration_ms_total{model="sentiment",stage="forward"} 16
maas_stage_duration_ms_total{model="sentiment",stage="postprocess"} 0.8
"""


@pytest.mark.parametrize(
    "server,text,names,expected",
    [
        # the digits line is another model's: 4 requests, 2 batches of 2 rows, 30 ms forward over 4 rows
        ("torchserve", TORCHSERVE_METRICS, TORCHSERVE_COUNTERS,
         {"avg_batch": 2.0, "queue_ms_per_request": 1.0, "server_ms_per_request": 10.0, "forward_ms_per_row": 7.5,
          "handler_ms_per_batch": 16.5}),
        # the sentiment_naive line is another model's: 8 requests in 2 executions
        ("triton", TRITON_METRICS, TRITON_COUNTERS,
         {"avg_batch": 4.0, "queue_ms_per_request": 2.0, "server_ms_per_request": 10.0, "preprocess_ms_per_row": 0.5,
          "forward_ms_per_row": 2.0, "postprocess_ms_per_row": 0.1}),
    ],
)  # fmt: skip
def test_breakdown_from_metrics(server, text, names, expected):
    b = breakdown(server, model_counters(parse_prometheus(text), "sentiment", names))
    assert {k: b[k] for k in expected} == pytest.approx(expected)


def test_breakdown_without_traffic_has_no_ratios():
    b = breakdown("triton", {})
    assert b["avg_batch"] is None and b["queue_ms_per_request"] is None


def _points(throughputs: dict[int, float], p50: float = 20.0, batch: float = 1.0) -> list[dict]:
    return [
        {"concurrency": c, "throughput": t, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "errors": 0,
         "server": {"avg_batch": batch if c > 1 else 1.0}}
        for c, t in throughputs.items()
    ]  # fmt: skip


def _series(label, server, naive, points):
    return {"label": label, "server": server, "protocol": "x", "naive": naive, "points": points, "breakdown": {}}


@pytest.fixture
def result():
    in_process = [
        {"batch_size": b, "items_per_s": ips, "ms_per_batch_p50": b / ips * 1e3}
        for b, ips in [(1, 50.0), (2, 60.0), (4, 80.0), (8, 90.0), (16, 100.0)]
    ]
    series = {
        "torchserve_rest": _series("TorchServe REST", "torchserve", False,
                                   _points({1: 45.0, 16: 75.0}, p50=22.5, batch=8.0)),  # 75 / 90 = 0.83
        "triton_grpc": _series("Triton gRPC", "triton", False, _points({1: 48.0, 16: 85.0}, p50=20.5, batch=16.0)),
        "torchserve_rest_naive": _series("TorchServe REST naive", "torchserve", True, _points({1: 44.0, 16: 40.0})),
        "triton_grpc_naive": _series("Triton gRPC naive", "triton", True, _points({1: 47.0, 16: 20.0})),
    }  # fmt: skip
    models = {
        "sentiment": {"task": "text_classification", "requests": "sentences",
                      "serving": {"triton": {"max_batch_size": 32}}, "in_process": in_process, "series": series},
        "digits": {"task": "image_classification", "requests": "pngs", "serving": {}, "in_process": in_process,
                   "series": {"triton_grpc": series["triton_grpc"],
                              "triton_grpc_ceiling": {**_series("Triton gRPC ceiling", "triton", False,
                                                                _points({1: 60.0, 16: 100.0})), "variant": "ceiling"}}},
    }  # fmt: skip
    meta = {"command": "benchmark", "date": "today", "machine": "2 cores", "duration_s": 6, "warmup_s": 1,
            "torchserve_warmup_requests": 1000, "concurrency": [1, 16], "serving_overrides": {},
            "wall_s": 1.0}  # fmt: skip
    result = {"meta": meta, "models": models}
    result["targets"] = evaluate_targets(result)
    return result


def _target(result, model, series, name):
    return next(t for t in result["targets"] if (t["model"], t["series"], t["target"]) == (model, series, name))


def test_targets_against_measured_values(result):
    sat = _target(result, "sentiment", "torchserve_rest", "saturation")
    assert sat["measured"] == pytest.approx(75.0 / 90.0) and sat["verdict"] == "FAIL"  # < 0.9
    sat = _target(result, "sentiment", "triton_grpc", "saturation")
    assert sat["measured"] == pytest.approx(0.85) and sat["verdict"] == "FAIL"  # < 0.9 on Triton
    latency = _target(result, "sentiment", "triton_grpc", "latency_c1")
    assert latency["measured"] == pytest.approx(0.5) and latency["verdict"] == "PASS"
    latency = _target(result, "sentiment", "torchserve_rest", "latency_c1")
    assert latency["measured"] == pytest.approx(2.5) and latency["verdict"] == "FAIL"  # > 2 ms on TorchServe
    gain = _target(result, "sentiment", "torchserve_rest", "vs_naive_c16")
    assert gain["measured"] == pytest.approx(75.0 / 40.0) and gain["verdict"] == "FAIL"
    assert _target(result, "sentiment", "triton_grpc", "vs_naive_c16")["verdict"] == "PASS"  # 85 / 20


def test_saturation_target_is_reported_but_not_judged_for_images(result):
    assert _target(result, "digits", "triton_grpc", "saturation")["verdict"] == "n/a"
    assert not [t for t in result["targets"] if t["model"] == "digits" and t["target"] == "vs_naive_c16"]  # no naive


def test_a_tiny_model_is_judged_against_its_servers_ceiling_the_text_model_is_not(result):
    ceiling = _target(result, "digits", "triton_grpc", "vs_ceiling")
    assert ceiling["measured"] == pytest.approx(85.0 / 100.0) and ceiling["verdict"] == "PASS"  # >= 0.8
    assert not [t for t in result["targets"] if t["series"].endswith("_ceiling")]  # the ceiling is no model
    assert not [t for t in result["targets"] if t["model"] == "sentiment" and t["target"] == "vs_ceiling"]


def test_markdown_report(result):
    markdown = render_markdown(result)
    assert "## Summary" in markdown and "## Targets" in markdown and "## Where time goes" in markdown
    assert "**PASS**" in markdown and "**FAIL**" in markdown and "n/a (another task's target)" in markdown
    assert "| Triton gRPC naive | 16 | 20.0 | 20.00 |" in markdown  # a per-point row
    assert "| batch size | items/s | ms per batch (p50) |" in markdown
    rows = summary_rows(result)
    assert rows[0][:2] == ["sentiment", "TorchServe REST"] and rows[0][-1] == "1.9"  # 75 / 40


def test_plot_writes_a_small_png(result, tmp_path):
    path = tmp_path / "benchmark.png"
    plot(result, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000


def test_served_settings_are_read_back_from_the_builds(tmp_path):
    (tmp_path / "model_store").mkdir()
    with zipfile.ZipFile(tmp_path / "model_store" / "m.mar", "w") as mar:
        mar.writestr("model-config.yaml", "batchSize: 32\nmaxBatchDelay: 1\nminWorkers: 1\n")
    (tmp_path / "model_repository" / "m").mkdir(parents=True)
    (tmp_path / "model_repository" / "m" / "config.pbtxt").write_text(
        'name: "m"\nmax_batch_size: 32\ndynamic_batching {\n}\n'
    )
    settings = served_settings(tmp_path, "m")
    assert settings == {
        "torchserve": {"batchSize": 32, "maxBatchDelay_ms": 1},
        "triton": {"max_batch_size": 32, "dynamic_batching": True, "max_queue_delay_us": 0},
    }
    assert describe_served({"m": settings}) == (
        "`m`: TorchServe batchSize 32, maxBatchDelay 1 ms; Triton max_batch_size 32, dynamic batching "
        "max_queue_delay 0 us"
    )


def test_command_line_defaults_and_serving_overrides():
    args = parse_args(["--serving", "max_batch_delay_ms=2", "--serving", "max_batch_size=16", "--concurrency", "1,16"])
    assert args.serving == {"max_batch_delay_ms": 2, "max_batch_size": 16}
    assert args.concurrency == [1, 16] and args.models == ["sentiment", "digits"] and args.naive
    assert parse_args(["--no-naive", "--models", "digits"]).models == ["digits"]


def test_serving_overrides_per_server():
    split = per_server({"max_batch_size": 16, "triton.max_batch_delay_ms": 0, "torchserve.max_batch_delay_ms": 1})
    assert split == {
        "torchserve": {"max_batch_size": 16, "max_batch_delay_ms": 1},
        "triton": {"max_batch_size": 16, "max_batch_delay_ms": 0},
    }
    with pytest.raises(SystemExit):
        parse_args(["--serving", "tritn.max_batch_delay_ms=0"])
