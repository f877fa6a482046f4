"""The local Triton: an environment from PyPI, made ready and checked (`osmi-ee setup triton`).

Measured facts this follows (see README, "Triton"):
- nvidia-pytriton 0.7.0 bundles tritonserver 2.51.0, its python backend and one
  backend stub per Python; the binaries need the wheel's own libraries
  (nvidia_pytriton.libs) on LD_LIBRARY_PATH.
- The stub embeds Debian's libpython 3.11, so the environment it runs models in
  must be made by /usr/bin/python3.11 -m venv, and it runs the first python3 on
  PATH: the environment's bin/ goes first.
- numpy 2 in that environment makes every answer 0 bytes, silently. numpy
  1.26.4 with ml_dtypes < 0.6 works beside tensorflow-cpu 2.21.
- perf_analyzer (tritonclient 2.51's wheel) needs libcudart.so.12 and
  libb64.so.0d: both are in the pytriton wheel, linked under their plain names.

Everything lives in one folder (default build/triton-env, or $OSMI_TRITON_ENV).
Setup is idempotent: pip runs only when a version is wrong, and every run ends
with the check, which fails loudly (exit 1) on a wrong numpy, a missing binary
or a round trip through a real tritonserver whose answer differs by one byte.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ENV_VAR = "OSMI_TRITON_ENV"
REPO_ROOT = Path(__file__).resolve().parents[1]
STUB_PYTHON = "/usr/bin/python3.11"  # the interpreter the backend stub embeds (Debian's 3.11)
STUB_PY_VERSION = "3.11"
NUMPY = "1.26.4"  # numpy 2 here: 0-byte answers
ML_DTYPES_BELOW = (0, 6)
PYTRITON = "nvidia-pytriton==0.7.0"  # tritonserver 2.51.0
TRITONCLIENT = "tritonclient==2.51.0"  # perf_analyzer of the same release
DEFAULT_TF = "2.21.0"


def tensorflow_version() -> str:
    """The stub's TensorFlow: the same release as this environment's, so one export serves both."""
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return DEFAULT_TF


@dataclass(frozen=True)
class TritonInstall:
    """Where everything of the local Triton is, inside one folder."""

    root: Path

    @classmethod
    def default(cls) -> TritonInstall:
        return cls(Path(os.environ.get(ENV_VAR) or REPO_ROOT / "build" / "triton-env").resolve())

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python3"

    @property
    def site(self) -> Path:
        return self.root / "lib" / f"python{STUB_PY_VERSION}" / "site-packages"

    @property
    def tritonserver(self) -> Path:
        return self.site / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.site / "nvidia_pytriton.libs"

    @property
    def backends(self) -> Path:
        """The wheel's backends plus the 3.11 stub beside the python backend (prepared here)."""
        return self.root / "osmi-backends"

    @property
    def checked_stamp(self) -> Path:
        """Written after a passed round trip; later setups then recheck versions only."""
        return self.root / "osmi-checked"

    @property
    def perf_analyzer(self) -> Path:
        return self.root / "bin" / "perf_analyzer"

    @property
    def perf_libs(self) -> Path:
        """libcudart.so.12 and libb64.so.0d under the names perf_analyzer asks for."""
        return self.root / "osmi-perf-libs"

    def server_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A tritonserver's environment: the wheel's libraries, and our env's python3 first
        on PATH (the stub runs it; its numpy decides whether answers have bytes)."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join(p for p in (str(self.root / "bin"), env.get("PATH")) if p)
        env.pop("PYTHONPATH", None)  # the job's own packages (numpy 2) must not leak into the stub
        env.pop("PYTHONHOME", None)
        return env

    def perf_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.perf_libs), env.get("LD_LIBRARY_PATH")) if p)
        return env


class TritonSetupError(RuntimeError):
    """The local Triton is missing or wrong; the message says what and how to fix it."""


# ---------------------------------------------------------------- install


def _versions(python: Path) -> dict[str, str | None]:
    """Versions as the stub's own python3 sees them (a subprocess: never this process's)."""
    code = ("import json, sys\nfrom importlib import metadata\nv = {}\n"
            "for d in ('numpy', 'ml_dtypes', 'tensorflow-cpu', 'nvidia-pytriton', 'tritonclient'):\n"
            "    try: v[d] = metadata.version(d)\n"
            "    except metadata.PackageNotFoundError: v[d] = None\n"
            "v['python'] = '%d.%d' % sys.version_info[:2]\nv['base_prefix'] = sys.base_prefix\n"
            "print(json.dumps(v))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
    if out.returncode != 0:
        raise TritonSetupError(f"{python} does not run: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def version_problems(install: TritonInstall) -> list[str]:
    """What is wrong with the env's versions and files; [] when all is right."""
    if not install.python.exists():
        return [f"no Triton environment at {install.root} (run `make triton` or `osmi-ee setup triton`)"]
    v = _versions(install.python)
    problems = []
    if v["python"] != STUB_PY_VERSION or v["base_prefix"] != "/usr":
        problems.append(f"{install.root} runs Python {v['python']} from {v['base_prefix']}; the backend stub "
                        f"embeds Debian's libpython {STUB_PY_VERSION}: make it with {STUB_PYTHON} -m venv")
    if v["numpy"] != NUMPY:
        problems.append(f"numpy {v['numpy']} in {install.root}; the Triton python backend needs numpy {NUMPY} "
                        "(with numpy 2 it answers every request with 0 bytes, silently)")
    ml = tuple(int(x) for x in (v["ml_dtypes"] or "99").split(".")[:2])
    if ml >= ML_DTYPES_BELOW:
        problems.append(f"ml_dtypes {v['ml_dtypes']} in {install.root}; needs < 0.6 beside numpy {NUMPY}")
    if v["tensorflow-cpu"] != tensorflow_version():
        problems.append(f"tensorflow-cpu {v['tensorflow-cpu']} in {install.root}; the models were exported "
                        f"with TensorFlow {tensorflow_version()}")
    for path in (install.tritonserver, install.perf_analyzer,
                 install.site / "pytriton" / "tritonserver" / "python_backend_stubs" / STUB_PY_VERSION):
        if not path.exists():
            problems.append(f"missing {path} ({PYTRITON} / {TRITONCLIENT} not installed)")
    return problems


def install(target: TritonInstall, log=print) -> None:
    """Creates or repairs the env; pip runs only when a version is wrong."""
    if not Path(STUB_PYTHON).exists():
        raise TritonSetupError(f"{STUB_PYTHON} not found: the Triton backend stub needs Debian's Python 3.11 "
                               "(apt-get install python3.11-venv)")
    if target.python.exists() and not version_problems(target):
        return
    if not target.python.exists():
        log(f"creating {target.root} with {STUB_PYTHON} -m venv")
        subprocess.run([STUB_PYTHON, "-m", "venv", str(target.root)], check=True)
    pip = [str(target.python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    log(f"installing tensorflow-cpu {tensorflow_version()}, numpy {NUMPY}, {PYTRITON}, {TRITONCLIENT} "
        f"into {target.root} (first time: about a minute, 1.9 GB)")
    subprocess.run([*pip, f"tensorflow-cpu=={tensorflow_version()}", f"numpy=={NUMPY}", "ml_dtypes<0.6"],
                   check=True)
    # Their Python dependencies clash with TensorFlow's protobuf; we use only their binaries.
    subprocess.run([*pip, "--no-deps", PYTRITON, TRITONCLIENT], check=True)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.unlink()
    link.symlink_to(target)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise TritonSetupError(f"no {pattern} in {folder}")
    return found[0]


def prepare(target: TritonInstall) -> None:
    """The backend folder (the wheel's backends, the 3.11 stub beside the python one) and
    perf_analyzer's library names; links only, nothing downloaded."""
    wheel_backends = target.site / "pytriton" / "tritonserver" / "backends"
    for backend in wheel_backends.iterdir():
        if not backend.is_dir():
            continue
        own = target.backends / backend.name
        own.mkdir(parents=True, exist_ok=True)
        for item in backend.iterdir():
            if item.name != "__pycache__":
                _link(own / item.name, item)
    stub = target.site / "pytriton" / "tritonserver" / "python_backend_stubs" / STUB_PY_VERSION
    _link(target.backends / "python" / "triton_python_backend_stub", stub / "triton_python_backend_stub")
    target.perf_libs.mkdir(parents=True, exist_ok=True)
    _link(target.perf_libs / "libcudart.so.12", _one(target.libs, "libcudart-*.so.12*"))
    _link(target.perf_libs / "libb64.so.0d", _one(target.libs, "libb64-*.so.0d"))


# ---------------------------------------------------------------- round trip

# A SavedModel with small_lstm's signature whose answer is known exactly (2 x a slice
# of the input), made by the stub env's own TensorFlow: the check needs no export.
_CHECK_MODEL = """
import sys, tensorflow as tf
class M(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 48], tf.float32, name="inputs")])
    def serve(self, inputs):
        return {"outputs": inputs[:, :2, :12] * 2.0}
m = M()
tf.saved_model.save(m, sys.argv[1], signatures={"serving_default": m.serve})
"""


def round_trip(target: TritonInstall, work: Path, timeout_s: float = 120.0) -> dict[str, float]:
    """Serves a known model through a real tritonserver and compares every byte of an
    answer; returns the timings. TritonSetupError says what differed."""
    import grpc
    import numpy as np

    from osmi_ee.osmi import kserve
    from osmi_ee.osmi.kserve_client import build_infer_requests, decode_output
    from osmi_ee.osmi.procs import ProcessGroup, free_port
    from osmi_ee.osmi.triton_repo import write_triton_repository
    from osmi_ee.osmi.triton_server import triton_argv, wait_triton_ready

    models = work / "models"
    if not (models / "small_lstm" / "1" / "saved_model.pb").exists():
        subprocess.run([str(target.python), "-c", _CHECK_MODEL, str(models / "small_lstm" / "1")], check=True,
                       capture_output=True, env={**target.server_env(), "TF_CPP_MIN_LOG_LEVEL": "2"})
    repo = write_triton_repository(work / "repo", "small_lstm", models, backend="python", max_batch_size=4)
    group = ProcessGroup()
    port, http_port = free_port(), free_port()
    argv = triton_argv([str(target.tritonserver)], port, http_port, repo, target.backends)
    t0 = time.monotonic()
    try:
        child = group.start("tritonserver (setup check)", argv, work / "tritonserver.log", target.server_env())
        wait_triton_ready(f"127.0.0.1:{port}", "small_lstm", timeout_s, alive=child.alive,
                          describe=child.describe_exit)
        ready_s = time.monotonic() - t0
        request = build_infer_requests("small_lstm", 3, seed=5, count=1)[0]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = channel.unary_unary(kserve.INFER_METHOD)(request, timeout=60)
    finally:
        group.stop(grace_s=5)
    sent = np.frombuffer(kserve.ModelInferRequest.FromString(request).raw_input_contents[0], np.float32)
    expected = (sent.reshape(3, 8, 48)[:, :2, :12] * 2.0).astype(np.float32)
    response = kserve.ModelInferResponse.FromString(answer)
    got = response.raw_output_contents[0] if response.raw_output_contents else b""
    if got != expected.tobytes():
        raise TritonSetupError(
            f"Triton answered {len(got)} bytes, expected {expected.nbytes} "
            f"({'the stub env has the wrong numpy: numpy 2 gives empty answers' if not got else 'values differ'}); "
            f"log {work / 'tritonserver.log'}")
    assert np.array_equal(decode_output(answer), expected)
    return {"ready_s": round(ready_s, 2)}


def check(target: TritonInstall, log=print) -> dict[str, float]:
    """Versions, files, then a real round trip. Raises TritonSetupError on any problem."""
    problems = version_problems(target)
    if problems:
        raise TritonSetupError("; ".join(problems))
    prepare(target)
    out = subprocess.run([str(target.perf_analyzer), "--version"], capture_output=True, text=True,
                         env=target.perf_env(), timeout=30)
    if out.returncode != 0 or "not found" in out.stderr:
        raise TritonSetupError(f"perf_analyzer does not start: {(out.stderr or out.stdout).strip()[-300:]}")
    with tempfile.TemporaryDirectory(prefix="osmi-triton-check-") as tmp:
        timings = round_trip(target, Path(tmp))
    target.checked_stamp.write_text(json.dumps({"checked_at": time.time(), **timings}) + "\n")
    log(f"triton ok: {target.root} (tritonserver 2.51.0, numpy {NUMPY}, ready in {timings['ready_s']} s)")
    return timings


def round_trip_current(target: TritonInstall) -> bool:
    """Has a round trip passed since the environment's packages or this module last changed?"""
    stamp = target.checked_stamp
    if not stamp.exists():
        return False
    newest = max(Path(__file__).stat().st_mtime, target.site.stat().st_mtime,
                 (target.site / "numpy").stat().st_mtime if (target.site / "numpy").exists() else 0)
    return stamp.stat().st_mtime > newest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osmi-ee setup triton",
        description="Make the local Triton ready: a Python 3.11 environment (Debian's) with tensorflow-cpu, "
                    f"numpy {NUMPY}, {PYTRITON} (tritonserver 2.51) and {TRITONCLIENT} (perf_analyzer), the "
                    "backend folder and perf_analyzer's libraries; then check it with a real round trip. "
                    f"Idempotent. Folder: ${ENV_VAR}, default build/triton-env.")
    parser.add_argument("--check-only", action="store_true", help="install nothing; only check (exit 1 if wrong)")
    parser.add_argument("--env", type=Path, help=f"the environment folder (default ${ENV_VAR} or build/triton-env)")
    parser.add_argument("--full", action="store_true",
                        help="repeat the round trip even when one passed since the environment last changed")
    args = parser.parse_args(argv)
    target = TritonInstall(args.env.resolve()) if args.env else TritonInstall.default()
    try:
        if not args.check_only:
            install(target)
        if not args.full and round_trip_current(target):
            problems = version_problems(target)  # cheap, and always: a numpy changed by hand fails here
            if problems:
                raise TritonSetupError("; ".join(problems))
            print(f"triton ok: {target.root} (versions checked; round trip passed before, --full repeats it)")
            return 0
        check(target)
    except (TritonSetupError, subprocess.CalledProcessError) as exc:
        print(f"osmi-ee setup triton: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
