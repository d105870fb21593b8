"""Small digits models and their flatbuffers, built once per session (a conversion takes about a second)."""

import numpy as np
import pytest

from tfq_ext._keras import keras, tf


def _compile_fit(model, digits, epochs):
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:800], digits.y_train[:800], epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def float_model(digits):
    """conv + BN + relu + pool + dense, trained to about 90 % on held-out digits."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ], name="digits_float")
    return _compile_fit(model, digits, epochs=3)


@pytest.fixture(scope="session")
def ptq_int8(float_model, digits):
    from tflite_export import convert

    return convert(float_model, digits.x_train)


@pytest.fixture(scope="session")
def ptq_float_io(float_model, digits):
    from tflite_export import convert

    return convert(float_model, digits.x_train, float_io=True)


@pytest.fixture(scope="session")
def cumsum_model():
    """Dense -> cumsum -> Dense: XNNPACK has no CUMSUM kernel and TFLite has no int8 one."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(16)(inputs)
    hidden = keras.layers.Lambda(lambda z: tf.math.cumsum(z, axis=-1))(hidden)
    return keras.Model(inputs, keras.layers.Dense(4)(hidden), name="with_cumsum")


@pytest.fixture(scope="session")
def calibration_16():
    return np.random.default_rng(0).random((64, 16), dtype=np.float32)
