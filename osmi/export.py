"""Train the OSMI surrogates on synthetic data and export TF-Serving SavedModels.

Layout written under `out_dir` (what `tensorflow_model_server` expects):

    <out_dir>/<name>/<version>/saved_model.pb, variables/, ...
    <out_dir>/models.config          # model_config_list for every model present

The `serving_default` signature takes one float32 input `inputs`
([None, *input_shape]) and returns one float32 output `outputs`
([None, *output_shape]), the names OSMI-Bench clients use.

TensorFlow is imported inside the functions that need it, so importing this
module, `--help`, bad arguments and "already exported" skips stay fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osmi_ee.ee.paths import current_umask
from osmi_ee.osmi.extras import native_stderr_to, require_serve
from osmi_ee.osmi.model_config import render_model_config
from osmi_ee.osmi.specs import (
    INPUT_NAME,
    MODEL_NAMES,
    MODEL_SPECS,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    ModelSpec,
    get_spec,
)

if TYPE_CHECKING:
    import keras

MODEL_CONFIG_NAME = "models.config"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class ExportResult:
    name: str
    path: Path  # the version folder
    exported: bool  # False: an existing export was kept
    seconds: float
    size_bytes: int



@dataclass(frozen=True)
class ExportOptions:
    """The keyword arguments of `export_model` and `export_models`, with their defaults."""

    version: int = 1  # the version folder: <out_dir>/<name>/<version>/
    samples: int = 100  # synthetic training pairs (see `train_model`)
    epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    force: bool = False  # re-export over an existing complete export

EXPORT_LOG = "export.log"  # TensorFlow's native start-up noise, kept out of the console


def _import_tf() -> Any:
    # Must be set before TensorFlow's first import to quiet its C++ logging;
    # setdefault keeps a caller's explicit choice.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    require_serve("training and exporting models")
    import tensorflow as tf

    return tf


def version_dir(out_dir: Path | str, name: str, version: int = 1) -> Path:
    return Path(out_dir) / name / str(version)


def is_exported(path: Path | str) -> bool:
    """True when `path` (a version folder) holds a complete SavedModel.

    Exports are renamed into place only when complete, so saved_model.pb
    marks a finished one.
    """
    return (Path(path) / SAVED_MODEL_FILE).is_file()


def dir_size(path: Path | str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def train_model(
    name: str,
    *,
    samples: int = 100,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
) -> keras.Model:
    """Model `name`, fitted for `epochs` on `samples` uniform random pairs.

    The weights only need realistic sizes, not meaning: the benchmark measures
    serving, so the data is noise. `samples == 0` or `epochs == 0` leaves the
    random initial weights. Same arguments give the same weights (seeded).
    """
    spec = get_spec(name)
    _import_tf()
    import keras
    import numpy as np

    from osmi_ee.osmi.models import build_model

    keras.utils.set_random_seed(seed)  # seeds init, shuffling and the data
    model = build_model(name)
    if samples > 0 and epochs > 0:
        rng = np.random.default_rng(seed)
        x = rng.uniform(size=(samples, *spec.input_shape)).astype(np.float32)
        y = rng.uniform(size=(samples, *spec.output_shape)).astype(np.float32)
        model.compile(optimizer=keras.optimizers.Adam(), loss="mae")
        model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


def save_serving_model(model: keras.Model, spec: ModelSpec, path: Path | str) -> None:
    """Write `model` as a SavedModel at `path` with the serving signature.

    An explicit tf.function fixes the signature's key names: Keras 3's
    `model.export` would call the output `output_0`.
    """
    tf = _import_tf()

    @tf.function(
        input_signature=[tf.TensorSpec([None, *spec.input_shape], tf.float32, name=INPUT_NAME)]
    )
    def serve(inputs: Any) -> dict[str, Any]:
        return {OUTPUT_NAME: model(inputs, training=False)}

    # Save a bare module that tracks only the model's weights: saving the
    # Keras model itself would also write the optimizer's slots (3x the size
    # for Adam), which serving never reads.
    root = tf.Module()
    root.weights = list(model.variables)
    # The signature's input key comes from the TensorSpec (and argument) name.
    tf.saved_model.save(root, str(path), signatures={SIGNATURE_NAME: serve.get_concrete_function()})


def export_model(name: str, out_dir: Path | str, **options: Any) -> Path:
    """Train (see `train_model`) and export model `name`; return its version folder.
    `options` are ExportOptions' fields (version, samples, epochs, batch_size, seed, force).

    An existing complete export is kept unless `force`. The SavedModel is
    written to a hidden temporary folder beside the target and renamed into
    place, so neither a crash nor TF-Serving polling the folder ever sees a half
    model (TF-Serving only loads folders named by a number).
    """
    return _export_model(name, out_dir, ExportOptions(**options))


def _export_model(name: str, out_dir: Path | str, options: ExportOptions) -> Path:
    spec = get_spec(name)  # unknown name: KeyError before anything is written
    target = version_dir(out_dir, name, options.version)
    if is_exported(target) and not options.force:
        return target

    model = train_model(name, samples=options.samples, epochs=options.epochs, batch_size=options.batch_size,
                        seed=options.seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{options.version}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide it from other users
        save_serving_model(model, spec, tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, moving any old `dst` aside first.

    rename() cannot replace a non-empty folder, so an old export is renamed
    to a hidden name (one atomic step) and deleted after the new one is in.
    """
    old: Path | None = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / dst.name)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def exported_models(out_dir: Path | str) -> dict[str, Path]:
    """Known model name -> base path, for each model in `out_dir` with a complete version."""
    found: dict[str, Path] = {}
    for name in MODEL_NAMES:
        base = Path(out_dir) / name
        if base.is_dir() and any(
            child.name.isdigit() and is_exported(child) for child in base.iterdir()
        ):
            found[name] = base
    return found


def write_model_config(out_dir: Path | str) -> Path | None:
    """Write `<out_dir>/models.config` for the models present; None if there are none."""
    models = exported_models(out_dir)
    if not models:
        return None
    path = Path(out_dir) / MODEL_CONFIG_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_model_config(models))
    os.replace(tmp, path)  # readers never see a half-written config
    return path


def export_models(
    names: Iterable[str],
    out_dir: Path | str,
    *,
    progress: bool = True,
    **options: Any,
) -> list[ExportResult]:
    """Export each model in `names` (`options`: ExportOptions' fields, as for
    `export_model`), then write `models.config`.

    All names are checked before any work starts. With `progress`, prints one
    line per model: status, seconds, size, path.
    """
    settings = ExportOptions(**options)  # an unknown option: TypeError before any work
    names = list(dict.fromkeys(names))  # keep order, drop repeats
    for name in names:
        get_spec(name)
    results: list[ExportResult] = []
    try:
        for name in names:
            start = time.perf_counter()
            skipped = is_exported(version_dir(out_dir, name, settings.version)) and not settings.force
            path = _export_model(name, out_dir, settings)
            result = ExportResult(
                name, path, not skipped, time.perf_counter() - start, dir_size(path)
            )
            results.append(result)
            if progress:
                status = "skipped" if skipped else "exported"
                print(
                    f"{name:<11} {status:<8} {result.seconds:8.1f} s "
                    f"{result.size_bytes / 1e6:10.1f} MB  {path}",
                    flush=True,
                )
    finally:
        # Also after a failure, so the config lists whatever is complete on disk.
        write_model_config(out_dir)
    return results


# ----------------------------------------------------------------------------- CLI


def _parse_models(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no model named; known models: {', '.join(MODEL_NAMES)}")
    for name in names:
        if name not in MODEL_SPECS:
            raise argparse.ArgumentTypeError(
                f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
            )
    return names


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osmi-export",
        description=(
            "Train the OSMI surrogate models briefly on synthetic data and export "
            "them as TF-Serving SavedModels (<out>/<model>/<version>/) plus "
            f"<out>/{MODEL_CONFIG_NAME}."
        ),
    )
    parser.add_argument(
        "--models",
        type=_parse_models,
        required=True,
        help=f"comma-separated model names: {','.join(MODEL_NAMES)}",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. build/models")
    parser.add_argument(
        "--samples",
        type=_non_negative,
        default=100,
        help="synthetic training samples; 0 exports random initial weights (default: 100)",
    )
    parser.add_argument(
        "--epochs", type=_non_negative, default=1, help="training epochs; 0 = untrained (default: 1)"
    )
    parser.add_argument("--batch-size", type=_positive, default=32, help="default: 32")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--version", type=_positive, default=1, help="SavedModel version folder (default: 1)"
    )
    parser.add_argument(
        "--force", action="store_true", help="re-export models that are already exported"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad arguments: exit 2, nothing written
    with native_stderr_to(Path(args.out) / EXPORT_LOG):
        export_models(
            args.models,
            args.out,
            version=args.version,
            samples=args.samples,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            force=args.force,
        )
    config = Path(args.out) / MODEL_CONFIG_NAME
    print(f"model config: {config.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
