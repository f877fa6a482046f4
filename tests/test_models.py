"""The three surrogate models match OSMI-Bench's shapes and parameter counts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from osmi_ee.osmi.models import build_model  # noqa: E402
from osmi_ee.osmi.specs import INPUT_NAME, MODEL_NAMES, MODEL_SPECS  # noqa: E402

# Published OSMI-Bench numbers, written out here (not read from specs.py) so a
# wrong spec table fails too.
EXPECTED = {
    "small_lstm": ((8, 48), (2, 12), 1_990_040),
    "medium_cnn": ((101, 82, 9), (101, 82, 1), 23_070_201),
    "large_tcnn": ((3, 101, 82, 9), (3, 101, 82, 1), 247_510_011),
}


@pytest.fixture(scope="module", params=MODEL_NAMES)
def built(request):
    # Module scope: each model (large_tcnn is ~1 GB of weights) is built once.
    name = request.param
    model = build_model(name)
    yield name, model
    del model


def test_every_spec_has_expected_numbers():
    assert set(MODEL_SPECS) == set(EXPECTED)
    for name, (inp, out, params) in EXPECTED.items():
        spec = MODEL_SPECS[name]
        assert (spec.input_shape, spec.output_shape, spec.params) == (inp, out, params)


def test_param_count(built):
    name, model = built
    assert model.count_params() == EXPECTED[name][2]


def test_input_output_shapes(built):
    name, model = built
    inp, out, _ = EXPECTED[name]
    assert tuple(model.input.shape) == (None, *inp)
    assert tuple(model.output.shape) == (None, *out)
    assert model.input.dtype == "float32"


def test_input_is_named_inputs(built):
    _, model = built
    assert model.input.name == INPUT_NAME == "inputs"


def test_last_layer_is_linear_and_hidden_layers_elu(built):
    import keras

    _, model = built
    activated = []
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer
        if hasattr(inner, "activation"):
            activated.append(inner.activation.__name__)
    assert activated[-1] == "linear"
    assert activated[:-1] and set(activated[:-1]) == {"elu"}


def test_small_lstm_forward_pass():
    import numpy as np

    model = build_model("small_lstm")
    y = model(np.zeros((3, 8, 48), dtype="float32"))
    assert tuple(y.shape) == (3, 2, 12)


def test_unknown_model_names_known_ones():
    with pytest.raises(KeyError, match="small_lstm"):
        build_model("tiny_mlp")
