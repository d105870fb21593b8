"""Kernel codebooks (KQ): nearest-codeword indices, exact reproduction, codebook grid, bits accounting,
save/load, errors, fine-tuning and int8 export."""

import inspect

import numpy as np
import pytest

from tfq_ext import model_size
from tfq_ext._keras import keras, tf
from tfq_ext.kq import (
    KQConv2D,
    KQDepthwiseConv2D,
    choose_codewords,
    conv_bits,
    kq_bits,
    quantize_kernels,
    to_dense_model,
)
from tfq_ext.ops.blocks import from_blocks, to_blocks
from tfq_ext.ops.kmeans import assign

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _cnn(seed=0):
    """8 -> 16 -> 32 channels of 3x3 kernels: 8, 128 and 512 kernels."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="c3"),
        L.GlobalAveragePooling2D(), L.Dense(10, name="fc"),
    ])


@pytest.fixture(scope="module")
def trained(digits):
    model = _cnn()
    model.compile(keras.optimizers.Adam(1e-2), LOSS, metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=6, batch_size=64, verbose=0)
    return model


def test_kernels_map_to_their_nearest_codeword(trained):
    kq, report = quantize_kernels(trained, n_codewords=16, min_kernels=64, verbose=0)
    for name in ("c2", "c3"):
        layer = kq.get_layer(name)
        kernels = to_blocks(tf.constant(trained.get_layer(name).kernel.numpy()), "conv", 1).numpy()
        np.testing.assert_array_equal(layer.indices.numpy(), assign(kernels, layer.codebook_variable.numpy()))
        # The forward kernel is made of codebook rows only: one row per kernel, the one its index names.
        rebuilt = to_blocks(layer.kq_kernel(), "conv", 1).numpy()
        np.testing.assert_array_equal(rebuilt, layer.codebook().numpy()[layer.indices.numpy()])
    assert isinstance(kq.get_layer("c1"), L.Conv2D)  # 8 kernels < min_kernels: left as it is
    assert report["layers"]["c2"]["K"] == 16 and "c1" not in report["layers"]


@pytest.mark.parametrize("depthwise", [False, True], ids=["conv", "depthwise"])
def test_layer_with_k_distinct_kernels_is_reproduced_exactly(depthwise):
    rng = np.random.default_rng(0)
    # K distinct kernels on the 6-bit grid: integer codes in [-31, 31] times a power-of-two step, with the code
    # 31 present so that max|C| / 31 is the step itself and the fake-quant grid passes through every value.
    codes = rng.integers(-31, 32, size=(4, 9)).astype("float32")
    codes[0, 0] = 31.0
    step = 2.0 ** -5
    if depthwise:
        layer, shape = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="k"), (3, 3, 64, 2)
    else:
        layer, shape = L.Conv2D(16, 3, padding="same", name="k"), (3, 3, 16, 16)
    model = keras.Sequential([keras.Input((6, 6, shape[2])), layer])
    indices = np.concatenate([np.arange(4), rng.integers(0, 4, size=shape[2] * shape[3] - 4)])
    kernel = from_blocks(tf.constant(codes[indices] * step), "conv", shape, 1).numpy()
    model.set_weights([kernel, rng.normal(size=model.get_weights()[1].shape).astype("float32")])
    kq, _ = quantize_kernels(model, n_codewords=4, min_kernels=1, verbose=0)
    assert isinstance(kq.layers[0], KQDepthwiseConv2D if depthwise else KQConv2D)
    np.testing.assert_array_equal(kq.layers[0].kq_kernel().numpy(), kernel)
    x = rng.normal(size=(2, 6, 6, shape[2])).astype("float32")
    np.testing.assert_allclose(kq.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 6, 8], ids=lambda b: f"{b}bit")
def test_codebook_is_on_its_grid(bits):
    layer = KQConv2D(8, 3, n_codewords=8, codebook_bits=bits)
    layer.build((None, 6, 6, 4))
    layer.set_codebook(np.random.default_rng(bits).normal(size=(8, 9)), np.arange(32) % 8)
    qmax = 2 ** (bits - 1) - 1
    step = layer.codebook_scale().numpy()
    np.testing.assert_allclose(step, np.abs(layer.codebook_variable.numpy()).max() / qmax, rtol=1e-6)
    codes = layer.codebook().numpy() / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # integers, to float32 rounding
    assert np.abs(np.round(codes)).max() == qmax
    # Nearest grid point: the quantization error is at most half a step.
    assert np.abs(layer.codebook().numpy() - layer.codebook_variable.numpy()).max() <= 0.5 * step * (1 + 1e-5)


def test_bits_accounting_golden():
    # log2(K) bits per kernel + 6 bits per codebook value + one float32 scale:
    # 1024 kernels x 6 bits + 64 x 9 x 6 + 32 = 6144 + 3456 + 32.
    assert kq_bits(1024, 9, 64, 6) == 9632
    assert kq_bits(512, 9, 2, 6) == 512 + 108 + 32
    layer = KQConv2D(32, 3, n_codewords=64)
    layer.build((None, 8, 8, 32))
    entries = {e.name: e for e in layer.size_entries()}
    assert entries["kernel"].index_bytes == 768              # 1024 x 6 bits
    assert entries["kernel"].codebook_bytes == 432 + 4       # 576 values x 6 bits + float32 scale
    assert entries["bias"].other_bytes == 128
    assert layer.kernel_bits() == 9632


def test_budget_choice_and_conv_bits_golden():
    model = _cnn()
    # 72 + 1152 + 4608 = 5832 conv weights; 2 bits each = 11664 bits. c1 (8 kernels) is kept at int8:
    # 72 x 8 + 32 = 608 bits, leaving (11664 - 608) / 5760 = 1.919 bits per weight for c2 and c3.
    # c2 (128 kernels, cap 32): K=16 costs 128*4 + 864 + 32 = 1408 <= 2211; K=32 costs 2400 > 2211.
    # c3 (512 kernels): K=64 costs 3072 + 3456 + 32 = 6560 <= 8845; K=128 costs 10528 > 8845.
    # Leftover 11664 - 8576 = 3088: c2 16 -> 32 (+992) fits, c3 64 -> 128 (+3968) does not.
    plan = choose_codewords(model, 2.0, min_kernels=16)
    assert plan == {"c1": None, "c2": 32, "c3": 64}
    kq, report = quantize_kernels(model, bits_per_weight=2.0, min_kernels=16, verbose=0)
    bits = conv_bits(kq)
    assert bits["bits"] == 608 + 2400 + 6560 and bits["weights"] == 5832
    assert report["bits_per_conv_weight"] == pytest.approx(9568 / 5832)
    assert conv_bits(model, kept_bits=32)["bits_per_weight"] == 32.0
    assert conv_bits(model)["bits"] == 5832 * 8 + 3 * 32  # int8 kernels with one scale each
    # model_size counts the same KQ kernels in whole bytes: 128 x 5 bits = 80, 32 x 9 x 6 bits = 216, + 4.
    sizes = {(t.layer, t.name): t.bytes for t in model_size(kq).tensors}
    assert sizes[("c2", "kernel")] == 80 + 216 + 4 and sizes[("c3", "kernel")] == 384 + 432 + 4


@pytest.mark.parametrize("layer,shape", [
    (KQConv2D(8, 3, padding="same", n_codewords=4, codebook_bits=5, activation="relu"), (None, 6, 6, 4)),
    (KQDepthwiseConv2D((3, 3), strides=2, depth_multiplier=2, n_codewords=4, use_bias=False), (None, 6, 6, 4)),
], ids=["conv", "depthwise"])
@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_save_load_round_trip_and_config(layer, shape, tmp_path):
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(0)
    layer.set_codebook(rng.normal(size=(4, 9)), rng.integers(0, 4, size=layer.n_kernels))
    x = rng.normal(size=(3,) + shape[1:]).astype("float32")
    for fmt in ("m.keras", "m.h5"):
        model.save(tmp_path / fmt)
        again = keras.models.load_model(tmp_path / fmt)
        np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    config = layer.get_config()
    own = set(inspect.signature(type(layer).__init__).parameters) - {"self", "kwargs"}
    assert own <= set(config) and set(config) - own <= {"name", "trainable", "dtype"}
    assert type(layer).from_config(config).get_config() == config


def test_finetune_trains_codebooks_and_exports_int8(trained, digits):
    import tflite_export

    before = trained.get_weights()
    kq, report = quantize_kernels(trained, digits.x_train, digits.y_train, bits_per_weight=1.5, min_kernels=64,
                                  finetune_epochs=2, optimizer=keras.optimizers.Adam(1e-3),
                                  validation_data=(digits.x_test, digits.y_test), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))  # the input is untouched
    assert report["bits_per_conv_weight"] <= 1.5
    assert report["accuracy_after_finetune"] >= report["accuracy_before_finetune"] - 0.02
    assert report["accuracy_after_finetune"] > 0.6
    dense = to_dense_model(kq)
    assert [type(layer).__name__ for layer in dense.layers[:3]] == ["Conv2D"] * 3
    np.testing.assert_allclose(dense.predict(digits.x_test, verbose=0), kq.predict(digits.x_test, verbose=0),
                               atol=1e-5)
    flatbuffer = tflite_export.convert(dense, representative_data=digits.x_train[:100], per_channel=False)
    tflite_accuracy = np.mean(np.argmax(tflite_export.run(flatbuffer, digits.x_test), 1) == digits.y_test)
    assert tflite_accuracy >= report["accuracy_after_finetune"] - 0.03
    # Per-tensor int8 keeps identical kernels identical: c3's (O, H, W, I) weight has at most K distinct kernels.
    k = report["layers"]["c3"]["K"]
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    weights = [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
               if d["dtype"] == np.int8 and tuple(d["shape"]) == (32, 3, 3, 16)]
    assert len(weights) == 1
    kernels = np.transpose(weights[0], (0, 3, 1, 2)).reshape(-1, 9)
    assert len(np.unique(kernels, axis=0)) <= k


def test_only_codebooks_train_when_other_layers_are_frozen(trained, digits):
    kq, _ = quantize_kernels(trained, digits.x_train[:256], digits.y_train[:256], n_codewords=8, min_kernels=64,
                             finetune_epochs=1, train_other_layers=False, optimizer=keras.optimizers.Adam(1e-2),
                             verbose=0)
    np.testing.assert_array_equal(kq.get_layer("fc").kernel.numpy(), trained.get_layer("fc").kernel.numpy())
    np.testing.assert_array_equal(kq.get_layer("c1").kernel.numpy(), trained.get_layer("c1").kernel.numpy())
    fresh, _ = quantize_kernels(trained, n_codewords=8, min_kernels=64, verbose=0)
    layer, start = kq.get_layer("c3"), fresh.get_layer("c3")
    assert not np.allclose(layer.codebook_variable.numpy(), start.codebook_variable.numpy())
    np.testing.assert_array_equal(layer.indices.numpy(), start.indices.numpy())


def _dense_model():
    return keras.Sequential([keras.Input((16,)), L.Dense(4)])


@pytest.mark.parametrize("call,error,match", [
    (lambda m: quantize_kernels(_dense_model(), verbose=0), ValueError, "no Conv2D"),
    (lambda m: quantize_kernels(m, n_codewords=200, min_kernels=64, verbose=0), ValueError, "n_codewords"),
    (lambda m: quantize_kernels(m, n_codewords={"c2": 4, "fc": 2}, min_kernels=64, verbose=0), ValueError,
     "not quantizable"),
    (lambda m: quantize_kernels(m, codebook_bits=1, verbose=0), ValueError, "codebook_bits"),
    (lambda m: quantize_kernels(m, codebook_bits=9, verbose=0), ValueError, "codebook_bits"),
    (lambda m: quantize_kernels(m, bits_per_weight=0, verbose=0), ValueError, "bits_per_weight"),
    (lambda m: quantize_kernels(m, bits_per_weight=40, verbose=0), ValueError, "bits_per_weight"),
    (lambda m: quantize_kernels(m, bits_per_weight=0.2, min_kernels=64, verbose=0), ValueError, "too small"),
    (lambda m: quantize_kernels(m, bits_per_weight=1.5, n_codewords=4, verbose=0), ValueError, "not both"),
    (lambda m: quantize_kernels(m, min_kernels=10_000, verbose=0), ValueError, "min_kernels"),
    (lambda m: quantize_kernels(m, np.zeros((4, 8, 8, 1)), np.zeros(4), min_kernels=64, verbose=0), ValueError,
     "loss"),
    (lambda m: quantize_kernels(m, kept_bits=4, verbose=0), ValueError, "kept_bits"),
    (lambda m: quantize_kernels(m, exclude="c2", verbose=0), TypeError, "exclude"),
    (lambda m: quantize_kernels("model", verbose=0), TypeError, "model"),
    (lambda m: KQConv2D(8, 1), ValueError, "kernel_size"),
    (lambda m: KQConv2D(8, 3, n_codewords=0), ValueError, "n_codewords"),
    (lambda m: KQDepthwiseConv2D(3, depth_multiplier=0), ValueError, "depth_multiplier"),
    (lambda m: KQConv2D(8, 3, n_codewords=64).build((None, 6, 6, 2)), ValueError, "n_codewords"),
], ids=["non-conv-model", "k-above-kernels", "k-for-unknown-layer", "codebook-bits-low", "codebook-bits-high",
        "budget-zero", "budget-high", "budget-infeasible", "budget-and-k", "all-layers-too-small", "no-loss",
        "kept-bits", "exclude-string", "not-a-model", "1x1-kernel", "k-zero", "depth-multiplier",
        "layer-k-above-kernels"])
def test_errors_leave_the_model_untouched(call, error, match):
    model = _cnn()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=match):
        call(model)
    assert [type(layer) for layer in model.layers[:3]] == [L.Conv2D] * 3
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_set_codebook_validates():
    layer = KQConv2D(4, 3, n_codewords=4)
    layer.build((None, 6, 6, 2))
    with pytest.raises(ValueError, match="codebook"):
        layer.set_codebook(np.zeros((3, 9)), np.zeros(8, int))
    with pytest.raises(ValueError, match="indices"):
        layer.set_codebook(np.zeros((4, 9)), np.full(8, 4))


def test_functional_residual_model_with_depthwise():
    inputs = keras.Input((8, 8, 4))
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="a")(inputs)
    d = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(h)
    out = L.Add()([L.Conv2D(32, 3, padding="same", name="b")(h), d])
    model = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(out)))
    kq, report = quantize_kernels(model, n_codewords={"b": 8, "dw": 4}, min_kernels=32, verbose=0)
    assert isinstance(kq.get_layer("b"), KQConv2D) and isinstance(kq.get_layer("dw"), KQDepthwiseConv2D)
    assert isinstance(kq.get_layer("a"), L.Conv2D) and set(report["layers"]) == {"b", "dw"}
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(to_dense_model(kq).predict(x, verbose=0), kq.predict(x, verbose=0), atol=1e-5)


def test_batch_norm_is_folded_and_the_file_compresses(digits):
    """Conv -> BN: KQ folds the BN into the conv first, so the int8 file keeps K distinct kernels per conv and
    compresses; without folding the converter scales every output channel's kernels by its own factor."""
    import tflite_export
    from tfq_ext.kq import export_tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", name="c1"),
        L.Conv2D(32, 3, padding="same", use_bias=False, name="c2"), L.BatchNormalization(name="bn2"), L.ReLU(),
        L.GlobalAveragePooling2D(), L.Dense(10, name="fc")])
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    model.fit(digits.x_train[:512], digits.y_train[:512], epochs=3, batch_size=32, verbose=0)
    x = digits.x_test[:200]
    kq, report = quantize_kernels(model, n_codewords=8, min_kernels=64, finetune_epochs=0, verbose=0)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in kq.layers)
    small = export_tflite(kq, digits.x_train[:100])
    plain = export_tflite(kq, digits.x_train[:100], compressed=False)
    assert tflite_export.codebook.layout_of(small) == "loader" and len(small) < len(plain)
    (entry,) = [t for t in tflite_export.describe(small) if t.shape == (32, 3, 3, 16)]
    assert entry.K <= 8 and entry.layout == (32, 9, 16)
    dense = tflite_export.decompress(small)
    report_file = tflite_export.verify(dense)
    assert report_file.integer_only and report_file.delegate_partitions == 1
    np.testing.assert_array_equal(tflite_export.run(dense, x), tflite_export.run(plain, x))
    keras_pred = np.argmax(kq.predict(x, verbose=0), 1)
    assert np.mean(np.argmax(tflite_export.run(dense, x), 1) == keras_pred) > 0.9
    unfolded, _ = quantize_kernels(model, n_codewords=8, min_kernels=64, finetune_epochs=0, verbose=0,
                                   fold_batch_norm=False)
    with pytest.raises(ValueError, match="fold_batch_norm=True"):
        export_tflite(unfolded, digits.x_train[:10])
    with pytest.raises(ValueError, match="per_channel=False"):
        export_tflite(kq, digits.x_train[:10], per_channel=True)
    with pytest.raises(ValueError, match="no KQ layer"):
        export_tflite(model, digits.x_train[:10])
