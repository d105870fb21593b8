"""Bad input gets clear errors (model untouched); BN folding math; tfmot interoperability."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from tfq_ext._keras import keras, tf
from tfq_ext.qat import FoldedBatchNorm, OutputQuantizeConfig, UnsupportedLayerError, quantize_model
from tfq_ext.quantizers import ActivationQuantizer, WeightQuantizer

L = keras.layers


class Doubler(L.Layer):
    def call(self, x):
        return 2.0 * x


def _small(custom=None):
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3)(i)
    x = (custom or L.ReLU())(x)
    return keras.Model(i, L.Dense(3)(L.Flatten()(x)))


def test_unsupported_layer_names_layer_class_and_fix():
    model = _small(Doubler(name="my_doubler"))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(UnsupportedLayerError) as info:
        quantize_model(model)
    message = str(info.value)
    assert "my_doubler" in message and "Doubler" in message and "quantize_annotate_layer" in message
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unsupported_activation_is_reported():
    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(3, activation="selu")(i))
    with pytest.raises(UnsupportedLayerError, match="selu"):
        quantize_model(model)


def test_annotated_custom_layer_is_quantized():
    annotated = tfmot.quantization.keras.quantize_annotate_layer(
        Doubler(name="doubler"), quantize_config=OutputQuantizeConfig(ActivationQuantizer()))
    with tfmot.quantization.keras.quantize_scope({"Doubler": Doubler}):
        qat = quantize_model(_small(annotated))
    assert any(getattr(layer, "layer", None).__class__ is Doubler for layer in qat.layers)


def test_quantize_configs_argument_for_custom_layer():
    qat = quantize_model(_small(Doubler(name="twice")),
                         quantize_configs={"twice": OutputQuantizeConfig(ActivationQuantizer())})
    assert qat(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 3)


def test_unbuilt_model():
    model = keras.Sequential([L.Dense(3)])
    with pytest.raises(ValueError, match="not built"):
        quantize_model(model)


def test_not_a_model():
    with pytest.raises(TypeError, match="model"):
        quantize_model("model.h5")


def test_keras3_sequential_and_functional_are_converted():
    keras3 = pytest.importorskip("keras")
    seq = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Conv2D(4, 3), keras3.layers.ReLU(),
                             keras3.layers.Flatten(), keras3.layers.Dense(3)])
    qat = quantize_model(seq)
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    assert qat(x).shape == (2, 3)
    i = keras3.Input((4,))
    functional = keras3.Model(i, keras3.layers.Dense(2)(i))
    assert quantize_model(functional)(np.zeros((2, 4), "float32")).shape == (2, 2)


@pytest.mark.parametrize("kwargs,match", [({"weight_bits": 1}, "weight_bits"), ({"activation_bits": 32}, "activation_bits"),
                                          ({"freeze_bn_delay": -5}, "freeze_bn_delay"),
                                          ({"quantize_configs": ["x"]}, "quantize_configs")],
                         ids=["weight-bits", "activation-bits", "freeze", "configs"])
def test_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        quantize_model(_small(), **kwargs)


def test_tfmot_refuses_what_tfq_ext_quantizes():
    """The layers the README says tfmot refuses: standalone BN, Rescaling, nested models."""
    i = keras.Input((8, 8, 1))
    inner_in = keras.Input((8, 8, 1))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, padding="same")(inner_in))
    cases = {
        "standalone_bn": keras.Sequential([keras.Input((8, 8, 1)), L.MaxPooling2D(), L.BatchNormalization(),
                                           L.Flatten(), L.Dense(2)]),
        "rescaling": keras.Sequential([keras.Input((8, 8, 1)), L.Rescaling(1 / 255.0), L.Flatten(), L.Dense(2)]),
        "nested": keras.Model(i, L.Dense(2)(L.Flatten()(inner(i)))),
    }
    for name, model in cases.items():
        with pytest.raises(Exception):
            tfmot.quantization.keras.quantize_model(model)
        qat = quantize_model(model)
        assert qat(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 2), name


def _conv_bn(x, seed=0):
    tf.random.set_seed(seed)
    conv = L.Conv2D(4, 3, padding="same", use_bias=True)
    bn = L.BatchNormalization(momentum=0.5, epsilon=1e-3)
    bn(conv(x))
    bn.set_weights([np.array([1.5, -0.5, 1.0, 2.0], "float32"), np.array([0.1, 0.0, -0.2, 0.3], "float32"),
                    np.array([0.05, -0.1, 0.0, 0.2], "float32"), np.array([0.5, 2.0, 1.0, 0.25], "float32")])
    return conv, bn


def _folded(conv, bn, bits=16, freeze=None):
    layer = FoldedBatchNorm(conv, weight_quantizer=WeightQuantizer(bits), output_quantizer=ActivationQuantizer(16),
                            epsilon=1e-3, momentum=0.5, freeze_bn_delay=freeze)
    layer.build((None, 6, 6, 3))
    layer.kernel.assign(conv.kernel)
    layer.conv_bias.assign(conv.bias)
    for var, value in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), bn.get_weights()):
        var.assign(value)
    return layer


def test_folded_inference_equals_conv_then_bn():
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype("float32"))
    conv, bn = _conv_bn(x)
    layer = _folded(conv, bn)
    layer._output_vars["min_var"].assign(-100.0)  # a range that holds every output: no clipping
    layer._output_vars["max_var"].assign(100.0)
    expected = bn(conv(x), training=False).numpy()
    got = layer(x, training=False).numpy()
    # 16-bit weights and outputs: differences are quantization steps of 16-bit grids, far below 1e-3.
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_folded_training_uses_batch_statistics_and_updates_moving_ones():
    x = tf.constant(np.random.default_rng(1).normal(size=(16, 6, 6, 3)).astype("float32"))
    conv, bn = _conv_bn(x)
    layer = _folded(conv, bn)
    expected = bn(conv(x), training=True).numpy()  # also updates bn's moving statistics (momentum 0.5)
    got = layer(x, training=True).numpy()
    np.testing.assert_allclose(got, expected, atol=5e-3)
    np.testing.assert_allclose(layer.moving_mean.numpy(), bn.moving_mean.numpy(), atol=1e-3)
    np.testing.assert_allclose(layer.moving_variance.numpy(), bn.moving_variance.numpy(), rtol=1e-3, atol=1e-3)


def test_freeze_switches_to_moving_statistics():
    x = tf.constant(np.random.default_rng(2).normal(size=(16, 6, 6, 3)).astype("float32"))
    conv, bn = _conv_bn(x)
    layer = _folded(conv, bn, freeze=1)
    layer(x, training=True)  # step 1: batch statistics; afterwards frozen
    mean_after_first = layer.moving_mean.numpy().copy()
    frozen_train = layer(x, training=True).numpy()
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean_after_first)  # no longer updated
    np.testing.assert_allclose(frozen_train, layer(x, training=False).numpy(), atol=1e-6)


def test_folded_kernel_gradient_reaches_weights_and_bn_parameters():
    x = tf.constant(np.random.default_rng(3).normal(size=(4, 6, 6, 3)).astype("float32"))
    conv, bn = _conv_bn(x)
    layer = _folded(conv, bn, bits=8)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x, training=True)))
    grads = tape.gradient(loss, [layer.kernel, layer.gamma, layer.beta])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3)
        self.head = L.Dense(3)

    def call(self, x):
        return self.head(L.Flatten()(self.conv(x)))


def test_subclassed_model_gets_a_rebuild_hint():
    model = _Subclassed()
    model.build((None, 8, 8, 1))
    with pytest.raises(ValueError, match="subclassed model") as info:
        quantize_model(model)
    assert "functional or Sequential" in str(info.value) and "keras.Input" in str(info.value)


def test_subclassed_model_inside_a_functional_model_is_named():
    inner = _Subclassed()
    i = keras.Input((8, 8, 1))
    model = keras.Model(i, inner(i))
    with pytest.raises(ValueError, match="subclassed model") as info:
        quantize_model(model)
    assert inner.name in str(info.value)


def test_subclassed_model_convert_hint():
    import tflite_export

    model = _Subclassed()
    model.build((None, 8, 8, 1))
    with pytest.raises(ValueError, match="subclassed model") as info:
        tflite_export.convert(model, np.zeros((4, 8, 8, 1), "float32"))
    assert "keras.Model(inputs, model(inputs))" in str(info.value)
    wrapped_in = keras.Input((8, 8, 1))
    wrapped = keras.Model(wrapped_in, model(wrapped_in))
    assert tflite_export.verify(tflite_export.convert(wrapped, np.ones((4, 8, 8, 1), "float32"))).integer_only


def test_dynamic_input_shape_converts_at_a_given_size():
    import tflite_export

    i = keras.Input((None, None, 3))
    x = L.ReLU()(L.Conv2D(4, 3, padding="same")(i))
    model = keras.Model(i, L.Conv2D(2, 1)(L.AveragePooling2D(3, strides=1, padding="same")(x)))
    qat = quantize_model(model)
    qat(np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32"), training=True)
    with pytest.raises(ValueError, match="input_shape=") as info:
        tflite_export.convert(qat)
    assert "(None, None, 3)" in str(info.value)
    with pytest.raises(ValueError, match="input_shape"):
        tflite_export.convert(qat, input_shape=(12, 12))
    report = tflite_export.verify(tflite_export.convert(qat, input_shape=(12, 12, 3)))
    assert report.integer_only and report.delegate_partitions == 1 and report.not_delegated == []
    assert report.inputs[0]["shape"] == [1, 12, 12, 3]
    calibrated = tflite_export.convert(model, np.zeros((4, 10, 10, 3), "float32"))
    assert tflite_export.verify(calibrated).inputs[0]["shape"] == [1, 10, 10, 3]
