"""Keras 3 builders for the three OSMI-Bench surrogate models.

The layer structure follows OSMI-Bench (Brewer et al., "Production Deployment
of Machine-Learned Rotorcraft Surrogate Models on HPC") so that shapes and
parameter counts match the published models exactly (see `specs.MODEL_SPECS`;
the tests check `count_params()` against the table). Only shapes and sizes
matter for an inference benchmark, so weights come from random init or a short
fit on synthetic data (`export.py`).

All hidden layers use ELU; the last layer of each model is linear. The Keras
input is named `inputs`, the name clients send in a TF-Serving request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import layers

from osmi_ee.osmi.specs import INPUT_NAME, get_spec

ACTIVATION = "elu"


def _input(shape: tuple[int, ...]) -> keras.KerasTensor:
    return keras.Input(shape=shape, name=INPUT_NAME, dtype="float32")


# --------------------------------------------------------------------------- small


def build_small_lstm(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> keras.Model:
    """Four stacked LSTM(256) and a dense head: (8, 48) -> (2, 12)."""
    inputs = _input(input_shape)
    x = inputs
    for i in range(4):
        # Only the last LSTM collapses the time axis.
        x = layers.LSTM(256, activation=ACTIVATION, return_sequences=i < 3)(x)
    x = layers.Dense(256, activation=ACTIVATION)(x)
    x = layers.Dense(128, activation=ACTIVATION)(x)
    x = layers.Dense(output_shape[0] * output_shape[1], activation="linear")(x)
    outputs = layers.Reshape(output_shape)(x)
    return keras.Model(inputs, outputs, name="small_lstm")


# -------------------------------------------------------------------------- medium


def build_medium_cnn(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> keras.Model:
    """Conv encoder to a 1x1x1024 code, dense bottleneck, transposed-conv decoder.

    Spatial sizes (H x W): 101x82 -> 50x41 -> 25x20 -> 12x10 -crop-> 8x8 -> 4x4
    -> 1x1; back up 1 -> 2 -> 4 -> 8 -> 32 -crop-> 25x20 -> 50x40 -pad-> 50x41
    -> 100x82 -pad-> 101x82.
    """
    conv = dict(kernel_size=(3, 3), padding="same", activation=ACTIVATION)
    inputs = _input(input_shape)

    x = layers.Conv2D(32, **conv)(inputs)
    x = layers.Conv2D(64, **conv)(x)
    x = layers.MaxPooling2D((2, 2))(x)
    x = layers.Conv2D(128, **conv)(x)
    x = layers.MaxPooling2D((2, 2))(x)
    x = layers.Conv2D(256, **conv)(x)
    x = layers.MaxPooling2D((2, 2))(x)
    x = layers.Cropping2D(((2, 2), (1, 1)))(x)  # 12x10 -> 8x8 so later pools divide evenly
    x = layers.Conv2D(512, **conv)(x)
    x = layers.MaxPooling2D((2, 2))(x)
    x = layers.Conv2D(1024, **conv)(x)
    x = layers.MaxPooling2D((4, 4))(x)

    code = x.shape[-1]
    x = layers.Flatten()(x)
    x = layers.Dense(code, activation=ACTIVATION)(x)
    x = layers.Reshape((1, 1, code))(x)

    for filters, stride in ((code, 1), (512, 2), (256, 2), (128, 2), (64, 4)):
        x = layers.Conv2DTranspose(filters, strides=stride, **conv)(x)
    x = layers.Cropping2D(((4, 3), (6, 6)))(x)  # 32x32 -> 25x20
    x = layers.Conv2DTranspose(32, strides=2, **conv)(x)
    x = layers.ZeroPadding2D(((0, 0), (1, 0)))(x)  # 50x40 -> 50x41
    x = layers.Conv2DTranspose(16, strides=2, **conv)(x)
    x = layers.ZeroPadding2D(((1, 0), (0, 0)))(x)  # 100x82 -> 101x82
    for filters in (8, 4, 2):
        x = layers.Conv2DTranspose(filters, **conv)(x)
    outputs = layers.Conv2DTranspose(
        output_shape[-1], kernel_size=(3, 3), padding="same", activation="linear"
    )(x)
    return keras.Model(inputs, outputs, name="medium_cnn")


# --------------------------------------------------------------------------- large


def _per_frame(layer: layers.Layer) -> layers.TimeDistributed:
    return layers.TimeDistributed(layer)


def _res_block_2d(x: Any, filters: int) -> Any:
    """Two 4x4 convs applied per time step; the second one's input is added back."""
    conv = dict(kernel_size=(4, 4), padding="same", activation=ACTIVATION)
    first = _per_frame(layers.Conv2D(filters, **conv))(x)
    second = _per_frame(layers.Conv2D(filters, **conv))(first)
    return layers.Add()([first, second])


def _res_block_1d(x: Any, filters: int, dilation: int) -> Any:
    """TCNN temporal block: causal convs (dilation 1, `dilation`, 1) with a skip."""
    conv = dict(kernel_size=2, padding="causal", activation=ACTIVATION)
    head = layers.Conv1D(filters, dilation_rate=1, **conv)(x)
    y = layers.Conv1D(filters, dilation_rate=dilation, **conv)(head)
    y = layers.Conv1D(filters, dilation_rate=1, **conv)(y)
    return layers.Add()([head, y])


def build_large_tcnn(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> keras.Model:
    """Temporal CNN after Pandey & Wang (ICASSP 2019), sized as in OSMI-Bench.

    A per-frame 2-D residual encoder squeezes each 101x82 frame to 1x1x1024, a
    stack of dilated causal 1-D convs mixes the 3 frames, and a mirrored
    per-frame decoder (upsampling, crop/pad) restores 101x82.
    """
    frames = input_shape[0]
    inputs = _input(input_shape)
    pool = (2, 2)

    # Encoder: 101x82 -> 50x41 -> 25x20 -> 12x10 -crop-> 8x8 -> 4x4 -> 2x2 -> 1x1.
    x = _res_block_2d(inputs, 9)
    x = _res_block_2d(x, 16)
    x = _res_block_2d(x, 32)
    x = _per_frame(layers.MaxPooling2D(pool))(x)
    x = _res_block_2d(x, 64)
    x = _per_frame(layers.MaxPooling2D(pool))(x)
    x = _res_block_2d(x, 128)
    x = _per_frame(layers.MaxPooling2D(pool))(x)
    x = _per_frame(layers.Cropping2D(((3, 1), (2, 0))))(x)
    x = _res_block_2d(x, 256)
    x = _per_frame(layers.MaxPooling2D(pool))(x)
    x = _res_block_2d(x, 512)
    x = _per_frame(layers.MaxPooling2D(pool))(x)
    x = _res_block_2d(x, 1024)
    x = _per_frame(layers.MaxPooling2D(pool))(x)
    code = x.shape[-1]
    x = layers.Reshape((frames, code))(x)

    # Temporal convolution module: twice the code width, growing dilations.
    width = 2 * code
    for dilation in (1, 2, 2, 2, 12, 32):
        x = _res_block_1d(x, width, dilation)
    x = layers.Reshape((frames, 1, 1, width))(x)

    # Decoder: 1 -> 2 -> 4 -> 8 -> 32 -crop-> 25x20 -> 50x40 -pad-> 50x41
    # -> 100x82 -pad-> 101x82.
    x = _res_block_2d(x, 1024)
    x = _per_frame(layers.UpSampling2D(pool))(x)
    x = _res_block_2d(x, 512)
    x = _per_frame(layers.UpSampling2D(pool))(x)
    x = _res_block_2d(x, 256)
    x = _per_frame(layers.UpSampling2D(pool))(x)
    x = _res_block_2d(x, 128)
    x = _per_frame(layers.UpSampling2D((4, 4)))(x)
    x = _per_frame(layers.Cropping2D(((3, 4), (6, 6))))(x)
    x = _res_block_2d(x, 64)
    x = _per_frame(layers.UpSampling2D(pool))(x)
    x = _per_frame(layers.ZeroPadding2D(((0, 0), (1, 0))))(x)
    x = _res_block_2d(x, 32)
    x = _per_frame(layers.UpSampling2D(pool))(x)
    x = _per_frame(layers.ZeroPadding2D(((1, 0), (0, 0))))(x)
    x = _res_block_2d(x, 16)
    x = _res_block_2d(x, 9)

    conv = dict(kernel_size=(4, 4), padding="same")
    x = _per_frame(layers.Conv2DTranspose(4, activation=ACTIVATION, **conv))(x)
    x = _per_frame(layers.Conv2DTranspose(2, activation=ACTIVATION, **conv))(x)
    outputs = _per_frame(layers.Conv2DTranspose(output_shape[-1], activation="linear", **conv))(x)
    return keras.Model(inputs, outputs, name="large_tcnn")


# ------------------------------------------------------------------------ dispatch

BUILDERS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], keras.Model]] = {
    "small_lstm": build_small_lstm,
    "medium_cnn": build_medium_cnn,
    "large_tcnn": build_large_tcnn,
}


def build_model(name: str) -> keras.Model:
    """A fresh, randomly initialised model `name` with the spec's shapes.

    Raises KeyError naming the known models for an unknown name.
    """
    spec = get_spec(name)
    return BUILDERS[name](spec.input_shape, spec.output_shape)
