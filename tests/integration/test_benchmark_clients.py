"""The benchmark's wrk targets against the real servers: the requests it sends are the ones clients send."""

from __future__ import annotations

import pytest

from scripts.benchmarking.bench_servers import SERIES_BY_KEY, http_target
from scripts.benchmarking.workloads import image_model, text_model
from scripts.benchmarking.wrk_load import wrk_point


@pytest.mark.parametrize("series", ["torchserve_rest", "triton_http"])
@pytest.mark.parametrize("model", ["digits", "sentiment"])
def test_wrk_sends_answerable_requests_to_both_servers(torchserve, triton, digits_artifact, text_artifact, series,
                                                       model):  # fmt: skip
    workload = (image_model(model, digits_artifact) if model == "digits" else text_model(model, text_artifact)).workload
    target = http_target(SERIES_BY_KEY[series], model, workload, torchserve, triton.http)
    server_pid = (torchserve if series == "torchserve_rest" else triton).process.pid
    point = wrk_point(target, concurrency=2, duration=1, warmup=0, offset=0, server_pids=[server_pid])
    assert point["errors"] == 0 and point["completed"] > 0, point
    assert point["server_cores"] > 0.05  # the server's process tree did the work
