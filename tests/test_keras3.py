"""Keras 3 models become tf_keras models with identical outputs (tfq_ext._keras3.convert_keras3_model).

Tolerance: max |y_keras3 - y_tf_keras| <= 1e-5 * max(1, max |y_keras3|) in inference mode, on random inputs, for
the model outputs and for the output of every layer both models have under one name. Weights that start out
constant (biases, batch-norm statistics, ...) are perturbed first, so that a weight copied to the wrong place
shows.
"""

import numpy as np
import pytest

from tfq_ext._keras import ensure_tf_keras_model, keras, tf
from tfq_ext._keras3 import convert_keras3_model, register_keras3_layer

keras3 = pytest.importorskip("keras")
L3 = keras3.layers
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _keras3_seed():
    keras3.utils.set_random_seed(0)  # Keras 3 initializers draw from their own seed, not tf.random's


def _perturb_constant_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = np.asarray(variable)
        if value.size and np.issubdtype(value.dtype, np.floating) and np.all(value == value.flat[0]):
            noise = rng.uniform(-0.1, 0.1, value.shape) * max(1.0, abs(float(value.flat[0])))
            variable.assign((value + noise).astype(value.dtype))


def _inputs(model, low=-2.0, high=2.0, batch=2, seed=1):
    rng = np.random.default_rng(seed)

    def sample(tensor):
        return rng.uniform(low, high, (batch,) + tuple(tensor.shape[1:])).astype("float32")

    if isinstance(getattr(model, "input", None), dict):  # a Sequential model has no `input` until called
        return {name: sample(tensor) for name, tensor in model.input.items()}
    xs = [sample(tensor) for tensor in model.inputs]
    return xs[0] if len(xs) == 1 else xs


def _assert_close(expected, actual):
    expected, actual = [np.asarray(y) for y in tf.nest.flatten(expected)], [np.asarray(y) for y in actual]
    assert len(expected) == len(actual)
    scale = max(1.0, max(float(np.max(np.abs(e))) for e in expected))
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, rtol=0, atol=RTOL * scale)


def _activation_name(layer):
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return "swish" if name == "silu" else name


def _assert_same_outputs(k3_model, tf_model, x):
    """The models' outputs, and those of every layer both have under one name (a deep random network can forget
    its input, so that its outputs alone would hide an early error)."""
    _assert_close(k3_model(x, training=False), tf.nest.flatten(tf_model(x, training=False)))
    pairs = []
    for layer in k3_model.layers:
        if isinstance(layer, (L3.InputLayer, keras3.Model)) or layer.name not in [t.name for t in tf_model.layers]:
            continue  # a nested model's `output` is that of its own graph; its effect shows in the next layers
        twin = tf_model.get_layer(layer.name)
        if type(twin).__name__ != type(layer).__name__ or _activation_name(twin) != _activation_name(layer):
            continue  # an activation rebuilt as separate layers
        try:
            pairs.append((layer.output, twin.output))
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
    if pairs:
        def flat(inputs):  # the probes take a list of inputs in their own order
            return [x[t.name.split(":")[0]] for t in inputs] if isinstance(x, dict) else x

        k3_inputs = k3_model.inputs if len(k3_model.inputs) > 1 else k3_model.inputs[0]
        expected = keras3.Model(k3_inputs, [a for a, _ in pairs])(flat(k3_model.inputs), training=False)
        actual = keras.Model(tf_model.inputs, [b for _, b in pairs])(flat(tf_model.inputs), training=False)
        for e, g in zip(tf.nest.flatten(expected), tf.nest.flatten(actual)):
            _assert_close(e, [g])


# ----------------------------------------------------------------------------------------------- models
def _sequential():
    return keras3.Sequential([keras3.Input((8,), name="features"), L3.Dense(16, activation="relu"),
                              L3.BatchNormalization(), L3.Dropout(0.3), L3.Dense(4, activation="softmax")],
                             name="seq")


def _sequential_hard_swish():
    return keras3.Sequential([keras3.Input((6,)), L3.Dense(8, activation="hard_swish"), L3.Dense(3)])


def _residual_ops():
    i = keras3.Input((8, 8, 3), name="image")
    x = L3.Conv2D(4, 3, padding="same")(i)
    x = L3.BatchNormalization()(x)
    x = L3.ReLU()(x)
    y = L3.Conv2D(4, 1)(x)
    x = L3.Add()([x, y])
    x = L3.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)  # Keras 3 operations, not layers
    x = x[..., :2]
    return keras3.Model(i, L3.Dense(3)(L3.GlobalAveragePooling2D()(x)), name="residual")


def _elementwise_ops():
    a, b = keras3.Input((4, 6), name="a"), keras3.Input((4, 6), name="b")
    const = np.linspace(0.5, 1.5, 6).astype("float32")
    outs = [a - b, 2.0 - a, a * const, a / 3.0, keras3.ops.true_divide(a, b * b + 1.0), keras3.ops.maximum(a, b),
            keras3.ops.minimum(a, 0.25), keras3.ops.reshape(a, (-1, 24)), a[:, 1:3, ::2], -a,
            keras3.ops.mean(b, axis=1, keepdims=True), keras3.ops.concatenate([a, b], axis=-1)]
    return keras3.Model([a, b], outs, name="ops")


def _nested_shared():
    inner_in = keras3.Input((6,))
    inner = keras3.Model(inner_in, L3.Dense(6, activation="tanh", name="inner_dense")(inner_in), name="inner")
    head = keras3.Sequential([keras3.Input((6,)), L3.Dense(3, name="head_dense")], name="head")
    i = keras3.Input((6,))
    h = inner(inner(i))  # the same nested model twice: weights shared
    return keras3.Model(i, [head(h), inner(i)], name="outer")


def _deeply_nested():
    x0 = keras3.Input((5,))
    level0 = keras3.Model(x0, L3.Dense(5, activation="gelu")(x0), name="level0")
    x1 = keras3.Input((5,))
    level1 = keras3.Model(x1, L3.Add()([x1, level0(x1)]), name="level1")
    level2 = keras3.Sequential([keras3.Input((5,)), level1, L3.Dense(2)], name="level2")
    x = keras3.Input((5,))
    return keras3.Model(x, level2(x), name="level3")


def _multi_io():
    a, b = keras3.Input((4,), name="a"), keras3.Input((3,), name="b")
    h = L3.Concatenate()([L3.Dense(5, activation="silu")(a), b])
    return keras3.Model({"a": a, "b": b}, {"logits": L3.Dense(2, name="logits")(h),
                                           "score": L3.Dense(1, activation="sigmoid", name="score")(h)})


def _activations():
    i = keras3.Input((7,))
    names = ("hard_sigmoid", "hard_silu", "relu6", "leaky_relu", "gelu", "silu", "elu", "log_softmax", "mish")
    return keras3.Model(i, [L3.Activation(name)(i) for name in names], name="activations")


def _normalizations():
    i = keras3.Input((3,))
    adapted = L3.Normalization()
    adapted.adapt(np.random.default_rng(0).normal(3.0, 2.0, (64, 3)).astype("float32"))
    given = L3.Normalization(mean=[1.0, 2.0, 3.0], variance=[1.0, 4.0, 9.0], invert=True)
    return keras3.Model(i, [adapted(i), given(i), L3.Rescaling(0.5, offset=-1.0)(i)], name="normalizations")


def _shared_layers():
    i = keras3.Input((6,))
    act, dense = L3.Activation("hard_swish"), L3.Dense(6, activation="hard_sigmoid")
    return keras3.Model(i, dense(act(dense(act(i)))), name="shared")  # each expanded once per call


def _wrappers_rnn():
    return keras3.Sequential([keras3.Input((5, 3)), L3.Bidirectional(L3.LSTM(4, return_sequences=True)),
                              L3.TimeDistributed(L3.Dense(2))], name="wrappers")


def _random_augmentation():
    i = keras3.Input((8, 8, 3))  # Keras 3 records training=True for these calls; inference must not augment
    x = L3.RandomRotation(0.2)(L3.RandomFlip()(i))
    return keras3.Model(i, L3.Conv2D(2, 3)(x), name="augment")


def _app(name, **kwargs):
    def build():
        fn = getattr(keras3.applications, name)
        return fn(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None, **kwargs)
    return build


SMALL, PIXELS = (-2.0, 2.0), (0.0, 255.0)  # input ranges: layers and ops; applications (images)
MODELS = [
    pytest.param(_sequential, SMALL, id="sequential"),
    pytest.param(_sequential_hard_swish, SMALL, id="sequential-hard-swish"),
    pytest.param(_residual_ops, SMALL, id="functional-residual-add-op"),
    pytest.param(_elementwise_ops, SMALL, id="elementwise-ops-getitem"),
    pytest.param(_nested_shared, SMALL, id="nested-called-twice"),
    pytest.param(_deeply_nested, SMALL, id="nested-three-deep"),
    pytest.param(_multi_io, SMALL, id="multi-input-output-dicts"),
    pytest.param(_activations, SMALL, id="activations"),
    pytest.param(_normalizations, SMALL, id="normalization-rescaling"),
    pytest.param(_shared_layers, SMALL, id="shared-layers-expanded-per-call"),
    pytest.param(_wrappers_rnn, SMALL, id="bidirectional-lstm-time-distributed"),
    pytest.param(_random_augmentation, SMALL, id="random-augmentation-inference"),
    pytest.param(_app("MobileNetV3Small", alpha=0.75), PIXELS, id="MobileNetV3Small"),
    pytest.param(_app("MobileNetV3Small", minimalistic=True, include_preprocessing=False), PIXELS,
                 id="MobileNetV3Small-minimalistic-no-preprocessing"),
    pytest.param(_app("MobileNetV2", alpha=0.35), PIXELS, id="MobileNetV2"),
    pytest.param(_app("EfficientNetB0"), PIXELS, id="EfficientNetB0"),
    pytest.param(_app("ConvNeXtTiny"), PIXELS, id="ConvNeXtTiny"),
]


@pytest.mark.parametrize("build,input_range", MODELS)
def test_outputs_match_and_user_model_untouched(build, input_range):
    model = build()
    _perturb_constant_weights(model)
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    x = _inputs(model, *input_range)
    converted = convert_keras3_model(model)
    assert isinstance(converted, keras.Model) and not type(converted).__module__.startswith("keras.")
    assert converted.name == model.name and converted.count_params() == model.count_params()
    _assert_same_outputs(model, converted, x)
    assert model.get_config() == config
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sequential_stays_sequential_unless_an_activation_expands():
    assert isinstance(convert_keras3_model(_sequential()), keras.Sequential)
    converted = convert_keras3_model(_sequential_hard_swish())
    assert not isinstance(converted, keras.Sequential)
    assert {"Multiply", "ReLU", "TFOpLambda"} <= {type(layer).__name__ for layer in converted.layers}


def test_hard_sigmoid_is_keras3s_relu6_formula():
    """Keras 3: relu6(x + 3) / 6; tf_keras' own hard_sigmoid, clip(0.2 x + 0.5, 0, 1), would give 0.8 at 1.5."""
    model = keras3.Sequential([keras3.Input((6,)), L3.Activation("hard_sigmoid")])
    x = np.array([[-4.0, -3.0, 0.0, 1.5, 3.0, 4.0]], "float32")
    np.testing.assert_allclose(convert_keras3_model(model)(x).numpy(), [[0.0, 0.0, 0.5, 0.75, 1.0, 1.0]], atol=1e-7)


def test_operations_become_tf_op_lambda_layers():
    converted = convert_keras3_model(_residual_ops())
    names = [layer.name for layer in converted.layers]
    assert any(n.startswith("tf.__operators__.add") for n in names)
    assert any(n.startswith("tf.math.multiply") for n in names)
    assert any(n.startswith("tf.__operators__.getitem") for n in names)


def test_nested_model_called_twice_shares_weights():
    model = _nested_shared()
    converted = convert_keras3_model(model)
    inner = converted.get_layer("inner")
    assert isinstance(inner, keras.Model) and [layer.name for layer in converted.layers].count("inner") == 1
    kernel = np.full((6, 6), 0.05, "float32")
    model.get_layer("inner").get_layer("inner_dense").kernel.assign(kernel)  # one weight, every call of it
    inner.get_layer("inner_dense").kernel.assign(kernel)
    _assert_same_outputs(model, converted, _inputs(model))


def test_changing_a_copied_weight_changes_outputs():
    """The output check is sensitive: the same models differ once one converted weight differs."""
    model = _residual_ops()
    _perturb_constant_weights(model)
    converted = convert_keras3_model(model)
    bn = [layer for layer in converted.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
    bn.moving_mean.assign(bn.moving_mean + 0.5)
    with pytest.raises(AssertionError):
        _assert_same_outputs(model, converted, _inputs(model))


def test_normalization_computes_with_what_keras3_uses():
    """Keras 3's Normalization uses the statistics it cached when built, adapted or loaded; assigning its
    variables does not refresh them, so the tf_keras layer gets the cached values."""
    model = keras3.Sequential([keras3.Input((3,)), L3.Normalization()])
    model.layers[0].adapt(np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 6.0]], "float32"))
    model.layers[0].adapt_mean.assign([9.0, 9.0, 9.0])
    x = np.array([[1.0, 2.0, 4.0]], "float32")
    np.testing.assert_allclose(np.asarray(model(x)), [[0.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(convert_keras3_model(model)(x).numpy(), [[0.0, 0.0, 0.0]], atol=1e-6)


class _Scale3(L3.Layer):
    """A Keras 3 custom layer: no tf_keras twin unless registered."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class _Scale2(keras.layers.Layer):
    def __init__(self, size=None, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.size or input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def _with_custom(layer_cls):
    i = keras3.Input((4,))
    return keras3.Model(i, L3.Dense(2)(layer_cls(name="my_scale")(i)))


def test_keras3_layer_without_twin_names_layer_class_module_and_fix():
    model = _with_custom(_Scale3)
    with pytest.raises(TypeError) as info:
        convert_keras3_model(model)
    message = str(info.value)
    assert "my_scale" in message and "_Scale3" in message and __name__ in message
    assert "register_keras3_layer" in message and "tf_keras" in message


def test_registered_layer_gets_weights_and_shapes_are_checked():
    class Scale3(_Scale3):
        pass

    class BadScale3(_Scale3):
        pass

    register_keras3_layer(Scale3, lambda layer: _Scale2(name=layer.name))
    model = _with_custom(Scale3)
    model.get_layer("my_scale").scale.assign([1.0, 2.0, 3.0, 4.0])
    _assert_same_outputs(model, convert_keras3_model(model), _inputs(model))
    register_keras3_layer(BadScale3, lambda layer: _Scale2(size=1, name=layer.name))
    with pytest.raises(ValueError, match=r"my_scale.*\(4,\).*\(1,\)"):
        convert_keras3_model(_with_custom(BadScale3))


def test_unsupported_operation_is_named():
    i = keras3.Input((5,))
    model = keras3.Model(i, keras3.ops.cumsum(i, axis=-1))
    with pytest.raises(TypeError, match=r"Cumsum.*keras\.src\.ops\.numpy.*register_keras3_op"):
        convert_keras3_model(model)


@pytest.mark.filterwarnings("ignore:Layer InputLayer does not have a `quantize` method")
def test_unsupported_activation_option_and_quantized_layer_are_refused():
    with pytest.raises(TypeError, match="sparsemax"):
        convert_keras3_model(keras3.Sequential([keras3.Input((4,)), L3.Dense(3, activation="sparsemax")]))
    with pytest.raises(TypeError, match="RMSNormalization"):
        convert_keras3_model(keras3.Sequential([keras3.Input((4,)), L3.RMSNormalization()]))
    dense = keras3.Sequential([keras3.Input((4,)), L3.Dense(8)])
    dense.quantize("int8")
    with pytest.raises(TypeError, match="quantized"):
        convert_keras3_model(dense)


class _Subclassed(keras3.Model):
    def __init__(self):
        super().__init__()
        self.dense = L3.Dense(2)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize("wrap", [False, True], ids=["subclassed", "subclassed-wrapped-in-functional"])
def test_subclassed_keras3_model_gets_clear_error(wrap):
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    if wrap:
        i = keras3.Input((3,))
        model = keras3.Model(i, model(i))
    with pytest.raises(TypeError) as info:
        ensure_tf_keras_model(model)
    message = str(info.value)
    assert "subclassed" in message and "_Subclassed" in message and "functional graph" in message
    assert "does not help" in message


def test_unbuilt_keras3_model_keeps_its_error():
    with pytest.raises(ValueError, match="unbuilt Keras 3 model"):
        ensure_tf_keras_model(keras3.Sequential([L3.Dense(2)]))


def test_ensure_tf_keras_model_converts_functional_and_passes_tf_keras_through():
    model = _residual_ops()
    converted = ensure_tf_keras_model(model)
    _assert_same_outputs(model, converted, _inputs(model))
    assert ensure_tf_keras_model(converted) is converted


def _small_conv_bn_relu_add():
    i = keras3.Input((8, 8, 1))
    x = L3.ReLU()(L3.BatchNormalization()(L3.Conv2D(4, 3, padding="same", use_bias=False)(i)))
    y = L3.ReLU()(L3.BatchNormalization()(L3.Conv2D(4, 3, padding="same", use_bias=False)(x)))
    x = L3.Add()([x, y])
    return keras3.Model(i, L3.Dense(3)(L3.GlobalAveragePooling2D()(x)), name="small_residual")


def test_quantize_model_and_tflite_export_take_a_converted_functional_model():
    from tflite_export import convert, run
    from tflite_export.runtime import output_quantization
    from tfq_ext.qat import quantize_model

    model = _small_conv_bn_relu_add()
    _perturb_constant_weights(model)
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    qat = quantize_model(model)
    assert qat(x[:2]).shape == (2, 3)
    flatbuffer = convert(model, representative_data=x)
    expected = np.asarray(model(x, training=False))
    got = run(flatbuffer, x)
    scale, _ = output_quantization(flatbuffer)
    steps = np.max(np.abs(got - expected)) / scale
    assert steps <= 4  # int8 all the way: rounding at the input, each activation and the output (1.3 measured)


def test_every_method_takes_a_keras3_model():
    """DiffQ, Quant-Noise/iPQ and KQ reach the model through the same conversion as QAT and PTQ."""
    from tfq_ext.diffq import apply_diffq
    from tfq_ext.kq import quantize_kernels
    from tfq_ext.quant_noise import add_quant_noise, quantize_pq

    model = _small_conv_bn_relu_add()
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 3
    assert apply_diffq(model, min_size=0.0, group_size=4)(x[:2]).shape == (2, 3)
    assert add_quant_noise(model, noise_rate=0.1)(x[:2]).shape == (2, 3)
    pq, _ = quantize_pq(model, x, y, n_centroids=4, finetune_epochs=0, verbose=0,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert pq(x[:2]).shape == (2, 3)
    kq, _ = quantize_kernels(model, n_codewords=4, min_kernels=4, finetune_epochs=0, verbose=0)
    assert kq(x[:2]).shape == (2, 3)


def test_keras3_application_through_qat_is_one_int8_partition():
    import tflite_export
    from tfq_ext.qat import quantize_model
    from tflite_export.parity import layer_parity

    model = keras3.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10,
                                                 classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    qat = quantize_model(model)
    for k in range(2):
        qat(x[8 * k:8 * (k + 1)], training=True)
    flatbuffer = tflite_export.convert(qat)
    report = tflite_export.verify(flatbuffer)
    assert report.integer_only and report.delegate_partitions == 1 and report.not_delegated == []
    rows = [r for r in layer_parity(qat, flatbuffer, x, max_samples=2) if r.local_within_1 is not None]
    assert len(rows) >= 50 and all(r.local_within_1 >= 0.999 and r.local_max <= 2 for r in rows)


def test_keras3_standalone_batch_norm_pre_activation_block():
    """ResNetV2-style pre-activation: Keras 3 records mask=None on every BatchNormalization call; the BN that
    has no kernel layer to fold into becomes a 1x1 depthwise layer, which takes no mask (QAT and PTQ)."""
    import tflite_export
    from tfq_ext.qat import quantize_model

    inputs = keras3.Input((8, 8, 4))
    x = keras3.layers.Conv2D(8, 3, padding="same")(inputs)
    skip = x
    x = keras3.layers.BatchNormalization()(x)
    x = keras3.layers.ReLU()(x)
    x = keras3.layers.Conv2D(8, 3, padding="same")(x)
    x = keras3.layers.Add()([x, skip])
    x = keras3.layers.GlobalAveragePooling2D()(x)
    model = keras3.Model(inputs, keras3.layers.Dense(3)(x))
    data = np.random.default_rng(0).random((16, 8, 8, 4)).astype("float32")
    qat = quantize_model(model)
    qat(data, training=True)
    for flatbuffer in (tflite_export.convert(qat), tflite_export.convert(model, representative_data=data)):
        report = tflite_export.verify(flatbuffer)
        assert report.integer_only and report.delegate_partitions == 1 and report.not_delegated == []
