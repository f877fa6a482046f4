"""`osmi-model-server`: a TensorFlow-Serving-compatible gRPC model server.

The real `tensorflow_model_server` binary is not available everywhere, so this
serves SavedModels over the same gRPC API (the generated stubs of
`tensorflow_serving.apis`), with the same flags, so clients and job scripts
cannot tell the difference for Predict, GetModelMetadata, GetModelStatus and
grpc.health.v1. A minimal REST API is served when `--rest_api_port` > 0, and with
`--monitoring_config_file` TF-Serving's Prometheus page (request counts) on it.

Abuse is refused before it costs anything: it binds loopback unless told
otherwise, gRPC refuses messages over `--max_message_bytes`, and every input's
declared element count is checked against the values actually sent and against
`--max_batch` before anything is allocated.

With `--enable_batching [--batching_parameters_file=F]` (TF-Serving's flags and file
format) concurrent Predict calls are merged into batches by `serving_batcher`, and
each batch's size is counted on the Prometheus page under TF-Serving's name.

Start-up order: flags and model config are checked before TensorFlow is
imported (bad input fails in well under a second), then the gRPC port is bound
and written to `--port_file` (health says NOT_SERVING), then the models are
loaded and warmed, then health says SERVING.

The parts: `serving_models` (SavedModels, signatures, the registry),
`serving_checks` (request checks before decoding), `serving_grpc` (servicers,
start_grpc) and `serving_rest` (REST, the metrics page); this module holds the
flags and the serve loop.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osmi_ee.osmi.batching import QueueSettings, parse_batching_parameters
from osmi_ee.osmi.extras import MissingExtra, require_serve
from osmi_ee.osmi.schema import MAX_MESSAGE_BYTES
from osmi_ee.osmi.serving_checks import DEFAULT_MAX_BATCH, Limits
from osmi_ee.osmi.serving_batcher import Batcher
from osmi_ee.osmi.serving_grpc import RequestCounter, start_grpc
from osmi_ee.osmi.serving_models import ModelRegistry, StartupError, latest_version, load_model
from osmi_ee.osmi.serving_rest import load_monitoring_config, start_rest

log = logging.getLogger("osmi-model-server")

DEFAULT_BIND_HOST = "127.0.0.1"  # an unauthenticated server must be opened to the network on purpose
GRACE_SECONDS = 5.0


class _Stop(BaseException):
    """Raised by the signal handler while still loading (not an Exception, so no
    `except Exception` on the way turns a shutdown into a start-up error)."""


# --------------------------------------------------------------------------- flags


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    # allow_abbrev=False: the real binary rejects flag prefixes, so do we.
    parser = argparse.ArgumentParser(
        prog="osmi-model-server", allow_abbrev=False,
        description="TensorFlow-Serving-compatible gRPC model server (tensorflow_model_server flags).")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0 picks a free port)")
    parser.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 disables REST")
    parser.add_argument("--model_config_file", default="", help="text-format ModelServerConfig")
    parser.add_argument("--model_name", default=None, help="single-model form: model name (default 'default')")
    parser.add_argument("--model_base_path", default="", help="single-model form: folder of version folders")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, help="0 = TensorFlow's default")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="0 = TensorFlow's default")
    parser.add_argument("--grpc_max_threads", type=int, default=16, help="gRPC worker threads (ours)")
    parser.add_argument("--grpc_bind_host", default=DEFAULT_BIND_HOST,
                        help="address gRPC and REST listen on (ours; default loopback only, "
                             "give 0.0.0.0 or a node address to serve other hosts)")
    parser.add_argument("--port_file", default="", help="write the bound gRPC port here, atomically (ours)")
    parser.add_argument("--max_message_bytes", type=int, default=MAX_MESSAGE_BYTES,
                        help="largest request accepted, in bytes, gRPC message or REST body; larger ones get "
                             f"RESOURCE_EXHAUSTED (ours; default {MAX_MESSAGE_BYTES}, gRPC's ceiling)")
    parser.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="largest batch (first dimension of an input) one request may carry; larger ones get "
                             f"RESOURCE_EXHAUSTED (ours; default {DEFAULT_MAX_BATCH}, twice the largest batch of the "
                             "shipped grids: the payload is bounded by --max_message_bytes, this bounds the "
                             "activations and outputs one request makes the model compute)")
    parser.add_argument("--monitoring_config_file", default="",
                        help="text-format MonitoringConfig; with prometheus_config { enable: true } the Prometheus "
                             "metrics (request counts) are served at its path on the REST port")
    parser.add_argument("--enable_batching", action="store_true",
                        help="merge concurrent Predict calls into batches (osmi_ee/osmi/serving_batcher.py)")
    parser.add_argument("--batching_parameters_file", default="",
                        help="text-format BatchingParameters (max_batch_size, batch_timeout_micros, "
                             "num_batch_threads, max_enqueued_batches); without it TF-Serving's defaults")
    args = parser.parse_args(argv)
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file needs --enable_batching")
    if bool(args.model_config_file) == bool(args.model_base_path or args.model_name):
        parser.error("give either --model_config_file or --model_name/--model_base_path, not both or neither")
    if not args.model_config_file and not args.model_base_path:
        parser.error("--model_base_path is required with --model_name")
    if args.model_name is None:
        args.model_name = "default"  # tensorflow_model_server's default
    if args.port < 0 or args.rest_api_port < 0 or args.grpc_max_threads < 1:
        parser.error("ports must be >= 0 and --grpc_max_threads >= 1")
    if not 1 <= args.max_message_bytes <= MAX_MESSAGE_BYTES:
        parser.error(f"--max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES}")
    if args.max_batch < 1:
        parser.error("--max_batch must be >= 1")
    return args


def _model_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Model name -> base path, from whichever form the flags used."""
    if not args.model_base_path:
        from osmi_ee.osmi.model_config import load_model_config

        try:
            return load_model_config(args.model_config_file)
        except OSError as exc:
            raise StartupError(f"cannot read model config file {args.model_config_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    return {args.model_name: Path(args.model_base_path)}


# --------------------------------------------------------------------------- main


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)  # readers never see a partial file


class _Shutdown:
    """SIGTERM/SIGINT handler: while starting, abandon start-up; once serving, ask the main loop to drain."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.starting = True

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested.set()
        if self.starting:
            raise _Stop


def serve(args: argparse.Namespace, shutdown: _Shutdown) -> int:
    paths = _model_paths(args)
    versions = {name: latest_version(name, base) for name, base in paths.items()}  # fail before importing TF
    monitoring = load_monitoring_config(args.monitoring_config_file)
    if monitoring.enabled and args.rest_api_port == 0:
        log.warning("monitoring enabled but --rest_api_port is 0: no metrics page is served")
    registry = ModelRegistry(paths)
    limits = Limits(args.max_message_bytes, args.max_batch)
    counter = RequestCounter()
    batcher = _start_batcher(args, counter)
    server = httpd = None
    try:
        server, port, health_servicer = start_grpc(registry, args.grpc_bind_host, args.port, args.grpc_max_threads,
                                                   limits, counter, batcher)
        if args.port_file:
            _write_port_file(Path(args.port_file), port)
        if args.rest_api_port > 0:
            httpd = start_rest(registry, args.grpc_bind_host, args.rest_api_port, limits, counter, monitoring)

        import tensorflow as tf
        from grpc_health.v1 import health_pb2

        # Must precede the first op: TF fixes its thread pools when the runtime starts.
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
        for name, (version, path) in versions.items():
            registry.models[name] = load_model(name, version, path)
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        shutdown.starting = False
        rest = f", REST on {args.grpc_bind_host}:{args.rest_api_port}" if httpd else ""
        if httpd and monitoring.enabled:
            rest += f", metrics at {monitoring.path}"
        log.info("serving on %s:%d%s (max batch %d, max message %d bytes)", args.grpc_bind_host, port, rest,
                 limits.max_batch, limits.max_message_bytes)
        shutdown.requested.wait()
        log.info("stopping (grace %.0f s)", GRACE_SECONDS)
        server.stop(GRACE_SECONDS).wait()
        return 0
    finally:
        shutdown.starting = False  # a second signal during clean-up must not interrupt it
        if httpd is not None:
            httpd.shutdown()
        if server is not None:
            server.stop(0)
        if batcher is not None:
            batcher.stop()


def _start_batcher(args: argparse.Namespace, counter: RequestCounter) -> Batcher | None:
    """The batching queue of --enable_batching, its batch sizes on the metrics page."""
    if not args.enable_batching:
        return None
    settings = QueueSettings()
    if args.batching_parameters_file:
        path = args.batching_parameters_file
        try:
            settings = parse_batching_parameters(Path(path).read_text())
        except OSError as exc:
            raise StartupError(f"cannot read batching parameters file {path}: {exc.strerror}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise StartupError(f"malformed batching parameters file {path}: {exc}") from None
    if settings.max_batch_size > args.max_batch:
        raise StartupError(f"batching max_batch_size {settings.max_batch_size} exceeds --max_batch={args.max_batch}")
    batcher = Batcher(settings)
    counter.pages.append(batcher.sizes)
    log.info("batching on: max_batch_size %d, batch_timeout_micros %d, num_batch_threads %d, "
             "max_enqueued_batches %d", settings.max_batch_size, settings.batch_timeout_us,
             settings.num_batch_threads, settings.max_enqueued_batches)
    return batcher


def main(argv: Sequence[str] | None = None) -> int:
    shutdown = _Shutdown()
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF is imported: keep stderr readable
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s osmi-model-server %(levelname)s %(message)s")
    # A crash in native code (TF, gRPC) or a kill by the OOM path still leaves a trace in the log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    threading.excepthook = _log_thread_exception
    try:
        require_serve("osmi-model-server")
        return serve(args, shutdown)
    except MissingExtra as exc:
        log.error("%s", exc)
        return 1
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except _Stop:
        log.info("stopped before serving")
        return 0
    except Exception:  # logged with traceback before the process dies, not only printed by the interpreter
        log.critical("fatal error, exiting", exc_info=True)
        return 1


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    log.critical("uncaught exception in thread %s", args.thread.name if args.thread else "?",
                 exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


if __name__ == "__main__":
    sys.exit(main())
