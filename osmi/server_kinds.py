"""What differs between the model servers a fleet can run, behind one small interface.

A fleet (osmi.fleet) starts shards, waits until each is ready, puts HAProxy in
front with a health check, and reads each shard's own request count. Only the
how differs per server:

- TF-Serving's API (tensorflow_model_server and our osmi-model-server): flags
  --port/--rest_api_port/--model_config_file, ready once a real Predict
  succeeds, counts from the Prometheus page, health by grpc.health.v1.
- Triton (tritonserver): a model repository, KServe v2 over gRPC, ready when its
  ServerReady/ModelReady say so and a real ModelInfer succeeds, counts from its
  statistics API, health by ServerReady.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from osmi_ee.osmi.haproxy import GRPC_HEALTH_URI

TRITON = "triton"  # serve.server / experiment.server value
TRITONSERVER = "tritonserver"  # the server kind a summary names


@dataclass(frozen=True)
class ShardConfig:
    """The per-run files and settings every shard of a run gets."""

    model_config: Path  # TF-Serving: --model_config_file; Triton: the model repository
    monitoring_config: Path
    intra_op_threads: int = 0
    extra_flags: tuple[str, ...] = ()  # e.g. server-side batching flags (TF-Serving's API only)


class ServerKind:
    """TF-Serving's API: tensorflow_model_server and osmi-model-server."""

    health_uri = GRPC_HEALTH_URI  # HAProxy's gRPC check (any reply is HTTP 200)

    def __init__(self, name: str) -> None:
        self.name = name

    def argv(self, prefix: list[str], port: int, rest_port: int, host_flags: list[str],
             config: ShardConfig) -> list[str]:
        argv = [*prefix, f"--port={port}", f"--rest_api_port={rest_port}",
                f"--model_config_file={config.model_config}",
                f"--monitoring_config_file={config.monitoring_config}"]
        if config.intra_op_threads:
            argv.append(f"--tensorflow_intra_op_parallelism={config.intra_op_threads}")
        return [*argv, *config.extra_flags, *host_flags]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return dict(base)

    def ready_error(self, target: str, model: str, timeout_s: float) -> str | None:
        """None once one real Predict for `model` succeeds, else the error text."""
        from osmi_ee.osmi import protos
        from osmi_ee.osmi.client import build_requests

        return _call(target, protos.PREDICT_METHOD, build_requests(model, 1, seed=0, count=1)[0], timeout_s)

    def version(self, host: str, rest_port: int) -> str | None:
        """The running server's name and version where it says so itself; None: osmi.env asks."""
        return None

    def served(self, host: str, rest_port: int, model: str) -> int:
        """Requests for `model` the shard has answered so far (OSError when it cannot say)."""
        from osmi_ee.osmi import server_metrics

        return server_metrics.read_request_counts(host, rest_port, timeout_s=5).get(model, 0)


class TritonKind(ServerKind):
    """tritonserver: the pip-installed one here (osmi.triton_setup), a container on a cluster."""

    health_uri = "/inference.GRPCInferenceService/ServerReady"

    def __init__(self, local: bool) -> None:
        super().__init__(TRITONSERVER)
        self.local = local  # our bundled tritonserver (python backend) vs a given command (its own)

    def argv(self, prefix: list[str], port: int, rest_port: int, host_flags: list[str],
             config: ShardConfig) -> list[str]:
        from osmi_ee.osmi.triton_server import triton_argv
        from osmi_ee.osmi.triton_setup import TritonInstall

        # host_flags are TF-Serving's; Triton binds by its own flags, to loopback unless given one.
        host = next((f.split("=", 1)[1] for f in host_flags if f.startswith("--grpc_bind_host=")), "127.0.0.1")
        backends = TritonInstall.default().backends if self.local else None
        return triton_argv(prefix, port, rest_port, config.model_config, backends, host=host)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        if not self.local:
            return dict(base)
        from osmi_ee.osmi.triton_setup import TritonInstall

        return TritonInstall.default().server_env(base)

    def ready_error(self, target: str, model: str, timeout_s: float) -> str | None:
        """Triton's own readiness first, then one real ModelInfer."""
        from osmi_ee.osmi import kserve
        from osmi_ee.osmi.kserve_client import build_infer_requests
        from osmi_ee.osmi.triton_server import readiness_error

        error = readiness_error(target, model, timeout_s=min(timeout_s, 5.0))
        if error is not None:
            return error
        return _call(target, kserve.INFER_METHOD, build_infer_requests(model, 1, seed=0, count=1)[0], timeout_s)

    def version(self, host: str, rest_port: int) -> str | None:
        """From its server metadata (tritonserver has no --version flag)."""
        from osmi_ee.osmi.triton_server import server_metadata

        try:
            meta = server_metadata(host, rest_port)
        except (OSError, ValueError):
            return None
        return f"tritonserver {meta.get('version')}"

    def served(self, host: str, rest_port: int, model: str) -> int:
        from osmi_ee.osmi.triton_server import request_count

        return request_count(host, rest_port, model)


def _call(target: str, method: str, request: bytes, timeout_s: float) -> str | None:
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(method)(request, timeout=timeout_s)
            return None
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


def triton_command(given: list[str]) -> list[str]:
    """The tritonserver to run: the profile's (e.g. apptainer exec --nv <image> tritonserver),
    else the one `osmi-ee setup triton` installed. RuntimeError says how to get it."""
    if given:
        return given
    from osmi_ee.osmi.triton_setup import TritonInstall

    install = TritonInstall.default()
    if not install.tritonserver.exists() or not (install.backends / "python").exists():
        raise RuntimeError(f"serve.server is 'triton' but there is no tritonserver in {install.root}: "
                           "run `make triton` (osmi-ee setup triton)")
    return [str(install.tritonserver)]


def server_kind(name: str, given: list[str] | None = None) -> ServerKind:
    """The kind behind a shard's server name (server_command's first result)."""
    return TritonKind(local=not given) if name == TRITONSERVER else ServerKind(name)


def experiment_server(serve_server: str, params: dict[str, Any]) -> str:
    """The server of one experiment: its `server` axis value, else serve.server."""
    return params.get("server") or serve_server


def write_server_files(server: str, given: list[str], *, model: str, models_dir: str | Path, paths: Any,
                       batching: Any, intra_op_threads: int) -> Path | None:
    """Triton's model repository for a triton run (returned: the shards' model config);
    None for the other servers (their files are osmi.fleet.write_server_configs')."""
    if server != TRITON:
        return None
    from osmi_ee.osmi.triton_repo import write_triton_repository

    # A given command is a Triton container with its TensorFlow backend; ours has only python.
    shutil.rmtree(paths.triton_repository, ignore_errors=True)
    try:
        return write_triton_repository(paths.triton_repository, model, models_dir,
                                       backend="tensorflow" if given else "python", batching=batching,
                                       intra_op_threads=intra_op_threads)
    except FileNotFoundError as exc:
        raise RuntimeError(str(exc)) from None
