"""The three OSMI surrogate models: one table of shapes, names and sizes.

Everything that needs a model's shape (export, server checks, client inputs,
response checks, payload sizes) reads it from here, so the numbers exist once.
Shapes are per sample; the batch dimension is added in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

INPUT_NAME = "inputs"  # the SavedModel signature's input key (OSMI-Bench's name)
OUTPUT_NAME = "outputs"  # the signature's output key (we set it; Keras 3 would say output_0)
SIGNATURE_NAME = "serving_default"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int  # trainable + non-trainable parameters of the Keras model
    dtype: str = "float32"

    @property
    def input_bytes_per_sample(self) -> int:
        return prod(self.input_shape) * 4

    @property
    def output_bytes_per_sample(self) -> int:
        return prod(self.output_shape) * 4


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("small_lstm", (8, 48), (2, 12), 1_990_040),
        ModelSpec("medium_cnn", (101, 82, 9), (101, 82, 1), 23_070_201),
        ModelSpec("large_tcnn", (3, 101, 82, 9), (3, 101, 82, 1), 247_510_011),
    )
}

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The spec of model `name`; a KeyError names the known models."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}") from None
