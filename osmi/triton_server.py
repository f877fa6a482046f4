"""One tritonserver shard: its command line, its readiness, its own request count."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from osmi_ee.osmi import kserve


def triton_argv(prefix: list[str], port: int, http_port: int, repository: Path | str,
                backends: Path | str | None, host: str = "127.0.0.1") -> list[str]:
    """A shard's command: gRPC for the load, HTTP for health and statistics, no metrics
    port (nothing reads it). `backends`: None inside a Triton container (its own)."""
    argv = [*prefix, f"--model-repository={repository}",
            f"--grpc-address={host}", f"--grpc-port={port}",
            f"--http-address={host}", f"--http-port={http_port}",
            "--allow-metrics=false", "--exit-on-error=true", "--strict-readiness=true",
            "--model-control-mode=none"]
    if backends is not None:
        argv.append(f"--backend-directory={backends}")
    return argv


def readiness_error(target: str, model: str, timeout_s: float = 5.0) -> str | None:
    """None when Triton says the server and `model` are ready (its own endpoints), else why not."""
    with grpc.insecure_channel(target) as channel:
        try:
            server = kserve.ServerReadyResponse.FromString(
                channel.unary_unary(kserve.SERVER_READY_METHOD)(b"", timeout=timeout_s))
            if not server.ready:
                return "ServerReady: not ready"
            request = kserve.ModelReadyRequest(name=model).SerializeToString()
            ready = kserve.ModelReadyResponse.FromString(
                channel.unary_unary(kserve.MODEL_READY_METHOD)(request, timeout=timeout_s))
            return None if ready.ready else f"ModelReady({model}): not ready"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


def wait_triton_ready(target: str, model: str, timeout_s: float, *, alive: Callable[[], bool],
                      describe: Callable[[], str]) -> None:
    """Blocks until `readiness_error` is None; RuntimeError when the server dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    error = "not asked yet"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(describe())
        error = readiness_error(target, model)
        if error is None:
            return
        time.sleep(0.25)
    raise RuntimeError(f"tritonserver at {target} not ready after {timeout_s:.0f} s: {error}")


def request_count(host: str, http_port: int, model: str, timeout_s: float = 5.0) -> int:
    """Requests `model` answered successfully so far, from Triton's statistics API
    (inference_stats.success.count: requests; inference_count would count samples)."""
    url = f"http://{host}:{http_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        stats = json.loads(response.read())
    return sum(int(s.get("inference_stats", {}).get("success", {}).get("count", 0))
               for s in stats.get("model_stats", []))


def server_metadata(host: str, http_port: int, timeout_s: float = 5.0) -> dict:
    """KServe v2 server metadata: {"name": "triton", "version": "2.51.0", "extensions": [...]}."""
    with urllib.request.urlopen(f"http://{host}:{http_port}/v2", timeout=timeout_s) as response:
        return json.loads(response.read())
