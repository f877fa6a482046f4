"""server_metrics: TF-Serving's monitoring config and Prometheus request counter, without a server."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from osmi_ee.osmi.server_metrics import (
    MONITORING_PATH, REQUEST_COUNT_METRIC, format_request_counts, monitoring_config_text, parse_monitoring_config,
    parse_request_counts, parse_request_counts_by_status, read_request_counts)

# What tensorflow_model_server's PrometheusExporter writes (one counter among many others).
TFS_PAGE = """# TYPE :tensorflow:cc:saved_model:load_attempt_count counter
:tensorflow:cc:saved_model:load_attempt_count{model_path="/models/small_lstm/1",status="success"} 1
# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="small_lstm",status="OK"} 1200
:tensorflow:serving:request_count{model_name="small_lstm",status="INVALID_ARGUMENT"} 3
:tensorflow:serving:request_count{model_name="medium_cnn",status="OK"} 7
# TYPE :tensorflow:serving:request_latency histogram
:tensorflow:serving:request_latency_bucket{model_name="small_lstm",API="predict",entrypoint="GRPC",le="10"} 0
"""


def test_parse_tf_serving_page() -> None:
    assert parse_request_counts(TFS_PAGE) == {"small_lstm": 1203, "medium_cnn": 7}
    assert parse_request_counts_by_status(TFS_PAGE) == {
        ("small_lstm", "OK"): 1200, ("small_lstm", "INVALID_ARGUMENT"): 3, ("medium_cnn", "OK"): 7}
    assert parse_request_counts("") == {}


def test_format_round_trips_with_escapes() -> None:
    counts = {("tiny", "OK"): 5, ("tiny", "NOT_FOUND"): 1, ('we"ird\\name', "OK"): 2}
    page = format_request_counts(counts)
    assert page.splitlines()[0] == f"# TYPE {REQUEST_COUNT_METRIC} counter"
    assert f'{REQUEST_COUNT_METRIC}{{model_name="tiny",status="OK"}} 5' in page.splitlines()
    assert parse_request_counts_by_status(page) == counts
    assert parse_request_counts(page) == {"tiny": 6, 'we"ird\\name': 2}


def test_monitoring_config() -> None:
    text = monitoring_config_text()
    assert "prometheus_config" in text and f'path: "{MONITORING_PATH}"' in text
    assert parse_monitoring_config(text) == (True, MONITORING_PATH)
    # TF-Serving's documented form, and its defaults: empty path means the default path.
    assert parse_monitoring_config('prometheus_config { enable: true, path: "/m" }') == (True, "/m")
    assert parse_monitoring_config("# nothing\n") == (False, MONITORING_PATH)
    for bad in ("prometheus_config { enabel: true }", "prometheus_config { enable: yes please }", "{"):
        with pytest.raises(ValueError):
            parse_monitoring_config(bad)


@pytest.fixture
def page_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = TFS_PAGE.encode() if self.path == MONITORING_PATH else b"no"
            self.send_response(200 if self.path == MONITORING_PATH else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_read_request_counts(page_server: int) -> None:
    assert read_request_counts("127.0.0.1", page_server) == {"small_lstm": 1203, "medium_cnn": 7}
    with pytest.raises(OSError, match="/other"):  # monitoring off: 404, named in the error
        read_request_counts("127.0.0.1", page_server, path="/other")


def test_no_tensorflow_or_grpc_import() -> None:
    code = ("import sys, osmi_ee.osmi.server_metrics as m; m.parse_monitoring_config(m.monitoring_config_text()); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'grpc')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
