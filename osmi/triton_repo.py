"""A Triton model repository for one run's model, from the same SavedModel TF-Serving serves.

    <repo>/<model>/config.pbtxt        exact shapes, max_batch_size, instance count
    <repo>/<model>/1/model.py          backend "python": loads the SavedModel (tf.saved_model.load)
    <repo>/<model>/1/model.savedmodel  backend "tensorflow" (tensorflow_savedmodel): a link to the SavedModel

Locally the python backend serves it (the pip-installed Triton has no
TensorFlow backend); in a cluster's Triton container the TensorFlow backend
serves the SavedModel on the GPU. Both answer with the signature's own input
and output names, so one client request fits both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from osmi_ee.ee.paths import write_atomic
from osmi_ee.osmi.export import exported_models, is_exported
from osmi_ee.osmi.specs import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME

BACKENDS = ("python", "tensorflow")  # tensorflow: platform tensorflow_savedmodel (osmi.batching's names)
VERSION = "1"  # the repository's one version folder, whatever the export's number

# The python backend's model: the stub runs it in the Triton env (osmi.triton_setup),
# never in the job's own Python.
MODEL_PY = '''"""Triton python backend: one OSMI SavedModel (written by osmi-ee, osmi/triton_repo.py)."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        import tensorflow as tf

        threads = int(p.get("intra_op_threads", "0"))
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        self.tf = tf
        self.input, self.output = p["input"], p["output"]
        self.signature = tf.saved_model.load(p["saved_model"]).signatures[p["signature"]]

    def execute(self, requests):
        # With dynamic batching Triton hands over several requests: one model call for all.
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        data = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        out = self.signature(**{self.input: self.tf.constant(data)})[self.output].numpy()
        responses, start = [], 0
        for part in inputs:
            rows = np.ascontiguousarray(out[start:start + len(part)], dtype=np.float32)
            start += len(part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, rows)]))
        return responses
'''


def saved_model_dir(models_dir: Path | str, model: str) -> Path:
    """The newest complete export of `model` (<models_dir>/<model>/<version>/)."""
    base = Path(models_dir) / model
    if model not in exported_models(models_dir):
        raise FileNotFoundError(f"no exported model at {base}/<version>/saved_model.pb; "
                                f"run `make models` (osmi-export --models {model})")
    versions = [c for c in base.iterdir() if c.name.isdigit() and is_exported(c)]
    return max(versions, key=lambda c: int(c.name)).resolve()


def render_triton_config(model: str, *, backend: str, saved_model: Path | str, batching: Any = None,
                         max_batch_size: int | None = None, instances: int | None = None,
                         intra_op_threads: int = 0) -> str:
    """config.pbtxt: osmi.batching's rendering (exact shapes, max_batch_size, instances,
    dynamic_batching when `batching` is on), plus, for the python backend, what its
    model.py needs to find and run the SavedModel."""
    from osmi_ee.ee.config import batching_of
    from osmi_ee.osmi.batching import triton_model_config

    if backend not in BACKENDS:
        raise ValueError(f"unknown Triton backend {backend!r}; known: {', '.join(BACKENDS)}")
    text = triton_model_config(model, backend=backend, batching=batching_of(batching),
                               max_batch_size=max_batch_size, instance_count=instances,
                               instance_kind="KIND_GPU" if backend == "tensorflow" else "KIND_CPU")
    if backend == "python":
        params = {"saved_model": str(saved_model), "signature": SIGNATURE_NAME, "input": INPUT_NAME,
                  "output": OUTPUT_NAME, "intra_op_threads": str(intra_op_threads)}
        text += "".join(f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}\n"
                        for k, v in params.items())
    return text


def write_triton_repository(repo: Path, model: str, models_dir: Path | str, *, backend: str = "python",
                            batching: Any = None, max_batch_size: int | None = None,
                            instances: int | None = None, intra_op_threads: int = 0) -> Path:
    """Writes (or rewrites) the repository for `model`; returns `repo`. `batching`: the
    experiment's batching axis value (None: off)."""
    saved = saved_model_dir(models_dir, model)
    version = repo / model / VERSION
    version.mkdir(parents=True, exist_ok=True)
    write_atomic(repo / model / "config.pbtxt", render_triton_config(
        model, backend=backend, saved_model=saved, batching=batching, max_batch_size=max_batch_size,
        instances=instances, intra_op_threads=intra_op_threads))
    if backend == "python":
        write_atomic(version / "model.py", MODEL_PY)
    else:
        link = version / "model.savedmodel"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(saved, link, target_is_directory=True)
    return repo
