"""DiffQ: noise scale, gradients, bits range, true quantization, size accounting, packing, training, save/load."""

import inspect

import numpy as np
import pytest

from tfq_ext._keras import keras, tf
from tfq_ext import diffq
from tfq_ext.diffq import (DiffQLogger, DiffQOptimizer, DiffQWrapper, PackedModel, apply_diffq, apply_uniform)
from tfq_ext.diffq.export import pack_varwidth, unpack_varwidth
from tfq_ext.ops import diffq as ops

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _cnn():
    return keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu", name="conv"),
                             L.Flatten(), L.Dense(32, activation="relu", name="fc"), L.Dense(10, name="out")])


def _diffq_cnn(**kw):
    return apply_diffq(_cnn(), **{"min_size": 0, "group_size": 8, **kw})


# --- ops ------------------------------------------------------------------------------------------------------

def test_bits_from_logits_inverts_init_and_stays_in_range():
    for bits in (2.5, 8.0, 14.0):
        logit = ops.logit_for_bits(bits, 2, 15)
        assert float(ops.bits_from_logits(tf.constant([logit]), 2, 15)[0]) == pytest.approx(bits, abs=1e-5)
    extreme = ops.bits_from_logits(tf.constant([-1e4, -3.0, 0.0, 3.0, 1e4]), 2, 15).numpy()
    assert extreme.min() >= 2 and extreme.max() <= 15 and extreme[0] == 2 and extreme[-1] == 15


@pytest.mark.parametrize("noise,std", [("gaussian", 0.5), ("uniform", 1 / np.sqrt(12))], ids=["gaussian", "uniform"])
def test_noise_scale_matches_delta(noise, std):
    # Range [-1, 2] -> Delta = 3 / (2^b - 1): 1.0 at 2 bits, 3/63 at 6 bits.
    w = tf.constant(np.concatenate([[-1.0, 2.0], np.linspace(-0.9, 1.9, 64 * 1024 - 2)]).astype("float32"))
    bits = tf.constant([2.0, 6.0] * 512)  # groups of 64 alternate between 2 and 6 bits
    np.testing.assert_allclose(ops.quant_step(-1.0, 2.0, tf.constant([2.0, 6.0])).numpy(), [1.0, 3 / 63], rtol=1e-6)
    scaled = ((ops.pseudo_quant_noise(w, bits, 64, noise) - w).numpy().reshape(-1, 64)
              / ops.quant_step(-1.0, 2.0, bits).numpy()[:, None])
    for rows in (scaled[0::2], scaled[1::2]):  # same normalized noise at both widths
        assert np.std(rows) == pytest.approx(std, rel=0.03)
        assert abs(np.mean(rows)) < 0.02
    if noise == "uniform":
        assert np.abs(scaled).max() <= 0.5 + 1e-4


def test_true_quantization_golden():
    # Range [0, 1]; group 0 at 1 bit (Delta 1), group 1 at 2 bits (Delta 1/3); bits 1.4 and 2.3 round to 1, 2.
    w = tf.constant([[0.0, 0.3], [0.4, 1.0]])
    codes, w_min, w_max, bits = ops.quantize(w, tf.constant([1.4, 2.3]), 2, grid="range")
    np.testing.assert_array_equal(codes.numpy(), [[0, 0], [1, 3]])
    np.testing.assert_array_equal(bits.numpy(), [1, 2])
    np.testing.assert_allclose(ops.dequantize(codes, w_min, w_max, bits, (2, 2), "range").numpy(),
                               [[0, 0], [1 / 3, 1]], atol=1e-7)
    # A constant tensor has range 0: everything quantizes to the constant.
    for grid in ops.GRIDS:
        np.testing.assert_array_equal(ops.quantize_dequantize(tf.fill((4,), 0.25), tf.constant([3.0, 3.0]), 2, grid),
                                      [0.25] * 4)


def test_zero_grid_golden():
    # Range [-1, 2] at 2 bits: Delta 1. "range" levels -1, 0, 1, 2 already hold 0. Range [-0.5, 1] at 2 bits:
    # Delta 0.5, "range" levels -0.5, 0, 0.5, 1; at 3 bits Delta 1.5/7: "range" misses 0, "zero" starts at
    # round(-0.5 / Delta) * Delta = -2 Delta and keeps the top level 5 Delta = 1.0714 >= max.
    w = tf.constant([-0.5, 0.0, 0.01, 1.0] * 2)
    step = 1.5 / 7
    zero = ops.quantize_dequantize(w, tf.constant([3.0, 3.0]), 4, "zero").numpy()
    np.testing.assert_allclose(zero, np.array([-2, 0, 0, 5] * 2) * step, atol=1e-6)
    assert zero[1] == 0.0
    ranged = ops.quantize_dequantize(w, tf.constant([3.0, 3.0]), 4, "range").numpy()
    np.testing.assert_allclose(ranged, np.array([-0.5, -0.5 + 2 * step, -0.5 + 2 * step, 1.0] * 2), atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        ops.grid_origin(0.0, tf.constant([1.0]), "symmetric")


def test_size_golden_and_bits_field():
    bits = np.array([2, 2, 5, 3])  # spread 3 -> 2-bit field
    assert ops.bits_field_width(bits) == 2 and ops.bits_field_width([4, 4]) == 0
    assert ops.bits_field_width([1, 15]) == 4
    # codes 8 * 12 bits = 12 bytes; field 4 x 2 bits = 1 byte; range 8; header 1.
    assert ops.packed_tensor_bytes(bits, 8) == 12 + 1 + 8 + 1
    assert float(ops.size_bits(tf.constant(bits, tf.float32), 8)) == 8 * 12 + 4 * 2 + 72


def test_varwidth_packing_round_trip():
    rng = np.random.default_rng(0)
    widths = rng.integers(0, 16, 1000)
    values = rng.integers(0, 2 ** 15, 1000) % (2 ** widths)
    data = pack_varwidth(values, widths)
    assert len(data) == (widths.sum() + 7) // 8
    np.testing.assert_array_equal(unpack_varwidth(data, widths), values)


# --- layer behaviour ------------------------------------------------------------------------------------------

def test_gradients_reach_weights_and_bits(digits):
    model = _diffq_cnn(penalty=0.0)
    x, y = digits.x_train[:64], digits.y_train[:64]
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    for variable, grad in zip(model.trainable_weights, grads):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, variable.name
    # The penalty's own gradient per logit: penalty * group_size / (8 * 2^20) * db/dlogit.
    diffq.set_penalty(model, 1000.0)
    wrapper = model.get_layer("fc")
    logits = wrapper._logits["kernel"]
    with tf.GradientTape() as tape:
        size_loss = tf.add_n(wrapper.losses)
    t = tf.sigmoid(logits)
    expected = 1000.0 * 8 / (8 * 2 ** 20) * 13 * t * (1 - t)
    np.testing.assert_allclose(tape.gradient(size_loss, logits).numpy(), expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("grid", ["range", "zero"])
def test_eval_is_deterministic_on_the_grid_and_training_is_noisy(digits, grid):
    model = _diffq_cnn(grid=grid)
    wrapper = model.get_layer("fc")
    # Mixed widths: alternate groups at 3 and 6 bits.
    wrapper._logits["kernel"].assign(np.tile([ops.logit_for_bits(3, 2, 15), ops.logit_for_bits(6, 2, 15)],
                                             wrapper._logits["kernel"].shape[0] // 2))
    x = digits.x_test[:32]
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=True).numpy())
    kernel = wrapper.layer.kernel.numpy()
    quantized = wrapper.quantized_weights()["kernel"].numpy().reshape(-1, 8)
    levels = 2.0 ** np.tile([3, 6], quantized.shape[0] // 2) - 1
    delta = (kernel.max() - kernel.min()) / levels
    origin = np.full_like(delta, kernel.min()) if grid == "range" else delta * np.round(kernel.min() / delta)
    steps = (quantized - origin[:, None]) / delta[:, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the grid, in units of Delta
    assert steps.min() > -1e-3 and np.all(np.round(steps) <= levels[:, None])
    assert np.abs(quantized - kernel.reshape(-1, 8)).max() <= delta.max() / 2 * (1 + 1e-4)
    np.testing.assert_array_equal(diffq.to_dense_model(model)(x).numpy(), model(x, training=False).numpy())


def test_original_model_untouched_and_weights_copied():
    model = _cnn()
    before = [w.copy() for w in model.get_weights()]
    quantized = apply_diffq(model, min_size=0)
    assert [type(layer) for layer in model.layers] == [L.Conv2D, L.Flatten, L.Dense, L.Dense]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(quantized.get_layer("fc").layer.kernel.numpy(), model.get_layer("fc").kernel.numpy())
    assert isinstance(quantized.get_layer("fc"), DiffQWrapper)


def test_targets_min_size_exclude_and_nested_models():
    inner = keras.Sequential([keras.Input((16,)), L.Dense(64, name="big"), L.Dense(8, name="small")], name="inner")
    inputs = keras.Input((16,))
    model = keras.Model(inputs, L.Dense(8, name="head")(inner(inputs)))
    # 16 x 64 float32 = 4 KiB; min_size 0.002 MB (2 KiB) keeps only "big".
    quantized = apply_diffq(model, min_size=0.002)
    assert [w.name for w in diffq.diffq_layers(quantized)] == ["big"]
    quantized = apply_diffq(model, min_size=0, targets="all", exclude=["head"])
    assert {w.name: w.targets for w in diffq.diffq_layers(quantized)} == {"big": ["kernel", "bias"],
                                                                            "small": ["kernel", "bias"]}
    x = np.ones((2, 16), "float32")
    assert quantized(x, training=False).shape == (2, 8)
    assert [w.name for w in diffq.diffq_layers(apply_diffq(model, min_size=0, exclude=["inner"]))] == ["head"]


# --- training -------------------------------------------------------------------------------------------------

def _train(digits, penalty, bits_lr, epochs, optimizer=None, callbacks=()):
    keras.utils.set_random_seed(0)  # the initial weights must not depend on which tests ran before
    model = _diffq_cnn(penalty=penalty)
    model.compile(DiffQOptimizer(optimizer or keras.optimizers.Adam(1e-3), bits_learning_rate=bits_lr), LOSS,
                  metrics=["accuracy"])
    history = model.fit(digits.x_train, digits.y_train, batch_size=64, epochs=epochs, verbose=0,
                        callbacks=list(callbacks))
    return model, history


def _real_bits(model):
    return np.concatenate([w.bits(p).numpy() for w in diffq.diffq_layers(model) for p in w.targets])


def test_penalty_zero_keeps_bits_near_init_and_learns(digits):
    model, history = _train(digits, 0.0, 1e-3, 3, callbacks=[DiffQLogger(verbose=0)])
    bits = _real_bits(model)
    assert abs(bits.mean() - 8.0) < 0.25 and np.abs(bits - 8.0).max() < 0.5
    assert model.evaluate(digits.x_test, digits.y_test, verbose=0)[1] > 0.8
    assert set(history.history) >= {"diffq_true_kib", "diffq_mean_bits"}
    assert history.history["diffq_mean_bits"][-1] == pytest.approx(diffq.mean_bits(model))


def test_large_penalty_drives_bits_down_within_range(digits):
    model, _ = _train(digits, 1e4, 0.05, 2)
    bits = _real_bits(model)
    assert bits.mean() < 4.0 and bits.min() >= 2.0 and bits.max() <= 15.0
    rounded = np.concatenate(list(diffq.learned_bits(model).values()))
    assert rounded.min() >= 2 and rounded.max() <= 15


def test_optimizer_routes_bits_to_their_own_adam(digits):
    # SGD at learning rate 0 with weight decay: the weights must not move, the bits logits must (Adam, no decay).
    model = _diffq_cnn(penalty=10.0)
    kernels = {n: model.get_layer(n).layer.kernel.numpy().copy() for n in ("conv", "fc", "out")}
    logits = {n: model.get_layer(n)._logits["kernel"].numpy().copy() for n in kernels}
    model.compile(DiffQOptimizer(keras.optimizers.SGD(0.0, weight_decay=0.5), bits_learning_rate=1e-2), LOSS)
    model.fit(digits.x_train[:512], digits.y_train[:512], batch_size=64, epochs=1, verbose=0)
    for name in kernels:
        np.testing.assert_array_equal(model.get_layer(name).layer.kernel.numpy(), kernels[name])
        moved = model.get_layer(name)._logits["kernel"].numpy() - logits[name]
        assert np.abs(moved).max() > 0.01  # Adam moves each logit by up to 1e-2 per step, 8 steps
    assert int(model.optimizer.iterations) == 8 and int(model.optimizer.bits_optimizer.iterations) == 8
    opt = DiffQOptimizer.from_config(model.optimizer.get_config())
    assert opt.bits_learning_rate == 1e-2 and isinstance(opt.optimizer, keras.optimizers.SGD)
    assert opt.get_config() == model.optimizer.get_config()


def test_bits_learning_rate_schedule_stops_the_bits_and_round_trips(digits):
    # A cosine decay to 0 over 8 steps: the bits logits move in those 8 steps and not after them.
    model = _diffq_cnn(penalty=10.0)
    schedule = keras.optimizers.schedules.CosineDecay(5e-2, 8)
    model.compile(DiffQOptimizer(keras.optimizers.Adam(1e-3), bits_learning_rate=schedule), LOSS)
    start = model.get_layer("fc")._logits["kernel"].numpy().copy()
    model.fit(digits.x_train[:512], digits.y_train[:512], batch_size=64, epochs=1, verbose=0)
    after_decay = model.get_layer("fc")._logits["kernel"].numpy().copy()
    assert np.abs(after_decay - start).max() > 0.05
    model.fit(digits.x_train[:256], digits.y_train[:256], batch_size=64, epochs=1, verbose=0)
    np.testing.assert_allclose(model.get_layer("fc")._logits["kernel"].numpy(), after_decay, atol=1e-7)
    opt = DiffQOptimizer.from_config(model.optimizer.get_config())
    assert isinstance(opt.bits_learning_rate, keras.optimizers.schedules.CosineDecay)
    assert opt.get_config() == model.optimizer.get_config()


def test_freeze_bits_trains_the_weights_on_the_true_grid_and_keeps_bits_and_size(digits, tmp_path):
    model, _ = _train(digits, 50.0, 3e-2, 1)
    logits = {n: model.get_layer(n)._logits["kernel"].numpy().copy() for n in ("conv", "fc", "out")}
    order = [w.name for w in model.weights]
    size, bits = diffq.true_size(model), diffq.learned_bits(model)
    frozen = diffq.freeze_bits(model)
    assert all(np.array_equal(frozen[k], bits[k]) for k in bits)
    assert [w.name for w in model.weights] == order  # get_weights / saved files keep their layout
    assert not any(diffq.is_bits_logits(v) for v in model.trainable_weights)
    assert sum(diffq.is_bits_logits(v) for v in model.non_trainable_weights) == 3
    x = digits.x_test[:64]
    # Training forward is the true quantization (no noise): it equals inference.
    np.testing.assert_allclose(model(x, training=True).numpy(), model(x, training=False).numpy(), atol=1e-5)
    kernel = model.get_layer("fc").layer.kernel.numpy().copy()
    before = model.evaluate(digits.x_test, digits.y_test, verbose=0)[0]
    # An AdamW with weight decay and a DiffQOptimizer's bits Adam: neither may touch frozen logits.
    model.compile(DiffQOptimizer(keras.optimizers.AdamW(1e-3, weight_decay=0.5), bits_learning_rate=0.5), LOSS,
                  metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, batch_size=64, epochs=2, verbose=0)
    for name, value in logits.items():
        np.testing.assert_array_equal(model.get_layer(name)._logits["kernel"].numpy(), value)
    assert diffq.true_size(model) == size
    assert np.abs(model.get_layer("fc").layer.kernel.numpy() - kernel).max() > 1e-3  # straight-through reaches w
    assert model.evaluate(digits.x_test, digits.y_test, verbose=0)[0] < before
    model.save(tmp_path / "frozen.keras")
    again = keras.models.load_model(tmp_path / "frozen.keras")
    assert all(w.frozen for w in diffq.diffq_layers(again))
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    diffq.freeze_bits(model, False)  # back to the noise: the logits train again
    assert sum(diffq.is_bits_logits(v) for v in model.trainable_weights) == 3
    assert np.abs(model(x, training=True).numpy() - model(x, training=False).numpy()).max() > 1e-3


# --- size, export, save/load ----------------------------------------------------------------------------------

def test_size_estimate_vs_true_size_and_packed_export(digits, tmp_path):
    model = _diffq_cnn()
    rng = np.random.default_rng(0)
    for wrapper in diffq.diffq_layers(model):
        logits = wrapper._logits["kernel"]
        logits.assign(rng.normal(-0.5, 1.0, logits.shape))
    report = diffq.size_report(model)
    true, estimate = diffq.true_size(model), diffq.estimated_size(model)
    # Stated tolerance: the rounding of b (group_size * |b - round(b)| / 8 bytes per group) + 2 bytes of
    # padding per quantized tensor.
    bits = np.concatenate([w.bits("kernel").numpy() for w in diffq.diffq_layers(model)])
    tolerance = 8 * np.abs(bits - np.round(bits)).sum() / 8 + 2 * 3
    assert abs(true - estimate) <= tolerance
    # With integer bits the two agree to the padding.
    for wrapper in diffq.diffq_layers(model):
        wrapper._logits["kernel"].assign(np.full(wrapper._logits["kernel"].shape, ops.logit_for_bits(5, 2, 15)))
    assert abs(diffq.true_size(model) - diffq.estimated_size(model)) <= 2 * 3
    assert report.params == model.count_params() - sum(
        int(np.prod(v.shape)) for w in diffq.diffq_layers(model) for v in w.weights if "diffq" in v.name)
    packed = diffq.export_packed(model, tmp_path / "m.diffq")
    data = (tmp_path / "m.diffq").read_bytes()
    assert packed.payload_bytes == diffq.true_size(model)
    again = PackedModel.from_bytes(data)
    for a, b in zip(packed.tensors, again.tensors):
        assert (a.layer, a.name, a.shape, a.kind) == (b.layer, b.name, b.shape, b.kind)
        if a.kind == "diffq":
            np.testing.assert_array_equal(a.codes, b.codes)
            np.testing.assert_array_equal(a.bits, b.bits)
            assert (a.w_min, a.w_max) == (b.w_min, b.w_max)
    dense = diffq.to_dense_model(model)
    weights = again.weights()
    for layer in dense.layers:
        for variable in layer.weights:
            key = f"{layer.name}/{variable.name.split('/')[-1].split(':')[0]}"
            np.testing.assert_array_equal(weights[key], variable.numpy())


def _lstm_model():
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(24, 8, mask_zero=True, name="emb")(inputs)
    x = L.LSTM(16, name="lstm")(x)
    return keras.Model(inputs, L.Dense(24, name="out")(x))


@pytest.mark.parametrize("make,x", [
    (lambda: _diffq_cnn(noise="uniform", grid="zero", penalty=2.0),
     np.random.default_rng(0).random((3, 8, 8, 1), "float32")),
    (lambda: apply_diffq(_lstm_model(), min_size=0, group_size=4, init_bits=5, max_bits=8),
     np.random.default_rng(0).integers(0, 24, (3, 6))),
    (lambda: apply_uniform(_cnn(), 3, min_size=0), np.random.default_rng(0).random((3, 8, 8, 1), "float32")),
], ids=["diffq-cnn", "diffq-embedding-lstm", "uniform-cnn"])
def test_save_load_round_trip(make, x, tmp_path):
    model = make()
    for wrapper in diffq.diffq_layers(model):  # bits away from their initial value
        for logits in getattr(wrapper, "_logits", {}).values():
            logits.assign(np.random.default_rng(0).normal(0, 2, logits.shape))
    model.compile(DiffQOptimizer("adam"), "mse")
    if x.ndim == 4:  # optimizer state too (training the LSTM graph would double the test's time)
        model.fit(x, model.predict(x, verbose=0) + 1.0, epochs=1, verbose=0)
    for fmt in ("m.keras", "m.h5"):
        model.save(tmp_path / fmt)
        again = keras.models.load_model(tmp_path / fmt)
        np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
        assert type(again.optimizer) is DiffQOptimizer
        if x.ndim == 4:
            for a, b in zip(model.optimizer.variables, again.optimizer.variables):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    for wrapper in diffq.diffq_layers(model):
        config = wrapper.get_config()
        params = set(inspect.signature(type(wrapper).__init__).parameters) - {"self", "kwargs"}
        assert params <= set(config) and set(config) - params <= {"name", "trainable", "dtype"}
        rebuilt = type(wrapper).from_config(config).get_config()
        assert {k: v for k, v in rebuilt.items() if k != "layer"} == {k: v for k, v in config.items() if k != "layer"}
        assert rebuilt["layer"]["config"] == config["layer"]["config"]


def test_export_tflite_int8(digits):
    model = apply_diffq(_cnn(), min_size=0, max_bits=8, init_bits=6)
    model.compile(DiffQOptimizer("adam"), LOSS, metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    import tflite_export

    flatbuffer = diffq.export_tflite(model, digits.x_train[:100])
    keras_acc = model.evaluate(digits.x_test, digits.y_test, verbose=0)[1]
    tflite_acc = np.mean(np.argmax(tflite_export.run(flatbuffer, digits.x_test), 1) == digits.y_test)
    assert abs(tflite_acc - keras_acc) < 0.03
    # compressed: per-tensor int8 with each group's width kept (variable-width codes)
    small = diffq.export_tflite(model, digits.x_train[:100], compressed=True)
    per_tensor = diffq.export_tflite(model, digits.x_train[:100], per_channel=False)
    assert len(small) < len(per_tensor)
    (fc,) = [t for t in tflite_export.describe(small) if t.shape == (32, 288)]
    group_size = diffq.diffq_layers(model)[1].group_size
    learned = diffq.learned_bits(model)["fc/kernel"]
    assert fc.bytes_after <= 1.05 * learned.sum() * group_size / 8 + 16 + 256
    np.testing.assert_array_equal(tflite_export.run(tflite_export.decompress(small), digits.x_test),
                                  tflite_export.run(per_tensor, digits.x_test))
    with pytest.raises(ValueError, match="per-tensor weights"):
        diffq.export_tflite(model, digits.x_train[:10], compressed=True, per_channel=True)


def test_callback_warns_without_diffq_optimizer_and_plot(digits, tmp_path):
    model = _diffq_cnn()
    model.compile("adam", LOSS)
    with pytest.warns(UserWarning, match="DiffQOptimizer"):
        model.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, verbose=0, callbacks=[DiffQLogger(verbose=0)])
    path = diffq.plot_bits(diffq.learned_bits(model), tmp_path / "bits.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# --- errors ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,error,match", [
    (lambda: apply_diffq(_cnn(), min_size=0, group_size=7), ValueError, "group_size`=7 does not divide"),
    (lambda: apply_diffq(_cnn(), min_bits=9, max_bits=4), ValueError, "min_bits` must be smaller"),
    (lambda: apply_diffq(_cnn(), min_bits=0), ValueError, r"min_bits` must be in \[1, 15\]"),
    (lambda: apply_diffq(_cnn(), max_bits=16), ValueError, r"max_bits` must be in \[1, 15\]"),
    (lambda: apply_diffq(_cnn(), init_bits=2), ValueError, "init_bits` must lie strictly between"),
    (lambda: apply_diffq(_cnn(), init_bits="8"), TypeError, "init_bits` must be a number"),
    (lambda: apply_diffq(_cnn(), group_size=2.5), TypeError, "group_size` must be an int"),
    (lambda: apply_diffq(_cnn(), noise="laplace"), ValueError, "noise"),
    (lambda: apply_diffq(_cnn(), grid="symmetric"), ValueError, "grid"),
    (lambda: apply_diffq(_cnn(), penalty=-1), ValueError, "penalty"),
    (lambda: apply_diffq(_cnn(), min_size=-1), ValueError, "min_size"),
    (lambda: apply_diffq(_cnn(), targets="biases"), ValueError, "targets"),
    (lambda: apply_diffq(_cnn(), exclude=["nope"]), ValueError, "exclude"),
    (lambda: apply_diffq(_cnn(), exclude="fc"), TypeError, "exclude"),
    # Every tensor is under the reference's 0.01 MB threshold.
    (lambda: apply_diffq(keras.Sequential([keras.Input((4,)), L.Dense(2)])), ValueError, "min_size=0"),
    (lambda: apply_diffq(_diffq_cnn()), ValueError, "already has quantization wrappers"),
    (lambda: apply_diffq("model"), TypeError, "model"),
    (lambda: DiffQWrapper(L.Dense(3), targets="kernel"), TypeError, "targets"),
    (lambda: DiffQWrapper(L.Dense(3), targets=["gamma"]).build((None, 4)), ValueError, "not a weight attribute"),
    (lambda: DiffQWrapper(L.Flatten()).build((None, 4)), ValueError, "no kernel-like weight"),
    (lambda: DiffQWrapper(L.BatchNormalization(), targets=["moving_mean"]).build((None, 4)), ValueError,
     "not a trainable weight"),
    (lambda: DiffQWrapper("dense"), TypeError, "layer` must be a tf_keras Layer"),
    (lambda: unpack_varwidth(b"\x00", np.full(4, 3)), ValueError, "data` holds 8 bits but `widths` need 12"),
    (lambda: apply_uniform(_cnn(), 1, min_size=0), ValueError, r"bits` must be in \[2, 15\]"),
    (lambda: DiffQOptimizer(keras.optimizers.legacy.SGD()), TypeError, "optimizer"),
    (lambda: DiffQOptimizer("adam", bits_learning_rate=0), ValueError, "bits_learning_rate"),
    (lambda: diffq.set_penalty(_diffq_cnn(), -1.0), ValueError, "penalty"),
    (lambda: diffq.set_penalty(_cnn(), 1.0), ValueError, "no DiffQ layer"),
    (lambda: diffq.freeze_bits(_cnn()), ValueError, "no DiffQ layer"),
    (lambda: diffq.freeze_bits(_diffq_cnn(), frozen="yes"), TypeError, r"`frozen` must be True or False. Received: frozen='yes'"),
    (lambda: DiffQWrapper(L.Dense(3), frozen=1), TypeError, r"`frozen` must be True or False. Received: frozen=1"),
    (lambda: diffq.export_tflite(_diffq_cnn(init_bits=10), np.zeros((4, 8, 8, 1), "float32")), ValueError, "<= 8 bits"),
    (lambda: diffq.export_packed(apply_uniform(_cnn(), 4, min_size=0)), ValueError, "no DiffQ layer"),
    (lambda: PackedModel.from_bytes(b"not a diffq file"), ValueError, "not a packed DiffQ model"),
    (lambda: DiffQLogger(verbose=2), ValueError, "verbose"),
    (lambda: diffq.plot_bits({}, "x.png"), ValueError, "bits"),
], ids=["group-not-dividing", "min-above-max", "bits-below-1", "bits-above-15", "init-on-bound", "init-type",
        "group-type", "noise", "grid", "penalty", "min-size", "targets-mode", "exclude-unknown", "exclude-str",
        "nothing-to-do",
        "already-wrapped", "not-a-model", "targets-type", "target-missing", "no-kernel", "target-not-trainable",
        "layer-type", "short-packed-data", "uniform-bits",
        "legacy-optimizer", "bits-lr", "set-penalty", "set-penalty-float-model", "freeze-float-model", "freeze-flag", "frozen-arg", "tflite-wide-bits",
        "pack-uniform", "bad-file", "logger-verbose", "plot-empty"])
def test_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
