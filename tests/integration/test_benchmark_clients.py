"""The benchmark's load generators against the real servers: wrk's requests are the ones clients send, and the
gRPC load from several processes is merged into one point."""

from __future__ import annotations

import pytest

from scripts.benchmarking.bench_servers import SERIES_BY_KEY, http_target
from scripts.benchmarking.grpc_load import GrpcLoad, split
from scripts.benchmarking.workloads import image_model, text_model
from scripts.benchmarking.wrk_load import wrk_point

pytestmark = pytest.mark.models("digits", "sentiment")


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


def test_grpc_load_from_two_processes_merges_their_points_and_reports_a_failure(triton, digits_artifact, tmp_path):
    load = GrpcLoad(processes=2)
    try:
        for _ in range(2):  # the second point reuses the processes and their workload
            point = load.point(f"127.0.0.1:{triton.grpc}", digits_artifact, "digits", concurrency=3, duration=1,
                               warmup=0.2, offset=0, server_pids=[triton.process.pid])  # fmt: skip
            assert point["errors"] == 0 and point["completed"] > 0, point  # a count, not a speed: CI may be busy
            assert point["client"] == "python x2" and len(point["client_process_cores"]) == 2
            assert all(0 < cores < 1.5 for cores in point["client_process_cores"])  # each measured its own CPU
            assert point["server_cores"] > 0.05 and point["p50_ms"] <= point["p99_ms"]
        with pytest.raises(RuntimeError, match="a gRPC client process failed"):
            load.point(f"127.0.0.1:{triton.grpc}", tmp_path / "missing", "digits", concurrency=2, duration=1,
                       warmup=0, offset=0, server_pids=[triton.process.pid])  # fmt: skip
        point = load.point(f"127.0.0.1:{triton.grpc}", digits_artifact, "digits", concurrency=2, duration=1,
                           warmup=0, offset=0, server_pids=[triton.process.pid])  # fmt: skip
        assert point["errors"] == 0 and point["completed"] > 0  # the processes survived the failed point
    finally:
        load.close()


def test_connections_are_split_evenly_and_no_process_is_idle():
    assert split(16, 2) == [8, 8] and split(5, 2) == [3, 2] and split(1, 2) == [1] and sum(split(7, 3)) == 7
