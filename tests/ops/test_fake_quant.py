import numpy as np
import pytest
import tensorflow as tf

from tfq_ext.ops import (batch_min_max, ema_assign, fake_quant, fake_quant_affine, fake_quant_per_channel,
                         nudged_scale_zero_point, percentile_min_max, qrange)
from tfq_ext.quantizers import (ActivationQuantizer, FixedRangeQuantizer, IdentityQuantizer, WeightQuantizer,
                                deserialize_quantizer)


@pytest.mark.parametrize("bits,narrow,expected", [(8, False, (-128, 127)), (8, True, (-127, 127)),
                                                   (4, False, (-8, 7)), (2, True, (-1, 1))],
                         ids=["int8", "int8-narrow", "int4", "int2-narrow"])
def test_qrange(bits, narrow, expected):
    assert qrange(bits, narrow) == expected


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_qrange_rejects_bits(bits):
    with pytest.raises(ValueError, match="num_bits"):
        qrange(bits)


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.5, 2.0), (-2.0, -0.5), (-0.3, 0.7)],
                         ids=["straddle", "positive", "negative", "asym"])
def test_zero_is_exactly_representable(lo, hi):
    scale, zp = nudged_scale_zero_point(np.float32(lo), np.float32(hi), 8)
    assert float(zp) == round(float(zp))
    assert -128 <= zp <= 127
    # Real 0 maps to the integer zero point and back to exactly 0.
    x = tf.constant([0.0])
    y = fake_quant(x, min(lo, 0.0), max(hi, 0.0), 8)
    assert float(y[0]) == 0.0


def test_fake_quant_golden_values():
    # Range [0, 2.55] with 8 bits: scale 0.01, zero point -128 (signed); values round to the 0.01 grid.
    x = tf.constant([-0.5, 0.0, 0.004, 0.006, 1.234, 3.0])
    y = fake_quant(x, 0.0, 2.55, 8).numpy()
    np.testing.assert_allclose(y, [0.0, 0.0, 0.0, 0.01, 1.23, 2.55], atol=1e-6)


def test_fake_quant_clipped_ste_gradient():
    x = tf.constant([-1.0, 0.5, 1.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fake_quant(x, 0.0, 2.55, 8)
    grad = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("axis", [-1, 0, 1], ids=["last", "first", "middle"])
def test_per_channel_uses_each_channel_range(axis):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 5)).astype("float32")
    w = np.moveaxis(np.moveaxis(w, axis, -1) * np.arange(1, w.shape[axis] + 1), -1, axis).astype("float32")
    bound = np.max(np.abs(np.moveaxis(w, axis, -1)), axis=(0, 1))
    y = fake_quant_per_channel(tf.constant(w), -bound, bound, axis=axis, num_bits=8, narrow_range=True).numpy()
    step = np.moveaxis(np.ones_like(w), axis, -1) * (bound / 127.0)
    step = np.moveaxis(step, -1, axis)
    # Every value moves by at most half a step of its own channel, and the channel max is kept exactly.
    assert np.all(np.abs(y - w) <= step / 2 + 1e-6)
    np.testing.assert_allclose(np.max(np.abs(np.moveaxis(y, axis, -1)), axis=(0, 1)), bound, rtol=1e-6)


def test_fake_quant_affine_one_bit_sign_codes():
    x = tf.constant([-0.7, -0.1, 0.2, 0.9])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fake_quant_affine(x, scale=0.5, zero_point=0.0, qmin=-1, qmax=1)
    np.testing.assert_allclose(y.numpy(), [-0.5, 0.0, 0.0, 0.5])
    # 0.9 / 0.5 rounds to code 2, outside [-1, 1]: saturated, so no gradient (clipped STE).
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 1.0, 1.0, 0.0])
    y2 = fake_quant_affine(tf.constant([2.0]), 0.5, 0.0, -1, 1)
    assert float(y2[0]) == 0.5


def test_batch_min_max_contains_zero_and_ema():
    lo, hi = batch_min_max(tf.constant([1.0, 2.0, 3.0]))
    assert (float(lo), float(hi)) == (0.0, 3.0)
    v = tf.Variable(5.0)
    ema_assign(v, tf.constant(1.0), 0.9, tf.constant(False))
    assert float(v) == 1.0  # first update takes the value
    ema_assign(v, tf.constant(2.0), 0.9, tf.constant(True))
    assert float(v) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)


def test_percentile_min_max_golden():
    x = tf.constant(np.arange(1001, dtype="float32") - 500.0)
    lo, hi = percentile_min_max(x, 1.0)
    assert (float(lo), float(hi)) == (-490.0, 490.0)
    with pytest.raises(ValueError, match="percentile"):
        percentile_min_max(x, 60.0)




def _layer():
    from tfq_ext._keras import keras

    layer = keras.layers.Layer()
    layer.build(None)
    return layer


def test_activation_quantizer_ema_delay_and_inference():
    layer = _layer()
    q = ActivationQuantizer(8, ema_decay=0.5, quant_delay=1)
    v = q.build((None, 3), "act", layer)
    x = tf.constant([[0.0, 0.333, 1.0]])
    y = q(x, training=True, weights=v)
    np.testing.assert_array_equal(y.numpy(), x.numpy())  # inside the delay: unquantized
    assert (float(v["min_var"]), float(v["max_var"])) == (0.0, 1.0)  # first batch sets the range
    y = q(2 * x, training=True, weights=v)
    assert float(v["max_var"]) == pytest.approx(1.5)
    scale = 1.5 / 255
    assert np.all(np.abs(y.numpy() - np.clip(2 * x.numpy(), 0, 1.5)) <= scale / 2 + 1e-6)
    y_eval = q(x, training=False, weights=v).numpy()
    np.testing.assert_allclose(y_eval / scale, np.round(y_eval / scale), atol=1e-3)


def test_weight_quantizer_per_channel_depthwise_and_tensor():
    w = tf.constant(np.random.default_rng(1).normal(size=(3, 3, 2, 2)).astype("float32"))
    for q in (WeightQuantizer(8), WeightQuantizer(8, depthwise=True), WeightQuantizer(8, per_channel=False)):
        y = q(w, training=True, weights={}).numpy()
        assert y.shape == w.shape
        assert np.max(np.abs(y - w.numpy())) <= np.max(np.abs(w.numpy())) / 127 / 2 + 1e-6
    # Depthwise: channels are the merged last two axes, each with its own max at code 127.
    y = WeightQuantizer(8, depthwise=True)(w, training=False, weights={}).numpy().reshape(9, 4)
    bound = np.max(np.abs(w.numpy().reshape(9, 4)), axis=0)
    np.testing.assert_allclose(np.max(np.abs(y), axis=0), bound, rtol=1e-6)


def test_fixed_range_quantizer_matches_tflite_softmax_grid():
    y = FixedRangeQuantizer(0.0, 1.0, 8)(tf.constant([0.0, 0.5, 0.99999, 0.3]), training=True).numpy()
    np.testing.assert_allclose(y * 256, np.round(y * 256), atol=1e-4)
    assert y.max() <= 255 / 256 + 1e-7


@pytest.mark.parametrize("quantizer", [WeightQuantizer(4, per_channel=False, axis=-2),
                                       ActivationQuantizer(8, 0.9, 3), FixedRangeQuantizer(-1.0, 1.0, 8),
                                       IdentityQuantizer()],
                         ids=["weight", "activation", "fixed", "identity"])
def test_quantizer_config_round_trip(quantizer):
    from tfq_ext._keras import keras

    again = deserialize_quantizer(keras.utils.serialize_keras_object(quantizer))
    assert again == quantizer and again.get_config() == quantizer.get_config()
    assert type(again) is type(quantizer)


def test_identity_quantizer_passes_values_through():
    x = tf.constant([0.123456, -7.5, 1e-9])
    np.testing.assert_array_equal(IdentityQuantizer()(x, training=True).numpy(), x.numpy())
    assert IdentityQuantizer() != WeightQuantizer()


@pytest.mark.parametrize("kwargs,match", [({"num_bits": 1}, "num_bits"), ({"ema_decay": 1.0}, "ema_decay"),
                                          ({"quant_delay": -1}, "quant_delay"), ({"num_bits": 8.0}, "num_bits")])
def test_activation_quantizer_bad_args(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ActivationQuantizer(**kwargs)
