"""keras.applications architectures through quantize_model -> convert -> ai-edge-litert.

CI runs small variants of the families whose layer patterns the other tests do not already cover end to end
(hard-swish and squeeze-excite, swish with EfficientNet's preprocessing, RegNet's grouped convolutions and
TFOpLambda residuals, inverted residuals); the full table of 20 constructors at benchmark sizes is
``python -m benchmarks.run --only applications``.
"""

import numpy as np
import pytest

import tflite_export
from tfq_ext._keras import keras
from tfq_ext.qat import quantize_model
from tflite_export.parity import layer_parity

A = keras.applications

# name -> constructor of a small variant; classifier_activation=None keeps the logits (an int8 SOFTMAX at the
# end is the one op XNNPACK leaves to TFLite's builtin kernels, tested separately below).
ARCHITECTURES = {
    "MobileNetV3Small": lambda: A.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10,
                                                   classifier_activation=None),
    "MobileNetV2": lambda: A.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                         classifier_activation=None),
    "EfficientNetB0": lambda: A.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10,
                                               classifier_activation=None),
    "RegNetY002": lambda: A.RegNetY002(input_shape=(32, 32, 3), weights=None, classes=10,
                                       classifier_activation=None),
}


@pytest.fixture(scope="module")
def images(digits):
    """scikit-learn's digits as 32x32 RGB images in [0, 255] (the applications' input convention)."""
    x = np.concatenate([digits.x_train[:48], digits.x_test[:16]])
    x = np.kron(x[..., 0], np.ones((4, 4), "float32"))[..., None]  # 8x8 -> 32x32 nearest
    return np.repeat(x * 255.0, 3, axis=-1).astype("float32")


def _calibrate_batch_norm(model, x):
    """Sets every BatchNormalization's moving statistics to the statistics of ``x``, so that a weights=None
    model has activations of sensible scale (its moving statistics start at 0 / 1)."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES), ids=sorted(ARCHITECTURES))
def converted(request, images):
    keras.utils.set_random_seed(0)
    model = ARCHITECTURES[request.param]()
    x = images[:32]
    _calibrate_batch_norm(model, x)
    qat = quantize_model(model)
    if request.param == "MobileNetV3Small":  # one real fit, the path users take
        qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        qat.fit(x, np.arange(32) % 10, batch_size=8, epochs=1, verbose=0)
    else:
        for k in range(4):  # training-mode calls: BN statistics and activation ranges, as fit would set them
            qat(x[8 * k:8 * (k + 1)], training=True)
    return model, qat, tflite_export.convert(qat)


def test_integer_only_one_partition(converted):
    _, _, flatbuffer = converted
    report = tflite_export.verify(flatbuffer)
    assert report.integer_only, report.float_tensors
    assert report.delegate_partitions == 1 and report.not_delegated == [], str(report)


def test_every_layer_agrees_with_tflite(converted, images):
    """Each layer, fed TFLite's own inputs, is within one output step of the file: the QAT graph simulates the
    int8 kernels. (End to end, rounding differences of one step grow through 50+ random-weight layers.)"""
    _, qat, flatbuffer = converted
    rows = layer_parity(qat, flatbuffer, images[32:], max_samples=4)
    checked = [r for r in rows if r.local_within_1 is not None]
    quantized = [layer for layer in qat.layers if layer.weights]
    assert len(rows) >= 0.6 * len(quantized) and len(checked) >= 0.9 * len(rows), (
        len(checked), len(rows), len(quantized))
    bad = [(r.layer, r.local_within_1, r.local_max) for r in checked if r.local_within_1 < 0.999 or r.local_max > 2]
    assert not bad, bad


def test_softmax_head_is_the_only_node_outside(images):
    model = A.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, minimalistic=True, weights=None, classes=10)
    qat = quantize_model(model)
    qat(images[:8], training=True)
    report = tflite_export.verify(tflite_export.convert(qat))
    assert report.integer_only and report.delegate_partitions == 1
    assert report.not_delegated == ["SOFTMAX"]
