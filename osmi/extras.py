"""What needs the `serve` extra (TensorFlow), and a clear message where it is missing.

A cluster login node runs `generate`, `submit`, `status` and `analyze` from a light
install (`pip install osmi-ee`); training, exporting and serving models need
TensorFlow (`pip install 'osmi-ee[serve]'`, which `make install` does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

SERVE_EXTRA = "serve"


class MissingExtra(RuntimeError):
    pass


def require_serve(what: str) -> None:
    """Raises MissingExtra, naming the extra to install, if TensorFlow is not importable."""
    missing = [m for m in ("tensorflow", "tensorflow_serving") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"{what} needs TensorFlow ({', '.join(missing)} not installed): install "
                           f"osmi-ee's `{SERVE_EXTRA}` extra: pip install 'osmi-ee[{SERVE_EXTRA}]' "
                           "(`make install` does)")


@contextlib.contextmanager
def native_stderr_to(log: Path) -> Iterator[None]:
    """While inside: what C++ libraries write to stderr (TensorFlow's cuInit errors on
    CPU machines, oneDNN and absl notices) goes to `log`; Python's own messages stay
    on the console."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    old_stderr = sys.stderr
    with open(log, "ab") as out:
        os.dup2(out.fileno(), 2)
        sys.stderr = console
        try:
            yield
        finally:
            sys.stderr = old_stderr
            os.dup2(saved, 2)
            os.close(saved)
            console.close()
