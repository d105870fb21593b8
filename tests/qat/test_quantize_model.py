"""QAT -> fit -> int8 TFLite -> interpreter, for a table of architectures covering every supported layer."""

import numpy as np
import pytest

import tflite_export
from tests.qat.models import ARCHITECTURES, shared_block_model
from tfq_ext._keras import keras, tf
from tfq_ext.qat import FoldedBatchNorm, quantize_model

CONV_DENSE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def _train(model, data, epochs, lr=3e-3):
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=not model.layers[-1].get_config().get("activation") == "softmax"
        and "softmax" not in model.layers[-1].name)
    model.compile(keras.optimizers.Adam(lr), loss, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES), ids=sorted(ARCHITECTURES))
def exported(request, digits):
    tf.random.set_seed(1)
    float_model = _train(ARCHITECTURES[request.param](), digits, epochs=8)
    qat = quantize_model(float_model, freeze_bn_delay=80)
    _train(qat, digits, epochs=3, lr=1e-3)
    flatbuffer = tflite_export.convert(qat)
    return float_model, qat, flatbuffer


def test_integer_only_and_fully_delegated(exported):
    _, _, flatbuffer = exported
    report = tflite_export.verify(flatbuffer)
    assert report.float_tensors == []
    delegation = tflite_export.delegation_report(flatbuffer)
    for op, (delegated, total) in delegation["by_op"].items():
        if op in CONV_DENSE_OPS:
            assert delegated == total, f"{op}: {delegated}/{total} delegated"
    # XNNPACK has no int8 SOFTMAX or RESIZE_NEAREST_NEIGHBOR kernel (measured): those run on TFLite's builtin
    # int8 kernels; everything else must be delegated.
    assert set(delegation["not_delegated"]) <= {"SOFTMAX", "RESIZE_NEAREST_NEIGHBOR"}


def test_keras_and_tflite_agree(exported, digits):
    _, qat, flatbuffer = exported
    keras_out = qat.predict(digits.x_test, verbose=0)
    raw = tflite_export.run_raw(flatbuffer, digits.x_test).astype("float32")
    scale, zero_point = tflite_export.runtime.output_quantization(flatbuffer)
    steps = np.abs(keras_out / scale + zero_point - raw)
    # End to end, one-step rounding differences grow through the layers (image_ops: every layer locally
    # within one step, 97% of the logits within two); the layer-by-layer check is below.
    assert np.mean(steps <= 2.0) >= 0.95, f"only {np.mean(steps <= 2.0):.3f} within 2 steps"
    agreement = np.mean(np.argmax(raw, 1) == np.argmax(keras_out, 1))
    assert agreement >= 0.99


def test_every_layer_within_one_step(exported, digits):
    from tflite_export.parity import layer_parity

    _, qat, flatbuffer = exported
    rows = [r for r in layer_parity(qat, flatbuffer, digits.x_test, max_samples=8) if r.local_within_1 is not None]
    assert len(rows) >= 3
    assert all(r.local_within_1 >= 0.999 and r.local_max <= 2 for r in rows), [
        (r.layer, r.local_within_1, r.local_max) for r in rows if r.local_within_1 < 0.999 or r.local_max > 2]


def test_accuracy_kept(exported, digits):
    float_model, _, flatbuffer = exported
    float_acc = np.mean(np.argmax(float_model.predict(digits.x_test, verbose=0), 1) == digits.y_test)
    int8_acc = np.mean(np.argmax(tflite_export.run(flatbuffer, digits.x_test), 1) == digits.y_test)
    assert float_acc > 0.8
    assert int8_acc >= float_acc - 0.04


@pytest.mark.parametrize("fmt", ["model.keras", "model.h5", "saved_model"], ids=["keras", "h5", "savedmodel"])
def test_save_load_identical(fmt, tmp_path, digits):
    qat = quantize_model(_train(ARCHITECTURES["nested_models"](), digits, epochs=1), freeze_bn_delay=5)
    _train(qat, digits, epochs=1)
    path = str(tmp_path / fmt)
    qat.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(again.predict(digits.x_test, verbose=0), qat.predict(digits.x_test, verbose=0))


def test_user_model_untouched(digits):
    model = _train(ARCHITECTURES["residual_functional"](), digits, epochs=1)
    before = [w.copy() for w in model.get_weights()]
    n_layers = len(model.layers)
    qat = quantize_model(model)
    _train(qat, digits, epochs=1)
    assert len(model.layers) == n_layers
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_nested_model_shares_weights_after_inlining():
    qat = quantize_model(shared_block_model())
    folded = [layer for layer in qat.layers if isinstance(layer, FoldedBatchNorm)]
    assert len(folded) == 1  # the block's conv+BN, called twice, is one layer with two calls
    assert len(folded[0].inbound_nodes) == 2


def test_bn_is_folded_and_relu_fused():
    qat = quantize_model(ARCHITECTURES["conv_bn_sequential"]())
    names = [type(layer).__name__ for layer in qat.layers]
    assert names.count("FoldedBatchNorm") == 2
    assert "BatchNormalization" not in str([layer.get_config() for layer in qat.layers])
    assert not any(isinstance(layer, keras.layers.ReLU) for layer in qat.layers)


def test_no_folding_option_keeps_bn():
    qat = quantize_model(ARCHITECTURES["conv_bn_sequential"](), fold_batch_norm=False)
    assert not any(isinstance(layer, FoldedBatchNorm) for layer in qat.layers)
