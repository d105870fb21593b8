"""Each XNNPACK rewrite (tfq_ext.qat.lowering) on a tiny model: the layer pattern of a real architecture goes
through quantize_model -> convert into one fully delegated, integer-only file whose ops are the intended ones,
the QAT model still computes the float model's function (up to quantization), and Keras and TFLite agree."""

import numpy as np
import pytest

import tflite_export
from tfq_ext._keras import keras, tf
from tfq_ext.qat import quantize_model
from tflite_export.runtime import output_quantization

L = keras.layers


def _conv(x, filters=8, **kwargs):
    return L.Conv2D(filters, 1, **kwargs)(x)


def hard_swish():  # MobileNetV3 (tf_keras): x * ReLU6(x + 3) * (1/6), all TFOpLambda ops
    i = keras.Input((8, 8, 3))
    x = _conv(i)
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    return keras.Model(i, _conv(x))


def squeeze_excite():  # MobileNetV3 / EfficientNet: global pool with keepdims, broadcast Multiply
    i = keras.Input((8, 8, 3))
    x = _conv(i, 16)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.Conv2D(16, 1)(s)
    s = L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)
    return keras.Model(i, _conv(L.Multiply()([x, s])))


def swish_and_preprocessing():  # EfficientNet: Rescaling -> Normalization -> conv-BN-swish, conv(swish)
    i = keras.Input((8, 8, 3))
    x = L.Rescaling(1.0 / 255.0)(i)
    x = L.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051])(x)
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("swish")(x)
    x = L.Conv2D(8, 1, activation="swish")(x)
    return keras.Model(i, _conv(x))


def relu_after_shared_add():  # Xception / NASNet: Add read by a ReLU branch and by the next residual
    i = keras.Input((8, 8, 3))
    x = _conv(i)
    x = L.Add()([x, _conv(i)])
    y = L.Activation("relu")(x)
    return keras.Model(i, L.Add()([_conv(y), x]))


def residual_tf_op():  # RegNet: ReLU()(x + skip) as a TFOpLambda add
    i = keras.Input((8, 8, 3))
    x = _conv(i)
    return keras.Model(i, _conv(L.ReLU()(_conv(x) + x)))


def same_average_pool():  # InceptionV3 / NASNet: 3x3 stride-1 'same' average pool
    i = keras.Input((8, 8, 3))
    x = _conv(i)
    return keras.Model(i, _conv(L.AveragePooling2D(3, strides=1, padding="same")(x)))


def strided_same_average_pool():
    i = keras.Input((9, 9, 3))
    x = _conv(i)
    return keras.Model(i, _conv(L.AveragePooling2D(3, strides=2, padding="same")(x)))


def wide_concat():  # NASNet: 6-input concatenation
    i = keras.Input((8, 8, 3))
    return keras.Model(i, _conv(L.Concatenate()([_conv(i, 4) for _ in range(7)])))


def strided_max_pool_1x1():  # ResNetV2's shortcut
    i = keras.Input((8, 8, 3))
    x = _conv(i)
    return keras.Model(i, L.Add()([L.MaxPooling2D(1, strides=2)(x), L.Conv2D(8, 1, strides=2)(x)]))


def nearest_upsampling():  # U-Net decoders
    i = keras.Input((4, 4, 3))
    x = _conv(i)
    x = L.Concatenate()([L.UpSampling2D()(x), _conv(L.UpSampling2D((2, 2))(i))])
    return keras.Model(i, _conv(L.UpSampling2D((1, 3))(x)))


def prelu():  # MTCNN-style PReLU with one slope per channel
    i = keras.Input((8, 8, 3))
    x = _conv(i)
    x = L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.0, 0.5), shared_axes=[1, 2])(x)
    return keras.Model(i, _conv(x))


def hard_sigmoid_activation():  # tf_keras' own hard_sigmoid: clip(0.2 x + 0.5, 0, 1)
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, activation="hard_sigmoid")(i)
    return keras.Model(i, _conv(x))


def inception_block():  # InceptionV3 / DenseNet: branches of one tensor concatenated, pooled branches among them
    i = keras.Input((9, 9, 3))
    x = _conv(i, 8, activation="relu")
    branches = [L.MaxPooling2D(3, strides=2)(x), L.Conv2D(8, 3, strides=2, activation="relu")(x),
                L.Conv2D(4, 3, strides=2)(L.AveragePooling2D(3, strides=1, padding="same")(x))]
    y = L.Concatenate()(branches)
    return keras.Model(i, L.Concatenate()([y, L.Conv2D(4, 1)(y)]))


def global_pool_dense():  # the head of nearly every keras.applications model
    i = keras.Input((8, 8, 3))
    x = L.AveragePooling2D(2)(_conv(i, 16))
    return keras.Model(i, L.Dense(10)(L.GlobalAveragePooling2D()(x)))


# (model factory, ops that must not be in the file, ops that must be)
CASES = {
    "hard_swish": (hard_swish, {"HARD_SWISH"}, {"MUL", "DEPTHWISE_CONV_2D"}),
    "squeeze_excite": (squeeze_excite, set(), {"MEAN", "MUL"}),
    "swish_and_preprocessing": (swish_and_preprocessing, {"SUB", "ADD"}, {"LOGISTIC", "MUL"}),
    "relu_after_shared_add": (relu_after_shared_add, {"RELU"}, {"DEPTHWISE_CONV_2D"}),
    "residual_tf_op": (residual_tf_op, {"RELU"}, {"ADD"}),
    "same_average_pool": (same_average_pool, {"AVERAGE_POOL_2D"}, {"DEPTHWISE_CONV_2D", "MUL"}),
    "strided_same_average_pool": (strided_same_average_pool, {"AVERAGE_POOL_2D"}, {"DEPTHWISE_CONV_2D", "MUL"}),
    "wide_concat": (wide_concat, set(), {"CONCATENATION"}),
    "strided_max_pool_1x1": (strided_max_pool_1x1, {"MAX_POOL_2D"}, {"DEPTHWISE_CONV_2D"}),
    "nearest_upsampling": (nearest_upsampling, {"RESIZE_NEAREST_NEIGHBOR"}, {"CONCATENATION", "RESHAPE"}),
    "prelu": (prelu, {"PRELU"}, {"DEPTHWISE_CONV_2D", "ADD"}),
    "hard_sigmoid_activation": (hard_sigmoid_activation, set(), {"DEPTHWISE_CONV_2D"}),
    "inception_block": (inception_block, {"AVERAGE_POOL_2D"}, {"CONCATENATION", "MAX_POOL_2D"}),
    "global_pool_dense": (global_pool_dense, {"AVERAGE_POOL_2D"}, {"MEAN", "FULLY_CONNECTED"}),
}


def _data(model, n=64, seed=0):
    shape = (n,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32") * 2.0


@pytest.fixture(scope="module", params=sorted(CASES), ids=sorted(CASES))
def converted(request):
    factory, forbidden, required = CASES[request.param]
    keras.utils.set_random_seed(0)
    model = factory()
    x = _data(model)
    qat = quantize_model(model)
    for k in range(4):  # training-mode calls set the activation ranges (EMA) as fit would
        qat(x[16 * k:16 * (k + 1)], training=True)
    return model, qat, tflite_export.convert(qat), forbidden, required


def test_one_partition_integer_only(converted):
    _, _, flatbuffer, forbidden, required = converted
    report = tflite_export.verify(flatbuffer)
    assert report.integer_only
    assert report.not_delegated == [] and report.delegate_partitions == 1, str(report)
    ops = set(report.op_histogram)
    assert not ops & forbidden, ops
    assert required <= ops, ops


def test_rewritten_graph_computes_the_float_function(converted):
    model, qat, _, _, _ = converted
    x = _data(model, seed=1)
    expected = model.predict(x, verbose=0)
    got = qat.predict(x, verbose=0)
    spread = float(np.ptp(expected))
    # Only quantization noise separates them: a rewrite that changed the function would be off by O(spread).
    assert np.mean(np.abs(got - expected)) <= 0.03 * spread


def test_keras_and_tflite_agree(converted):
    model, qat, flatbuffer, _, _ = converted
    x = _data(model, seed=2)
    keras_out = qat.predict(x, verbose=0)
    raw = tflite_export.run_raw(flatbuffer, x).astype("float32")
    scale, zero_point = output_quantization(flatbuffer)
    steps = np.abs(keras_out / scale + zero_point - raw) - 1e-3  # float32 noise of the dequantized Keras output
    assert np.mean(steps <= 1.0) >= 0.99, f"{np.mean(steps <= 1.0):.4f} within 1 step, max {steps.max()}"
    assert steps.max() <= 2.0


def test_tfop_constant_first_and_unknown_op():
    i = keras.Input((4, 4, 3))
    x = _conv(i)
    model = keras.Model(i, _conv(1.0 - x))  # `1 - x` records the constant first
    x_in = _data(model, 8)
    qat = quantize_model(model)
    qat(x_in, training=True)
    np.testing.assert_allclose(qat.predict(x_in, verbose=0), model.predict(x_in, verbose=0),
                               atol=0.05 * float(np.ptp(model.predict(x_in, verbose=0))))
    cumsum = keras.Model(i, _conv(tf.math.cumsum(_conv(i), axis=1)))
    with pytest.raises(ValueError, match="cumsum"):
        quantize_model(cumsum)


def test_layer_normalization_block_is_integer_only():
    """ConvNeXt's block: grouped 7x7 conv, LayerNormalization, Dense-GELU-Dense, LayerScale, residual TFOp add.
    Integer-only; RSQRT (and GELU) have no int8 XNNPACK kernel, so they are the nodes left outside."""
    from tflite_export.parity import layer_parity

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 16))
    x = L.Conv2D(16, 7, padding="same", groups=16)(i)
    x = L.LayerNormalization(epsilon=1e-6)(x)
    x = L.Dense(32, activation="gelu")(x)
    x = L.Dense(16)(x)
    scale = tf_keras_layer_scale()(0.5, 16)
    model = keras.Model(i, i + scale(x))
    data = _data(model)
    qat = quantize_model(model)
    assert not any(type(layer).__name__ in ("LayerNormalization", "LayerScale") for layer in qat.layers)
    for k in range(4):
        qat(data[16 * k:16 * (k + 1)], training=True)
    expected, got = model.predict(data, verbose=0), qat.predict(data, verbose=0)
    assert np.mean(np.abs(got - expected)) <= 0.03 * float(np.ptp(expected))
    flatbuffer = tflite_export.convert(qat)
    report = tflite_export.verify(flatbuffer)
    assert report.integer_only
    assert "RSQRT" in report.not_delegated and set(report.not_delegated) <= {"RSQRT", "GELU", "ADD", "MUL"}
    rows = [r for r in layer_parity(qat, flatbuffer, data, max_samples=4) if r.local_within_1 is not None]
    assert len(rows) >= 4
    for r in rows:
        if r.layer.startswith("layer_normalization"):
            # nine int8 ops in one layer, RSQRT a fixed-point approximation among them: their roundings add up
            assert r.local_within_1 >= 0.95 and r.local_max <= 8, r
        else:  # GELU is a lookup table in int8: one more step allowed
            assert r.local_within_1 >= 0.98 and r.local_max <= 3, r


def tf_keras_layer_scale():
    from tfq_ext._compat import tf_keras_convnext_layers

    return tf_keras_convnext_layers()["LayerScale"]


@pytest.mark.parametrize("case", sorted(set(CASES) - {"global_pool_dense", "squeeze_excite", "wide_concat"}))
def test_post_training_file_gets_the_same_rewrites(case):
    """convert() of the float model applies the rewrites in float (outputs unchanged): one partition too."""
    from tfq_ext.qat.float_lowering import lower_for_xnnpack

    factory, forbidden, _ = CASES[case]
    keras.utils.set_random_seed(0)
    model = factory()
    x = _data(model, 32)
    lowered = lower_for_xnnpack(model)  # None: nothing to rewrite, the model converts as it is
    if lowered is not None:
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(lowered.predict(x, verbose=0), expected,
                                   atol=1e-5 * float(np.abs(expected).max()))
    report = tflite_export.verify(tflite_export.convert(model, x))
    assert report.integer_only and report.delegate_partitions == 1 and report.not_delegated == [], str(report)
    assert not set(report.op_histogram) & forbidden


def test_post_training_rewrites_skip_unknown_layers_and_can_be_turned_off():
    from tfq_ext.qat.float_lowering import lower_for_xnnpack

    i = keras.Input((4, 4, 3))
    x = _conv(i)
    added = L.Add()([x, x])
    model = keras.Model(i, L.Concatenate()([L.ReLU()(added), added]))  # the Add has two readers
    custom = keras.Model(i, tf.math.cumsum(L.ReLU()(_conv(i)), axis=1))
    assert lower_for_xnnpack(custom) is None  # a TFOpLambda the rewrites do not know: converted as it is
    data = _data(model, 8)
    off = tflite_export.verify(tflite_export.convert(model, data, xnnpack_rewrites=False))
    on = tflite_export.verify(tflite_export.convert(model, data))
    assert "RELU" in off.not_delegated and on.not_delegated == []
