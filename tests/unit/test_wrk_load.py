"""wrk as the benchmark's HTTP client, against a small loopback server that records what it was sent."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.benchmarking.wrk_load import HttpTarget, ensure_wrk, wrk_point


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: list[tuple[bytes, str | None, str | None]] = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((body, self.headers.get("Inference-Header-Content-Length"), self.headers.get("X-Key")))
        status = 500 if body == b"bad" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/infer"
    httpd.shutdown()


def test_wrk_cycles_through_every_body_with_its_headers_and_counts_the_answers(server):
    ensure_wrk()
    bodies = [(b"\x00\xffpng-bytes", None), (b'{"text": "a"}', None), (b"json-part+binary", 9)]
    point = wrk_point(HttpTarget(server, {"X-Key": "k"}, bodies), concurrency=2, duration=1, warmup=0, offset=0,
                      server_pids=[])  # fmt: skip
    assert point["errors"] == 0 and point["completed"] > 10
    assert point["completed"] <= len(Recorder.seen)  # the server saw every answered request
    assert {body for body, _, _ in Recorder.seen} == {body for body, _ in bodies}  # binary-safe, every one
    assert all(key == "k" for _, _, key in Recorder.seen)
    assert {(body, size) for body, size, _ in Recorder.seen} == {(b, None if s is None else str(s)) for b, s in bodies}
    assert 0 < point["client_cores"] < 1.5 and point["p50_ms"] <= point["p99_ms"]


def test_wrk_counts_non_200_answers_as_errors_not_throughput(server):
    point = wrk_point(HttpTarget(server, {}, [(b"good", None), (b"bad", None)]), 1, 1, 0, 0, [])
    answered = len(Recorder.seen)
    assert point["errors"] > 0 and point["completed"] > 0
    assert point["completed"] + point["errors"] <= answered  # each request counted once, as one or the other
